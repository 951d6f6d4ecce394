"""One decode step's attention on the GPU: torch's ops (RoPE, index_copy_, SDPA; compiled) against lowbit's one
kernel (kernels/triton_attention.py) and its launch settings (the cache over one or several programs a KV head),
Llama-3-8B's heads (32 query, 8 KV, 128 wide).

    PYTHONPATH=src:benchmarks python benchmarks/attention_bench.py --batch 1 16 --cache 256 --out attention.json

Each call works on its own cache (as the 32 layers of a decode step do; 64 caches, so L2 does not hold them);
kernel_bench's timing: a CUDA graph over the calls, the median replay over calls. Outputs are checked against the
torch path once per setting.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from decode import LLAMA3_8B, torch_attention
from kernel_bench import _time_per_call, cuda_device
from lowbit.kernels import triton_ops
from lowbit.kernels.triton_attention import decode_attention

CACHES = 64
SETTINGS = [dict(block_n=n, num_warps=w, num_stages=s, split=1)
            for n, w, s in itertools.product((32, 64, 128), (4, 8), (1, 2, 3))]
SETTINGS += [dict(block_n=n, num_warps=w, num_stages=3, split=k)  # the cache over 2-16 programs a KV head
             for n, w, k in itertools.product((32, 64, 128), (4, 8), (2, 4, 8, 16))]


def step_inputs(batch: int, cache: int, dev: torch.device) -> dict:
    """q, k, v of one step, CACHES filled (k, v) caches, and cos, sin, pos, mask at a position a third in."""
    heads, kv, hd = LLAMA3_8B["heads"], LLAMA3_8B["kv_heads"], LLAMA3_8B["head_dim"]
    position = cache // 3
    angles = position / 500000 ** (torch.arange(0, hd, 2, device=dev).float() / hd)[None, :]  # (1, hd / 2)
    pos = torch.tensor([position], device=dev)
    return dict(q=torch.randn(batch, heads * hd, device=dev, dtype=torch.bfloat16),
                k=torch.randn(batch, kv * hd, device=dev, dtype=torch.bfloat16),
                v=torch.randn(batch, kv * hd, device=dev, dtype=torch.bfloat16),
                caches=[(torch.randn(batch, kv, cache, hd, device=dev, dtype=torch.bfloat16),
                         torch.randn(batch, kv, cache, hd, device=dev, dtype=torch.bfloat16)) for _ in range(CACHES)],
                cos=angles.cos().to(torch.bfloat16), sin=angles.sin().to(torch.bfloat16), pos=pos,
                mask=(torch.arange(cache, device=dev) <= pos)[None, None, None, :])


def measure(batch: int, cache: int, dev: torch.device) -> list[dict]:
    """us per call of the torch path (eager and compiled), the op's default and every launch setting."""
    s = step_inputs(batch, cache, dev)
    head = (s["q"], s["k"], s["v"])
    tail = (s["cos"], s["sin"], s["pos"])
    compiled = torch.compile(torch_attention)
    fresh = [c.clone() for c in s["caches"][0]]
    want = torch_attention(*head, *fresh, s["pos"], *tail[:2], s["mask"]).reshape(batch, -1)
    paths = {"torch (eager)": lambda i: torch_attention(*head, *s["caches"][i], s["pos"], *tail[:2], s["mask"]),
             "torch (compiled)": lambda i: compiled(*head, *s["caches"][i], s["pos"], *tail[:2], s["mask"]),
             "lowbit (op)": lambda i: triton_ops.decode_attention(*head, *s["caches"][i], *tail)}
    paths |= {f"lowbit {json.dumps(k)}": (lambda i, k=k: decode_attention(*head, *s["caches"][i], *tail, **k))
              for k in SETTINGS}
    records = []
    for name, fn in paths.items():
        got = fn(0).reshape(batch, -1)
        err = ((got.float() - want.float()).norm() / want.float().norm()).item()
        us = _time_per_call(fn, CACHES) * 1e6
        records.append({"batch": batch, "cache": cache, "path": name, "us": us, "rel_err": err})
        print(json.dumps(records[-1]), flush=True)
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--cache", type=int, nargs="+", default=[256])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    dev = cuda_device()
    if dev is None:
        return 2
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    print(json.dumps(meta), flush=True)
    records = [r for b in args.batch for c in args.cache for r in measure(b, c, dev)]
    for b, c in itertools.product(args.batch, args.cache):
        cell = [r for r in records if r["batch"] == b and r["cache"] == c]
        best = min((r for r in cell if r["path"].startswith("lowbit {")), key=lambda r: r["us"])
        print(f"batch {b}, cache {c}: " + ", ".join(f"{r['path']} {r['us']:.2f} us" for r in cell[:3])
              + f"; best setting {best['path']} {best['us']:.2f} us")
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
