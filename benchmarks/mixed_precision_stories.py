"""Mixed precision vs uniform width at the same memory on stories260k: a cheap cross-check (issue 8).

For each base setting: the uniform model, and `recommend.auto` at exactly its weight bytes (sensitivity on
4 windows of 256 tokens of the wikitext2 calibration split); perplexity and KL vs fp32 on the first 64
windows of 512 tokens of wikitext2-test. --labels picks the Fisher (text: empirical, sampled: true).

    PYTHONPATH=src python benchmarks/mixed_precision_stories.py --labels text
"""

from __future__ import annotations

import argparse
import copy

import torch

from lowbit.api import quantize
from lowbit.assets import assets_dir
from lowbit.calib.data import calibration_windows, consecutive_windows, evaluation_tokens
from lowbit.eval.memory import memory_report
from lowbit.eval.quality import evaluate
from lowbit.io.sources import load_model
from lowbit.methods import make_config
from lowbit.recommend.auto import auto_config

SETTINGS = [("rtn", 3, 32), ("hqq", 3, 32), ("rtn", 3, 64)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", default="text", choices=("text", "sampled"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    stories = load_model(str(assets_dir() / "models" / "stories260k"))
    tokens = evaluation_tokens(stories.tokenizer)
    windows = consecutive_windows(tokens, 512, 64)  # (64, 512)
    calib = calibration_windows(stories.tokenizer, "wikitext2", 4, 256, 0)  # (4, 256)
    print(f"fp32 ppl {evaluate(stories.model, windows).ppl:.2f}")
    for method, bits, group in SETTINGS:
        base = make_config(method, bits=bits, group_size=group)
        uniform = quantize(copy.deepcopy(stories.model), base)
        budget = memory_report(uniform).weight_bytes
        result = auto_config(stories.model, calib, base, budget, labels=args.labels)
        mixed = quantize(copy.deepcopy(stories.model), result.config)
        u, m = evaluate(uniform, windows, stories.model), evaluate(mixed, windows, stories.model)
        print(f"{method} {bits}-bit g{group}: uniform ppl {u.ppl:.2f} kl {u.kl:.4f} | mixed ppl {m.ppl:.2f} "
              f"kl {m.kl:.4f} ({result.config.summary()}, {memory_report(mixed).weight_bytes} <= {budget} bytes)")


if __name__ == "__main__":
    main()
