"""Prefill and decode speed and peak resident memory of the demo model on the CPU, every setting side by side.

    PYTHONPATH=src python benchmarks/cpu_decode.py [--prompt 128] [--new 32] [--repeats 3] [--out FILE]
        [--only rtn gptq eetq ...]   (fp32 and bf16 always run: every ratio is against them)

Each setting (fp32, bf16, each registered method's usual setting) is quantized once and saved; then one
worker process per setting loads its checkpoint (so its peak RSS is that of the model as served, not of
the quantization run) and waits. The parent runs the workers one at a time, round after round
(interleaved, so slow spells of a shared CPU hit every setting alike), and reports medians. Batch 1, the
same prompt, greedy decoding with a KV cache; prefill (one forward over the prompt) and decode (one
token per forward) are timed separately after a warm-up generation. Quantized models keep their
unquantized layers (embeddings, norms, head) in --rest-dtype (default bf16: their CPU kernels compute in
bf16 anyway, and an fp32 head alone is a fifth of the demo model's fp32 bytes read per token).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

# AQLM's search on the CPU takes many minutes per model even with its fast preset; decode speed depends on
# the format (codebooks x bits, group size) and not on how well the codes were searched, so the speed rows
# quantize with one short search round and no fine-tuning (their perplexity is not meaningful).
AQLM_CHEAP = {"preset": "fast", "rounds": 1, "kmeans_iters": 2, "cg_iters": 2, "finetune_epochs": 0}
# The usual setting of each method, by registered name; methods not registered here are skipped.
USUAL = {
    "rtn": {"bits": 4, "group_size": 64},
    "gptq": {"bits": 4, "group_size": 64},
    "awq": {"bits": 4, "group_size": 64},
    "hqq": {"bits": 4, "group_size": 64},
    "qat": {"bits": 4, "group_size": 64},
    "eetq": {},
    "int8": {"threshold": 0.0},  # LLM.int8 without the outlier path
    "ptq": {},
    "nf4": {},
    "fp4": {},
    "aqlm": {"codebooks": 2, "codebook_bits": 8, "group_size": 8, **AQLM_CHEAP},  # 2x8
}
# Further rows: other bit widths of the shared format, the embedding/head option, AQLM 1x16, LLM.int8 eager.
EXTRA = {
    "rtn-8bit": ("rtn", {"bits": 8, "group_size": 64}),
    "rtn-3bit": ("rtn", {"bits": 3, "group_size": 64}),
    "rtn-4bit+vocab4": ("rtn", {"bits": 4, "group_size": 64, "head_bits": 4, "embedding_bits": 4}),
    "aqlm-1x16": ("aqlm", {"codebooks": 1, "codebook_bits": 16, "group_size": 8, **AQLM_CHEAP}),
    "int8-eager": ("int8", {"threshold": 0.0}),
}
# Rows that ask the selector for a named kernel (set_kernel_preference), to compare two paths of one format.
KERNEL = {"int8-eager": "int8_cpu"}  # LLM.int8's eager path, beside the int8 row's C++ op (int8_cpp)
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16"}
CALIB_WINDOWS, CALIB_SEQLEN = 8, 256  # speed does not depend on calibration quality: keep it short


def rss_mib(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of this process. Not ru_maxrss: Linux carries that
    over from the parent across fork + exec, so every worker would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def prompt_ids(tokenizer, n: int) -> torch.Tensor:
    from lowbit.assets import EVAL_TEXTS, resolve_text

    text = resolve_text("wikitext2", EVAL_TEXTS).read_text()[:20000]
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"][:n]])  # (1, n)


@torch.inference_mode()
def generate(model, ids: torch.Tensor, new: int) -> tuple[float, float]:
    """Greedy decoding with a KV cache; returns (prefill seconds, decode seconds for `new` tokens)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    t0 = time.perf_counter()
    out = model(ids, cache=cache, use_cache=True)
    t1 = time.perf_counter()
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(new):
        out = model(token, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    return t1 - t0, time.perf_counter() - t1


def worker(folder: str, dtype: str, prompt: int, new: int, threads: int, kernel: str) -> None:
    """Load one setting, warm up, then time one generation per line read from stdin."""
    torch.set_num_threads(threads)
    base = rss_mib("VmRSS")
    import lowbit
    from lowbit.eval.memory import memory_report
    from lowbit.modules import set_kernel_preference
    from lowbit.modules.plan import kernel_summary

    loaded = lowbit.load(folder, dtype=getattr(torch, dtype))
    set_kernel_preference(loaded.model, kernel)
    ids = prompt_ids(loaded.tokenizer, prompt)
    generate(loaded.model, ids, 4)  # warm-up (and kernel repacking, if load did not do it)
    mem = memory_report(loaded.model)
    ready = {
        "kernels_decode": kernel_summary(loaded.model, rows=1),
        "kernels_prefill": kernel_summary(loaded.model, rows=prompt),
        "weight_mib": mem.weight_bytes / 2**20,
        "kernel_cache_mib": mem.kernel_cache_bytes / 2**20,
        "rss_before_load_mib": base,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(ready), flush=True)
    for _ in sys.stdin:
        prefill, decode = generate(loaded.model, ids, new)
        print(json.dumps({"prefill_s": prefill, "decode_s": decode, "peak_rss_mib": rss_mib()}), flush=True)


def prepare(work: Path, rest_dtype: str, settings: dict, prompt: int) -> dict[str, dict]:
    """Save fp32, bf16 and every quantized setting under `work`; returns name -> worker arguments/skip."""
    import lowbit
    from lowbit.calib.data import calibration_windows
    from lowbit.errors import LowbitError
    from lowbit.methods import make_config, method_names

    src = lowbit.load("demo")
    # The GGUF file was dequantized to floats at load; drop transformers' GGUF marker so it saves as usual.
    src.model.hf_quantizer = None
    if hasattr(src.model.config, "quantization_config"):
        del src.model.config.quantization_config
    plan: dict[str, dict] = {}
    for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        copy.deepcopy(src.model).to(getattr(torch, dtype)).save_pretrained(work / name)
        src.tokenizer.save_pretrained(work / name)
        plan[name] = {"folder": str(work / name), "dtype": dtype}
    for name, (method, options) in settings.items():
        if method not in method_names():
            plan[name] = {"skipped": f"method {method} is not registered in this build"}
            continue
        try:
            config = make_config(method, **options)
            calib = None
            if config.needs_calibration:
                calib = calibration_windows(src.tokenizer, "wikitext2", CALIB_WINDOWS, CALIB_SEQLEN, seed=0)
            model = lowbit.quantize(copy.deepcopy(src.model), config, calib)
            lowbit.save(model, work / name, src.tokenizer)
            plan[name] = {"folder": str(work / name), "dtype": rest_dtype, "config": config.to_dict(),
                          "kernel": KERNEL.get(name, "auto")}
            del model
        except LowbitError as err:
            plan[name] = {"skipped": f"{method} {options}: {err}"}
    return plan


def start(args, spec: dict) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, __file__, "--worker", spec["folder"], "--dtype", spec["dtype"]]
    cmd += ["--prompt", str(args.prompt), "--new", str(args.new), "--threads", str(args.threads)]
    cmd += ["--kernel", spec.get("kernel", "auto")]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ)
    return proc, read_json(proc)


