"""The demo-model protocol shared by the calibration-free benchmarks.

SmolLM2-135M-Instruct (`demo`) in fp32, wikitext2-test, windows of 512 tokens, the first 40; perplexity,
and KL / top-1 agreement against the fp32 model, through lowbit.eval.quality.evaluate. Results are
merged into benchmarks/results/NAME.json (one record per setting) and rendered as NAME.md.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import torch
from torch import nn
from lowbit.calib.data import consecutive_windows, evaluation_tokens
from lowbit.eval.memory import memory_report
from lowbit.eval.quality import ReferenceMemo, evaluate
from lowbit.io.sources import load_model

RESULTS = Path(__file__).resolve().parent / "results"
SEQLEN, WINDOWS = 512, 40
PROTOCOL = {"model": "demo (SmolLM2-135M-Instruct, fp32)", "dataset": "wikitext2-test", "seqlen": SEQLEN, "windows": WINDOWS}


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def demo_and_windows():
    """(fp32 demo model, its tokenizer, the (40, 512) evaluation windows)."""
    loaded = load_model("demo")
    tokens = evaluation_tokens(loaded.tokenizer)
    return loaded.model, loaded.tokenizer, consecutive_windows(tokens, SEQLEN, WINDOWS)


def evaluate_many(models: dict[str, nn.Module], windows: torch.Tensor, reference: nn.Module, progress=True) -> dict:
    """ppl, KL and top-1 vs `reference` for several models, through lowbit.eval.quality.evaluate.

    Windows run in the outer loop so that the reference runs once per window for all models (every
    window has the same number of predicted tokens, so the mean of per-window means is the overall
    mean). Also returns "fp32": the reference's own perplexity.
    """
    memo = ReferenceMemo(reference, capacity=1)
    sums: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in [*models, "fp32"]}
    for i in range(windows.shape[0]):
        window = windows[i : i + 1]
        for name, model in [*models.items(), ("fp32", memo)]:
            q = evaluate(model, window, None if name == "fp32" else memo)
            sums[name][0] += q.nll
            sums[name][1] += q.kl or 0.0
            sums[name][2] += q.top1 if q.top1 is not None else 1.0
        if progress:  # running perplexities, so that a cut-off run still says something
            running = ", ".join(f"{name} {math.exp(s[0] / (i + 1)):.3f}" for name, s in sums.items())
            print(f"window {i + 1}/{windows.shape[0]}: ppl so far {running}", flush=True)
    k = windows.shape[0]
    return {name: {"ppl": math.exp(s[0] / k), "kl": s[1] / k, "top1": s[2] / k} for name, s in sums.items()}


def bits(model: nn.Module) -> dict:
    """The exact bits per parameter and bytes of the quantized layers."""
    memory = memory_report(model)
    return {"bits_per_param": memory.bits_per_param, "quantized_bytes": memory.quantized_bytes}


def merge_results(name: str, records: dict[str, dict], columns: list[str], title: str, command: str) -> None:
    """Merge records (setting -> fields) into results/NAME.json and rewrite results/NAME.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"protocol": PROTOCOL, "results": {}}
    data["results"].update(records)
    data["machine"], data["command"] = machine(), command
    path.write_text(json.dumps(data, indent=1))
    lines = [f"# {title}", "", f"Protocol: {json.dumps(PROTOCOL)}. Machine: {data['machine']}.", "",
             f"Command: `{command}`", "", "| setting | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for setting, rec in data["results"].items():
        lines.append(f"| {setting} | " + " | ".join(_fmt(rec.get(c)) for c in columns) + " |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
