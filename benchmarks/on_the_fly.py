"""Peak resident memory of on-the-fly quantization, next to the checkpoint's bf16 size.

    PYTHONPATH=src python benchmarks/on_the_fly.py [--work DIR] [--method nf4] [--skip-synthetic]

Writes two checkpoints under --work (default /tmp/lowbit_on_the_fly): the demo model as sharded bf16
safetensors, and a synthetic Llama-shaped model of about 1.5B parameters (random bf16 weights, written
shard by shard by this script). Each case runs in its own subprocess, which reports its peak RSS
(VmHWM) and the RSS right before loading (the Python/torch/transformers runtime). Cases:
on-the-fly loads of both checkpoints and of the demo GGUF, and for the demo a normal fp32 load followed
by quantization, for comparison. Results: benchmarks/results/on_the_fly.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# ~1.5B parameters: 32 layers of hidden 2048 / intermediate 5632 / GQA 32:4 heads, 32000 tied embeddings.
SYNTHETIC = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=True, max_position_embeddings=2048)
LAYERS_PER_SHARD = 2


def rss_mb() -> float:
    """Peak resident memory of this process so far (VmHWM; ru_maxrss would carry the parent's peak over
    the exec of a subprocess on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_demo(folder: Path) -> None:
    """The demo model's tensors in bf16 (tied lm_head stored once), sharded like the synthetic one."""
    import torch

    from lowbit.io.sources import load_model

    loaded = load_model("demo")
    model = loaded.model
    folder.mkdir(parents=True)
    config = model.config
    if hasattr(config, "quantization_config"):  # the GGUF loader's marker: these weights are plain floats now
        del config.quantization_config
    config.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    state = {n: t for n, t in model.state_dict().items() if not (n == "lm_head.weight" and config.tie_word_embeddings)}
    write_shards(folder, {n: t.shape for n, t in state.items()}, lambda n, _shape: state[n].to(torch.bfloat16))


def write_synthetic(folder: Path) -> None:
    """Random N(0, 0.02) bf16 weights (norms = 1), shard by shard, with an index: never all in memory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lowbit.assets import assets_dir

    config = LlamaConfig(**SYNTHETIC, dtype="bfloat16")
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets_dir() / "models" / "stories260k").save_pretrained(folder)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(config).named_parameters()}
    gen = torch.Generator().manual_seed(0)

    def make(_name, shape):
        return (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    write_shards(folder, shapes, make)


def write_shards(folder: Path, shapes: dict, make) -> None:
    """safetensors shards of LAYERS_PER_SHARD decoder layers each (+ one for the rest) and their index;
    `make(name, shape)` builds each tensor when its shard is written."""
    from safetensors.torch import save_file

    groups: dict[str, list[str]] = {}
    for name in shapes:
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else -1
        groups.setdefault(f"{layer // LAYERS_PER_SHARD + 1 if layer >= 0 else 0:03d}", []).append(name)
    weight_map = {}
    for key, members in groups.items():
        file = f"model-{key}.safetensors"
        save_file({n: make(n, shapes[n]).contiguous() for n in members}, str(folder / file), metadata={"format": "pt"})
        weight_map |= {n: file for n in members}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def run_case(case: str, model: str, method: str, dtype: str) -> dict:
    """In this (child) process: load MODEL quantized with METHOD, one way or the other."""
    import torch

    import lowbit
    from lowbit.eval.memory import memory_report
    from lowbit.io.sources import load_model
    from lowbit.methods import make_config

    config = make_config(method)
    before = rss_mb()
    start = time.perf_counter()
    if case == "on_the_fly":
        loaded = lowbit.load(model, getattr(torch, dtype), quantize=config)
    else:
        loaded = load_model(model, getattr(torch, dtype))
        lowbit.quantize(loaded.model, config)
    seconds = time.perf_counter() - start
    report = memory_report(loaded.model)
    return {"runtime_rss_mb": before, "peak_rss_mb": rss_mb(), "seconds": seconds,
            "quantized_model_mb": report.weight_bytes / 2**20, "bits_per_param": report.bits_per_param}


def checkpoint_mb(path: Path) -> float:
    files = path.glob("*.safetensors") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/lowbit_on_the_fly"))
    parser.add_argument("--method", default="nf4")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    parser.add_argument("--mmap-threshold", type=int, help="glibc MALLOC_MMAP_THRESHOLD_ for the children (bytes)")
    parser.add_argument("--child", nargs=4, metavar=("CASE", "MODEL", "METHOD", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(*args.child)))
        return
    from lowbit.io.sources import demo_path

    demo, synthetic = args.work / "demo-bf16", args.work / "synthetic-1.5b-bf16"
    if not demo.exists():
        write_demo(demo)
    cases = [("demo bf16 shards, on the fly", "on_the_fly", demo, "float32"),
             ("demo bf16 shards, normal fp32 load then quantize", "after_load", demo, "float32"),
             ("demo GGUF (Q4_1), on the fly", "on_the_fly", demo_path(), "float32")]
    if not args.skip_synthetic:
        if not synthetic.exists():
            write_synthetic(synthetic)
        cases.append(("synthetic 1.5B bf16 shards, on the fly (bf16 for unquantized tensors)", "on_the_fly", synthetic, "bfloat16"))
    env = dict(os.environ)
    if args.mmap_threshold:  # a fixed threshold stops glibc from raising it, so big temporaries go back to the OS
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    records = {}
    for name, case, path, dtype in cases:
        if args.only and args.only not in name:
            continue
        name += f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold else ""
        child = [sys.executable, __file__, "--child", case, str(path), args.method, dtype]
        out = subprocess.run(child, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
        record = json.loads(out) | {"method": args.method, "bf16_checkpoint_mb": checkpoint_mb(demo if path == demo_path() else path)}
        record["peak_over_bf16"] = record["peak_rss_mb"] / record["bf16_checkpoint_mb"]
        records[name] = record
        print(name, record, flush=True)
    write(records, " ".join(sys.argv[1:]))


def write(records: dict, argv: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = f"PYTHONPATH=src python benchmarks/on_the_fly.py {argv}".strip()
    path = RESULTS / "on_the_fly.json"
    data = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    for rec in data["results"].values():  # files written before commands were kept per case
        rec.setdefault("command", data.pop("command", None) or "PYTHONPATH=src python benchmarks/on_the_fly.py")
    for rec in records.values():
        rec["command"] = command
    data["results"] |= records
    records = data["results"]
    path.write_text(json.dumps(data, indent=1))
    cols = ["bf16_checkpoint_mb", "runtime_rss_mb", "peak_rss_mb", "peak_over_bf16", "quantized_model_mb", "bits_per_param", "seconds"]
    lines = ["# On-the-fly quantization: peak resident memory", "", "Commands: see `command` of each case in on_the_fly.json.", "",
             "| case | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, rec in records.items():
        lines.append(f"| {name} | " + " | ".join(f"{rec[c]:.4g}" for c in cols) + " |")
    (RESULTS / "on_the_fly.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
