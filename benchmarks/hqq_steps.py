"""Weight error of hqq after k proximal steps, relative to the start, on the demo model's linears (docs/hqq5.md).

    PYTHONPATH=src python benchmarks/hqq_steps.py [--every 7] [--settings 2:32 4:64]

Each row: mean |W - W_hat| after k steps (tol 0, so exactly k unless the error rises first) divided by the
error of the rounded start, averaged over every `--every`-th linear layer. It shows where the loop's plateau
lies, which is what hqq's `tol` stops on.
"""

from __future__ import annotations

import argparse

import torch

import lowbit
from lowbit.core.hqq import HQQSchedule, hqq_quantize

STEPS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20)


def relative_errors(weights: list[torch.Tensor], bits: int, group: int) -> list[float]:
    """Mean over layers of error(k steps) / error(start), for k in STEPS."""
    totals = [0.0] * len(STEPS)
    for w in weights:
        errs = [(w - hqq_quantize(w, bits, group, HQQSchedule(iters=k, tol=0.0), round_zero=True).dequantize()).abs().mean()
                for k in STEPS]
        totals = [t + float(e / errs[0]) for t, e in zip(totals, errs)]
    return [t / len(weights) for t in totals]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=7, help="take every N-th linear layer")
    parser.add_argument("--settings", nargs="+", default=["2:32", "4:64"], help="BITS:GROUP")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = lowbit.load("demo").model
    weights = [m.weight.detach() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    print("| steps | " + " | ".join(map(str, STEPS)) + " |")
    print("|---" * (len(STEPS) + 1) + "|")
    for setting in args.settings:
        bits, group = map(int, setting.split(":"))
        row = relative_errors(weights[:: args.every], bits, group)
        print(f"| {bits}-bit g{group} | " + " | ".join(f"{x:.4f}" for x in row) + " |", flush=True)


if __name__ == "__main__":
    main()
