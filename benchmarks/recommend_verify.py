"""`lowbit recommend demo --verify 3` with a 4-bit-sized budget, end to end (issue 8).

The budget is the exact weight bytes of the demo model quantized with rtn 4-bit g64 (recommend.predict).
The top 3 of the prior ranking are quantized and measured with compare's `small` preset (8 evaluation
windows of 512 tokens, 8 calibration windows) into
benchmarks/results/recommend_verify/ (the results store), then ranked again from the measurements. The
script checks that the final choice is the best measured of the three (by the policy's score, printed
with the measured perplexity, decode speed and memory of each) and writes
benchmarks/results/recommend_verify.{md,json}.

    PYTHONPATH=src python benchmarks/recommend_verify.py

is `lowbit recommend demo --memory-budget 173106432 --verify 3 --results benchmarks/results/recommend_verify`
with its checks and its wall time recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from demo_protocol import machine

from lowbit.io.sources import load_skeleton
from lowbit.methods import make_config
from lowbit.recommend.policy import Constraints
from lowbit.recommend.predict import predict_memory
from lowbit.recommend.report import as_json, render
from lowbit.recommend.run import run

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--priority", default="balanced")
    parser.add_argument("--calibration-data", default="yes", choices=("yes", "no"))
    parser.add_argument("--verify", type=int, default=3)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = predict_memory(load_skeleton("demo").model, make_config("rtn", bits=4, group_size=64)).weight_bytes
    constraints = Constraints(budget_bytes=budget, priority=args.priority, calibration_data=args.calibration_data == "yes")
    folder = RESULTS / "recommend_verify"
    start = time.perf_counter()
    rec = run("demo", constraints, str(folder), verify_k=args.verify, verify_preset=args.preset)
    seconds = time.perf_counter() - start
    text = render(rec, "demo")
    print(text)

    v = rec.verification
    verified = [c for c in rec.ranked if c.label in v.before and c.quality.origin == "measured"]
    best = max(verified, key=lambda c: c.score)
    assert v.final == best.label == rec.ranked[0].label, (v.final, best.label)
    rows = [f"| {c.label} | {c.quality.value:.4f} | {c.kl:.4f} | {c.speed.value:.2f} | {c.memory.weight_bytes:,} | "
            f"{c.measured.weight_bytes:,} | {c.quantize_s.value:.1f} | {c.score:.3f} |" for c in verified]
    command = "PYTHONPATH=src python benchmarks/recommend_verify.py " + " ".join(sys.argv[1:])
    table = "\n".join([
        "# lowbit recommend --verify 3 on the demo model (4-bit-sized budget)", "",
        f"Command: `{command}`. Machine: {machine()}. Budget: {budget:,} bytes (rtn 4-bit g64, exact). "
        f"Wall time {seconds:.0f} s (2 shared cores, other jobs at nice 19: indicative).", "",
        "| setting | ppl ratio | KL | decode x unquantized | predicted bytes | measured bytes | quantize s | score |",
        "|---|---|---|---|---|---|---|---|", *rows, "", "```", text, "```",
    ])
    (RESULTS / "recommend_verify.md").write_text(table + "\n")
    (RESULTS / "recommend_verify.json").write_text(json.dumps(as_json(rec, "demo") | {"command": command, "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
