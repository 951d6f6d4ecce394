"""Mixed precision vs uniform width at the same memory, on the demo model (issue 8).

Uniform: the base method at --bits/--group-size on every linear. Mixed: `--method auto` with the budget
set to exactly the uniform model's weight bytes (memory_report), widths 2/3/4/8 per layer of the same base
method and group size, chosen from a sensitivity pass on --sens-windows windows of the wikitext2
*calibration* split (never the evaluation text). Both evaluated with the demo protocol
(benchmarks/demo_protocol.py: wikitext2 test, 512-token windows, the first --windows), with KL and top-1
against the fp32 model. Results: benchmarks/results/mixed_precision.{json,md}.

    PYTHONPATH=src python benchmarks/mixed_precision.py --base rtn --bits 3 --group-size 64
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from demo_protocol import demo_and_windows, evaluate_many, merge_results

from lowbit.api import quantize
from lowbit.calib.data import calibration_windows
from lowbit.eval.memory import memory_report
from lowbit.methods import make_config
from lowbit.recommend.auto import auto_config

COLUMNS = ["ppl", "kl", "top1", "weight_bytes", "bits_per_param", "predicted_loss", "widths", "seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="rtn")
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--sens-windows", type=int, default=4)
    parser.add_argument("--sens-seqlen", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, windows = demo_and_windows()
    windows = windows[: args.windows]
    base = make_config(args.base, bits=args.bits, group_size=args.group_size)

    start = time.perf_counter()
    uniform = quantize(copy.deepcopy(model), base)
    uniform_s = time.perf_counter() - start
    budget = memory_report(uniform).weight_bytes  # the memory of the uniform setting, exactly

    start = time.perf_counter()
    text = calibration_windows(tokenizer, "wikitext2", args.sens_windows, args.sens_seqlen, 0)
    result = auto_config(model, text, base, budget, progress=True)
    mixed = quantize(copy.deepcopy(model), result.config)
    mixed_s = time.perf_counter() - start
    print(result.describe(), flush=True)

    quality = evaluate_many({"uniform": uniform, "mixed": mixed}, windows, model)
    name = f"{args.base} {args.bits}-bit g{args.group_size}"
    records = {}
    for key, m, seconds, widths, loss in [
        ("uniform", uniform, uniform_s, f"{args.bits}-bit x{len(result.config.layer_bits)}", None),
        ("mixed", mixed, mixed_s, result.config.summary().split(": ", 1)[1], result.predicted_loss),
    ]:
        report = memory_report(m)
        records[f"{name}: {key}"] = quality[key] | {
            "weight_bytes": report.weight_bytes, "bits_per_param": report.bits_per_param,
            "predicted_loss": loss, "widths": widths, "seconds": seconds,
        }
    records[f"{name}: mixed"]["budget_bytes"] = budget
    records["fp32"] = quality["fp32"]
    command = "PYTHONPATH=src python benchmarks/mixed_precision.py " + " ".join(sys.argv[1:])
    merge_results("mixed_precision", records, COLUMNS, "Mixed precision vs uniform at the same memory (demo model)", command)
    assert memory_report(mixed).weight_bytes <= budget


if __name__ == "__main__":
    main()
