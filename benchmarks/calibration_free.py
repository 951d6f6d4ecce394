"""Quality, size and quantization time of lowbit's calibration-free methods on the demo model.

    PYTHONPATH=src python benchmarks/calibration_free.py [--only SETTING ...] [--threads N]

Each setting: quantize a copy of the fp32 demo model (timed), then ppl / KL / top-1 vs fp32 on the
first 40 windows of 512 tokens of wikitext2-test. Results: benchmarks/results/calibration_free.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time

import torch

from demo_protocol import bits, demo_and_windows, evaluate_many, merge_results

import lowbit
from lowbit.methods import make_config

SETTINGS = {
    "hqq 4-bit g64": ("hqq", {"bits": 4, "group_size": 64}),
    "hqq 3-bit g64": ("hqq", {"bits": 3, "group_size": 64}),
    "hqq 2-bit g32": ("hqq", {"bits": 2, "group_size": 32}),
    "hqq 2-bit g32, round_zero=false": ("hqq", {"bits": 2, "group_size": 32, "round_zero": False}),
    "nf4 (double quant)": ("nf4", {"double_quant": True}),
    "nf4 (no double quant)": ("nf4", {"double_quant": False}),
    "fp4 (double quant)": ("fp4", {"double_quant": True}),
    "int8 threshold 6.0": ("int8", {"threshold": 6.0}),
    "int8 threshold 0": ("int8", {"threshold": 0.0}),
    "eetq": ("eetq", {}),
}
COLUMNS = ["ppl", "kl", "top1", "bits_per_param", "quantize_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", help="settings to run (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference, _, windows = demo_and_windows()
    models, records = {}, {}
    for name in args.only or SETTINGS:
        method, options = SETTINGS[name]
        config = make_config(method, **options)
        models[name] = copy.deepcopy(reference)
        start = time.perf_counter()
        lowbit.quantize(models[name], config)
        records[name] = {"quantize_s": time.perf_counter() - start, "config": config.to_dict(), **bits(models[name])}
        print(name, records[name], flush=True)
    for name, quality in evaluate_many(models, windows, reference).items():
        records[name] = quality | records.get(name, {"bits_per_param": 32.0})
    command = "PYTHONPATH=src python benchmarks/calibration_free.py " + shlex.join(sys.argv[1:])
    title = "lowbit calibration-free methods on the demo model"
    merge_results("calibration_free", records, COLUMNS, title, command.strip())
    print(open(f"{__file__.rsplit('/', 1)[0]}/results/calibration_free.md").read())


if __name__ == "__main__":
    main()
