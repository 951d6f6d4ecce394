"""The core methods' quality targets on stories260k over every 512-token window of wikitext2-test (1580 windows).

    PYTHONPATH=src python benchmarks/quality_targets.py     # about 7 minutes on 2 CPU cores

Perplexity of fp32 and of each setting in TARGETS, the increase over fp32, and whether it stays within its target
(ptq calibrated on 128 windows of 512 tokens of the wikitext2 calibration split, seed 0). tests/test_quality.py checks
the same targets on every eighth window; this script measures them on the whole set and exits 1 if any is missed.
"""

from __future__ import annotations

import copy
import sys

import torch

import lowbit
from lowbit.assets import assets_dir
from lowbit.calib.data import calibration_windows, consecutive_windows, evaluation_tokens
from lowbit.eval.quality import evaluate
from lowbit.io.sources import load_model
from lowbit.methods import make_config

from common import machine, stopwatch, write_results

# (method, options, the most perplexity may rise over fp32)
TARGETS = [
    ("rtn", dict(bits=8, group_size=128), 0.005),
    ("rtn", dict(bits=4, group_size=32), 0.10),
    ("ptq", dict(), 0.03),
]


def quantized_ppl(stories, method: str, options: dict, windows: torch.Tensor) -> float:
    """Perplexity over `windows` of a copy of the stories260k bundle's model quantized by `method`."""
    config = make_config(method, **options)
    calib = calibration_windows(stories.tokenizer, "wikitext2", 128, 512, seed=0) if config.needs_calibration else None
    model = lowbit.quantize(copy.deepcopy(stories.model), config, calib)
    return evaluate(model, windows, batch_size=16).ppl


def main() -> int:
    stories = load_model(str(assets_dir() / "models" / "stories260k"))
    windows = consecutive_windows(evaluation_tokens(stories.tokenizer), 512)
    fp32 = evaluate(stories.model, windows, batch_size=16).ppl
    rows = []
    for method, options, max_increase in TARGETS:
        with stopwatch() as t:
            ppl = quantized_ppl(stories, method, options, windows)
        rows.append({"method": method, "options": options, "ppl": ppl, "increase": ppl / fp32 - 1,
                     "max_increase": max_increase, "met": ppl / fp32 - 1 <= max_increase, "seconds": t["seconds"]})
    lines = [f"stories260k, wikitext2-test, all {len(windows)} windows of 512 tokens: fp32 ppl {fp32:.2f}", "",
             "| setting | ppl | vs fp32 | target | met |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} {r['options']} | {r['ppl']:.2f} | {r['increase']:+.2%} | <= {r['max_increase']:+.1%} "
              f"| {'yes' if r['met'] else 'NO'} |" for r in rows]
    write_results("quality-targets-stories260k", {"machine": machine(), "windows": len(windows), "fp32_ppl": fp32,
                                                  "rows": rows}, "\n".join(lines))
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
