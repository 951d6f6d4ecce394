"""Calibration methods on the demo model: lowbit rtn / gptq / awq / awq+gptq and llm-compressor's
GPTQModifier / AWQModifier, side by side in one process on the same calibration windows.

Protocol: eval wikitext2 test, seqlen 512, first --windows windows; perplexity and KL(fp32 || quantized)
averaged over every predicted position; calibration: --nsamples random windows of --calib-seqlen tokens
of the --calib calibration split (wikitext2 or ptb, seed --seed, 0 by default). Wall time and peak resident memory (increase over the
process's memory before the call, sampled every 5 ms by lowbit.compare.measure.peak_memory) of each quantization call.
Each finished setting is appended at once to --out (JSON lines), so a cut-short run keeps its results.

    PYTHONPATH=src python benchmarks/calib_methods.py --settings fp32 rtn:4:64 gptq:4:64 lc-gptq:4:64 \
        --nsamples 128 --out benchmarks/results/calib_methods_demo.jsonl
A setting is METHOD:BITS:GROUP[:KEY=VALUE,...] with METHOD one of lowbit's or lc-gptq / lc-awq, e.g.
aqlm:0:8:codebooks=2,codebook_bits=8,preset=fast or qat:2:32:mode=block (values as lowbit's -o KEY=VALUE).
`--table FILE...` prints the markdown table of finished records instead of running anything.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

from common import stopwatch
from peer_libs import llmcompressor_quantize

from lowbit.api import quantize
from lowbit.calib.data import calibration_windows, consecutive_windows, evaluation_tokens
from lowbit.cli import parse_options
from lowbit.compare.measure import peak_memory
from lowbit.eval.memory import memory_report
from lowbit.io.sources import load_model
from lowbit.methods import make_config


@torch.no_grad()
def log_probs(model, window: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model(window[None], use_cache=False).logits[0, :-1].float(), dim=-1)  # (seqlen-1, vocab)


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, reference: list[torch.Tensor]) -> dict:
    """model None: the fp32 reference itself (its log-probs are already in `reference`)."""
    nll, kl, count = 0.0, 0.0, 0
    for window, ref in zip(windows, reference):
        logp = ref if model is None else log_probs(model, window)
        nll += float(-logp.gather(-1, window[1:, None]).sum())
        kl += float((ref.exp() * (ref - logp)).sum())
        count += window.numel() - 1
    return {"ppl": math.exp(nll / count), "kl": kl / count, "tokens": count}


def lowbit_quantize(model, method, bits, group, options, calib, tokenizer=None):
    """BITS or GROUP 0: the method's default (aqlm has no bits; its group is the codeword length)."""
    extra = {"integer_zero": True} if method == "rtn" else {}
    sizes = {k: v for k, v in (("bits", bits), ("group_size", group)) if v}
    config = make_config(method, **sizes, **extra, **options)
    quantize(model, config, calib if config.needs_calibration else None)
    return config.to_dict()


def parse_setting(text: str):
    method, *rest = text.split(":")
    bits, group = (int(rest[0]), int(rest[1])) if len(rest) >= 2 else (0, 0)
    return method, bits, group, parse_options(rest[2].split(",")) if len(rest) > 2 else {}


def table(paths: list[str]) -> str:
    """Markdown table of the records in the JSON-lines files (increase over the fp32 row of the same file)."""
    lines = ["| setting | calibration | ppl | ppl vs fp32 | KL to fp32 | bits/param | quantize s | peak extra MiB | GPU peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        records = [json.loads(line) for line in open(path)]
        fp32 = next((r["ppl"] for r in records if r["setting"] == "fp32"), None)
        for r in records:
            increase = f"+{100 * (r['ppl'] / fp32 - 1):.1f}%" if fp32 else "-"
            method = r["setting"].split(":")[0]
            calibrated = method.startswith("lc-") or (method != "fp32" and make_config(method).needs_calibration)
            calib = r["calib"].split(",")[1].strip() if calibrated else "-"
            seconds = f"{r['quantize_s']:.0f}" if "quantize_s" in r else "-"
            peak = f"{r['peak_extra_mib']:.0f}" if "peak_extra_mib" in r else "-"
            bits = f"{r['bits_per_param']:.2f}" if "bits_per_param" in r else "-"
            gpu = f"{r['gpu_peak_mib']:.0f}" if "gpu_peak_mib" in r else "-"
            lines.append(f"| {r['setting']} | {calib} | {r['ppl']:.3f} | {increase} | {r['kl']:.4f} | {bits} | {seconds} | {peak} | {gpu} |")
    return "\n".join(lines)


def machine(device: str) -> str:
    cpu = f"{platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}"
    return cpu if device == "cpu" else f"{torch.cuda.get_device_name()} ({cpu})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", nargs="+", help="print the table of these result files and stop")
    parser.add_argument("--settings", nargs="+")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--calib", default="wikitext2", choices=("wikitext2", "ptb"))
    parser.add_argument("--seed", type=int, default=0, help="calibration windows' seed (another seed: a run-to-run spread)")
    parser.add_argument("--out")
    parser.add_argument("--device", default="cpu", help="cuda: quantize and evaluate on the GPU")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not args.settings or not args.out:
        parser.error("--settings and --out are required unless --table is given")
    loaded = load_model(args.model)
    fp32 = loaded.model.to(args.device)
    tokens = evaluation_tokens(loaded.tokenizer)
    windows = consecutive_windows(tokens, args.seqlen, args.windows).to(args.device)
    calib = calibration_windows(loaded.tokenizer, args.calib, args.nsamples, args.calib_seqlen, seed=args.seed)
    start = time.perf_counter()
    reference = [log_probs(fp32, w) for w in windows]  # (seqlen-1, vocab) each, reused for every KL
    fp32_eval_s = time.perf_counter() - start
    common = {"model": args.model, "eval": f"wikitext2 test, {args.windows} x {args.seqlen}",
              "calib": f"{args.calib} calibration split, {args.nsamples} x {args.calib_seqlen}, seed {args.seed}",
              "machine": machine(args.device)}
    for setting in args.settings:
        method, bits, group, options = parse_setting(setting)
        record = {"setting": setting, **common}
        if method == "fp32":
            record |= evaluate(None, windows, reference) | {"eval_s": fp32_eval_s}
        else:
            model = copy.deepcopy(fp32)
            run = llmcompressor_quantize if method.startswith("lc-") else lowbit_quantize
            if args.device != "cpu":
                torch.cuda.reset_peak_memory_stats()  # the peak below: quantization alone (plus what stays resident)
            with peak_memory(torch.device("cpu")) as mem, stopwatch() as timing:
                record["config"] = run(model, method, bits, group, options, calib, loaded.tokenizer)
            record["quantize_s"], record["quantize_cpu_s"] = timing["seconds"], timing["cpu_seconds"]
            record["peak_extra_mib"] = mem["delta_bytes"] / 2**20
            if args.device != "cpu":
                record["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            if not method.startswith("lc-"):
                record["bits_per_param"] = memory_report(model).bits_per_param
            record |= evaluate(model, windows, reference)
            del model
        print(json.dumps(record), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
