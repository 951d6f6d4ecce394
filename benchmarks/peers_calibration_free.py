"""The reference libraries side by side with lowbit on the demo model: hqq, bitsandbytes NF4 and LLM.int8.

    PYTHONPATH=src python benchmarks/peers_calibration_free.py [--threads N] [--only SETTING ...] [--repeats N] [--timing-only]

Needs `pip install --no-deps hqq termcolor bitsandbytes` (all run on CPU). Each peer replaces the same
target linears as lowbit; quantization time is measured for the peer and for lowbit's equivalent setting
in this same run, one after the other, as wall time and as this process's CPU time (the fairer figure on a
machine shared with other jobs, with --threads 1); quality with the protocol of benchmarks/demo_protocol.py. lowbit's
own quality figures come from calibration_free.json (same protocol, deterministic) and are shown beside.
Results: benchmarks/results/peers_calibration_free.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import warnings

import torch

from common import stopwatch
from demo_protocol import RESULTS, demo_and_windows, evaluate_many, merge_results
from peer_libs import timed_quantize_layers

import lowbit
from lowbit.methods import make_config

# peer setting -> (peer kind, options, lowbit setting name in calibration_free.json, lowbit method, options)
SETTINGS = {
    "hqq package 4-bit g64": ("hqq", {"nbits": 4, "group_size": 64}, "hqq 4-bit g64", "hqq", {"bits": 4, "group_size": 64}),
    "hqq package 3-bit g64": ("hqq", {"nbits": 3, "group_size": 64}, "hqq 3-bit g64", "hqq", {"bits": 3, "group_size": 64}),
    "hqq package 2-bit g32": ("hqq", {"nbits": 2, "group_size": 32}, "hqq 2-bit g32", "hqq", {"bits": 2, "group_size": 32}),
    # the same loop with the rounded zero start lowbit uses at every width (the package: at 4 bits only)
    "hqq package 3-bit g64, round_zero": ("hqq", {"nbits": 3, "group_size": 64, "round_zero": True}, "hqq 3-bit g64", "hqq", {"bits": 3, "group_size": 64}),
    "hqq package 2-bit g32, round_zero": ("hqq", {"nbits": 2, "group_size": 32, "round_zero": True}, "hqq 2-bit g32", "hqq", {"bits": 2, "group_size": 32}),
    # and the other way round: lowbit without the rounded start, as the package's 2-bit default
    "hqq package 2-bit g32 vs lowbit round_zero=false": ("hqq", {"nbits": 2, "group_size": 32}, "hqq 2-bit g32, round_zero=false",
                                                         "hqq", {"bits": 2, "group_size": 32, "round_zero": False}),
    "bitsandbytes nf4 (double quant)": ("nf4", {}, "nf4 (double quant)", "nf4", {}),
    "bitsandbytes nf4 (double quant), dequantized + fp32 matmul": ("nf4_dequant", {}, "nf4 (double quant)", "nf4", {}),
    "bitsandbytes LLM.int8 threshold 6.0": ("int8", {}, "int8 threshold 6.0", "int8", {"threshold": 6.0}),
}
COLUMNS = ["ppl", "kl", "top1", "bits_per_param", "quantize_s", "quantize_cpu_s", "lowbit_ppl", "lowbit_kl", "ppl_gap",
           "lowbit_quantize_s", "lowbit_quantize_cpu_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="peer settings to run (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="quantization timings per setting (median)")
    parser.add_argument("--timing-only", action="store_true",
                        help="time the quantizations only; keep the peers' quality figures of the last full run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")  # once per call otherwise
    reference, _, windows = demo_and_windows()
    models, records = {}, {}
    chosen = {k: v for k, v in SETTINGS.items() if not args.only or k in args.only}
    for name, (kind, options, lowbit_name, method, lowbit_options) in chosen.items():
        times: dict[str, list[float]] = {k: [] for k in ("quantize_s", "quantize_cpu_s", "lowbit_quantize_s", "lowbit_quantize_cpu_s")}
        for _ in range(args.repeats):  # interleaved, median: slow spells of a shared CPU hit both alike
            models[name] = copy.deepcopy(reference)
            seconds, cpu_seconds, bpp = timed_quantize_layers(models[name], kind, options)
            ours, config = copy.deepcopy(reference), make_config(method, **lowbit_options)
            with stopwatch() as ours_timing:
                lowbit.quantize(ours, config)
            for key, value in zip(times, (seconds, cpu_seconds, ours_timing["seconds"], ours_timing["cpu_seconds"])):
                times[key].append(value)
            del ours
        records[name] = {"bits_per_param": bpp, "lowbit_setting": lowbit_name} | {k: statistics.median(v) for k, v in times.items()}
        print(name, records[name], flush=True)
    if args.timing_only:  # the peers' quality is deterministic: the stored figures of the last full run
        stored = json.loads((RESULTS / "peers_calibration_free.json").read_text())["results"]
        qualities = {name: {k: stored[name][k] for k in ("ppl", "kl", "top1")} for name in records}
    else:
        qualities = evaluate_many(models, windows, reference)
    lowbit_path = RESULTS / "calibration_free.json"  # read now: that benchmark may still be running at start
    lowbit_results = json.loads(lowbit_path.read_text())["results"] if lowbit_path.is_file() else {}
    for name, quality in qualities.items():
        record = quality | records.get(name, {"bits_per_param": 32.0})
        ours = lowbit_results.get(record.get("lowbit_setting"), {})
        record |= {"lowbit_ppl": ours.get("ppl"), "lowbit_kl": ours.get("kl")}
        if record.get("lowbit_ppl") is not None:
            record["ppl_gap"] = f"{100 * (record['lowbit_ppl'] / record['ppl'] - 1):+.2f}%"
        records[name] = record
    command = "PYTHONPATH=src python benchmarks/peers_calibration_free.py " + shlex.join(sys.argv[1:])
    title = "Reference libraries vs lowbit on the demo model (ppl_gap: lowbit ppl relative to the peer's)"
    merge_results("peers_calibration_free", records, COLUMNS, title, command.strip())
    print((RESULTS / "peers_calibration_free.md").read_text())


if __name__ == "__main__":
    main()