def read_json(proc: subprocess.Popen) -> dict:
    """The worker's next JSON line (libraries may print other lines to stdout)."""
    for line in proc.stdout:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"benchmark worker exited with code {proc.wait()}")


def ask(proc: subprocess.Popen) -> dict:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return read_json(proc)


def run(args) -> dict:
    settings = {name: (name, opts) for name, opts in USUAL.items()} | EXTRA
    if args.only:
        unknown = set(args.only) - settings.keys()
        if unknown:
            raise SystemExit(f"unknown settings {sorted(unknown)}: choose from {sorted(settings)}")
        settings = {name: settings[name] for name in args.only}
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-") as tmp:
        plan = prepare(Path(tmp), args.rest_dtype, settings, args.prompt)
        active = {n: p for n, p in plan.items() if "folder" in p}
        workers = {}
        for name, spec in active.items():  # one at a time: loading is heavy
            workers[name] = start(args, spec)
        runs: dict[str, list[dict]] = {n: [] for n in active}
        load_start = os.getloadavg()
        for _ in range(args.repeats):
            for name, (proc, _) in workers.items():
                runs[name].append(ask(proc))
        for proc, _ in workers.values():
            proc.stdin.close()
            proc.wait()
    rows = {}
    for name, spec in plan.items():
        if name not in active:
            rows[name] = {"skipped": spec["skipped"]}
            continue
        r, ready = runs[name], workers[name][1]
        rows[name] = {
            **ready,
            "config": spec.get("config"),
            "dtype": spec["dtype"],
            "prefill_tok_s": args.prompt / statistics.median(x["prefill_s"] for x in r),
            "decode_tok_s": args.new / statistics.median(x["decode_s"] for x in r),
            "decode_tok_s_all": [args.new / x["decode_s"] for x in r],
            "peak_rss_mib": max(x["peak_rss_mib"] for x in r),
        }
    fp32, bf16 = rows["fp32"]["decode_tok_s"], rows["bf16"]["decode_tok_s"]
    for row in rows.values():
        if "decode_tok_s" in row:
            row["decode_vs_fp32"] = row["decode_tok_s"] / fp32
            row["decode_vs_bf16"] = row["decode_tok_s"] / bf16
    return {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads, "torch": torch.__version__, "transformers": transformers.__version__,
                    "load_avg_at_rounds_start": load_start, "load_avg_at_end": os.getloadavg()},
        "protocol": {"model": "demo (SmolLM2-135M-Instruct)", "batch": 1, "prompt_tokens": args.prompt,
                     "new_tokens": args.new, "repeats": args.repeats, "statistic": "median over interleaved repeats"},
        "results": rows,
    }


def table(report: dict) -> str:
    lines = ["| setting | other layers | prefill tok/s | decode tok/s | vs fp32 | vs bf16 | peak RSS MiB | weights MiB | kernels (decode) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} ||||||||")
            continue
        kernels = ", ".join(f"{k} x{v}" for k, v in r["kernels_decode"].items()) or "dense"
        lines.append(
            f"| {name} | {DTYPE_NAMES[r['dtype']]} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} | {r['decode_vs_fp32']:.2f} | "
            f"{r['decode_vs_bf16']:.2f} | {r['peak_rss_mib']:.0f} | {r['weight_mib'] + r['kernel_cache_mib']:.0f} | {kernels} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/cpu_decode.json")
    parser.add_argument("--only", nargs="+", help="run only these settings (names of USUAL / EXTRA)")
    parser.add_argument("--worker")
    parser.add_argument("--kernel", default="auto", help=argparse.SUPPRESS)  # a worker's kernel preference
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)  # a worker's model dtype
    parser.add_argument("--rest-dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="dtype of a quantized model's unquantized layers")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per worker")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.dtype, args.prompt, args.new, args.threads, args.kernel)
        return
    report = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    Path(args.out).with_suffix(".md").write_text(table(report) + "\n")
    print(table(report))


if __name__ == "__main__":
    main()
