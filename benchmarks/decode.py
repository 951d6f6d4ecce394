"""Decode tokens/s of a Llama-3-8B-shaped model with random weights: bf16 vs lowbit's packed formats (GPU).

    PYTHONPATH=src python benchmarks/decode.py --batch 1 16 --modes eager compiled --out decode.json

No checkpoint: every linear layer (q, k, v, o, gate, up, down of 32 blocks, and the output head) is built
directly in its format with random codes and qparams on the GPU; the token embedding, norms and KV cache
stay bf16 in every variant. One decode step (greedy: the argmax token feeds the next step, the position
advances on the device) is captured in a CUDA graph over a static KV cache of --cache tokens; attention
reads the whole cache under a mask, so its cost does not grow with the position. tokens/s = batch * steps /
time of `steps` graph replays (CUDA events), after warm-up; each variant's model is freed before the next.

Modes (every format runs with the same settings): `eager` captures the uncompiled step; `compiled` first
compiles each decoder block with torch.compile (regional compilation: the 32 blocks share one graph), so
Inductor fuses the glue around the matmuls (norms, RoPE, residuals, SiLU), then captures the step the same
way. `--fused` merges q/k/v and gate/up into one linear layer each (fewer, larger matmuls), in every format.
On an H100 lowbit's CUDA kernels launch with programmatic dependent launch (kernels/cuda_common.cuh); `--serial`
launches them in line, and `--inductor-pdl` has torch.compile's own kernels use it too (every variant, bf16's too).
`--sdpa` sets every variant's attention: an SDPA backend (torch's choice by default), FlexAttention, or `lowbit`:
RoPE, the two cache writes and attention in one Triton kernel (kernels/triton_attention.py), which also reads the
whole cache at every position.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import flex_attention

from lowbit.core.aqlm import AQLMWeights
from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.formats.int_group import IntGroupLayout
from lowbit.formats.nf4 import FourBitLayout
from lowbit.kernels import nvrtc, triton_ops
from lowbit.modules import AQLMLinear, FourBitLinear, Int8Linear, IntLinear, W8A8Linear
from lowbit.modules.plan import kernel_summary

LLAMA3_8B = dict(hidden=4096, inter=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256)
FORMATS = ["bf16", "int4_g128", "int4_g128_mma", "int4_g128_triton", "int4_g128_rows", "int3_g128", "int3_g128_mma",
           "int3_g128_rows", "int2_g128", "int2_g128_mma", "int8_weight_only", "int8_weight_only_mma",
           "int8_weight_only_rows", "w8a8", "torch_int4_g128", "nf4_dq_b64", "nf4_dq_b64_mma", "nf4_dq_b64_rows",
           "aqlm_2x8", "aqlm_1x16"]
# *_mma: the CUDA tensor-core kernel by name; *_triton: the Triton kernels by name; else auto's choice; *_rows: the
# words kept in row order (a CUDA layer holds NF4, int_group and int8 weight-only codes in tile order,
# formats.word_tiles)
MODES = ["eager", "compiled"]
PROFILED_STEPS = 4  # --profile's uncaptured steps, after the timed ones
SDPA_BACKENDS = ["default", "math", "flash", "efficient", "cudnn"]
ATTENTION = [*SDPA_BACKENDS, "flex", "lowbit"]  # flex: torch's FlexAttention (compiled: its decoding kernel);
# lowbit: RoPE, the cache writes and attention in one kernel (kernels/triton_attention.py)


def _preference(fmt: str) -> str:
    return "cuda_mma" if fmt.endswith("_mma") else "triton" if fmt.endswith("_triton") else "auto"


class TorchInt4Linear(nn.Module):
    """torch's own int4 kernel (aten._weight_int4pack_mm, tinygemm) on random codes: a reference point."""

    def __init__(self, in_f: int, out_f: int, dev: torch.device):
        super().__init__()
        codes = torch.randint(0, 16, (out_f, in_f), dtype=torch.int32, device=dev)  # (out, in)
        packed = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # (out, in / 2)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack(packed, 8))
        sz = torch.stack([torch.rand(in_f // 128, out_f, device=dev) * 2e-3 / math.sqrt(in_f) * 16,
                          torch.zeros(in_f // 128, out_f, device=dev)], dim=-1)  # (in / 128, out, 2)
        self.register_buffer("sz", sz.to(torch.bfloat16))

    def forward(self, x):
        return torch.ops.aten._weight_int4pack_mm(x, self.packed, 128, self.sz)


def make_linear(fmt: str, in_f: int, out_f: int, dev: torch.device) -> nn.Module:
    """One (out_f, in_f) layer in `fmt` with random weights of about unit output scale."""
    std = 1.0 / math.sqrt(in_f)
    if fmt == "bf16":
        layer = nn.Linear(in_f, out_f, bias=False, device=dev, dtype=torch.bfloat16)
        nn.init.normal_(layer.weight, std=std)
        return layer
    if fmt == "torch_int4_g128":
        return TorchInt4Linear(in_f, out_f, dev)
    if fmt.startswith("nf4_dq_b64"):  # QLoRA's setting: blocks of 64, double-quantized absmax
        w = torch.randn(out_f, in_f, device=dev) * std
        layer = FourBitLinear.from_float(w, None, FourBitLayout(out_f, in_f, "nf4", 64, True))
        return _ordered(layer, fmt, dev)
    if fmt.startswith("aqlm_"):  # aqlm_MxB: M codebooks of 2**B codewords of 8 inputs, random codes
        m, nbits = map(int, fmt.removeprefix("aqlm_").split("x"))
        codes = torch.randint(0, 2**nbits, (out_f, in_f // 8, m), device=dev)  # (out, G, M)
        books = torch.randn(m, 2**nbits, 8, device=dev) * std
        return AQLMLinear.from_weights(AQLMWeights(codes, books, torch.ones(out_f, 1, device=dev), in_f), None)
    if fmt.startswith("int") and "_g" in fmt:
        bits, group = int(fmt[3]), int(fmt.split("_g")[1].split("_")[0])
        layer = IntLinear(IntGroupLayout(out_f, in_f, bits, group, symmetric=False), has_bias=False, device=dev)
        layer.qweight.random_(-(2**31), 2**31 - 1)  # every bit pattern is a valid code sequence
        layer.scale.copy_((torch.rand_like(layer.scale, dtype=torch.float32) + 0.5) * 2 * std / 2**bits)
        layer.zero.copy_(torch.full_like(layer.zero, (2**bits - 1) / 2))
        return _ordered(layer, fmt, dev)
    cls = W8A8Linear if fmt == "w8a8" else Int8Linear
    layer = cls(Int8RowLayout(out_f, in_f), has_bias=False, device=dev)
    layer.qweight.random_(-127, 128)
    layer.scale.fill_(2 * std / 127)
    if fmt == "w8a8":
        layer.input_scale.fill_(4.0 / 127)
    return _ordered(layer, fmt, dev)


def _ordered(layer: nn.Module, fmt: str, dev: torch.device) -> nn.Module:
    """The layer's words in the device's order, as .to() and the loaders leave them (*_rows: kept in row order),
    and its kernel preference set from the format's name."""
    if not fmt.endswith("_rows"):
        layer.order_words_for(dev)
    layer.kernel_preference = _preference(fmt)
    return layer


class Block(nn.Module):
    def __init__(self, fmt: str, cfg: dict, batch: int, cache: int, dev: torch.device, fused: bool = False,
                 attention: str = "default"):
        super().__init__()
        h, hd, kv = cfg["hidden"], cfg["head_dim"], cfg["kv_heads"]
        self.heads, self.kv, self.hd, self.fused, self.attention = cfg["heads"], kv, hd, fused, attention
        self.qkv_sizes = (cfg["heads"] * hd, kv * hd, kv * hd)
        if fused:
            self.qkv = make_linear(fmt, h, sum(self.qkv_sizes), dev)
            self.gate_up = make_linear(fmt, h, 2 * cfg["inter"], dev)
        else:
            self.q, self.k, self.v = (make_linear(fmt, h, n, dev) for n in self.qkv_sizes)
            self.gate, self.up = make_linear(fmt, h, cfg["inter"], dev), make_linear(fmt, h, cfg["inter"], dev)
        self.o = make_linear(fmt, h, h, dev)
        self.down = make_linear(fmt, cfg["inter"], h, dev)
        self.norm1 = torch.ones(h, dtype=torch.bfloat16, device=dev)
        self.norm2 = torch.ones(h, dtype=torch.bfloat16, device=dev)
        shape = (batch, kv, cache, hd)  # (batch, kv heads, cache, head dim)
        self.k_cache = torch.zeros(shape, dtype=torch.bfloat16, device=dev)
        self.v_cache = torch.zeros(shape, dtype=torch.bfloat16, device=dev)

    def forward(self, h, pending, pos, cos, sin, mask):
        """h (b, hidden) and the block before's output not yet added to it (None at the first block) -> the same
        pair for the next block: each residual add runs in the kernel of the RMSNorm after it (vLLM's fused
        add-norm), not as a kernel of its own between two compiled blocks."""
        b = h.shape[0]
        if pending is not None:
            h = h + pending
        x = F.rms_norm(h, (h.shape[-1],), self.norm1, 1e-5)
        q, k, v = self._qkv(x)
        if self.attention == "lowbit":
            a = triton_ops.decode_attention(q, k, v, self.k_cache, self.v_cache, cos, sin, pos)
        else:
            a = torch_attention(q, k, v, self.k_cache, self.v_cache, pos, cos, sin, mask, self.attention == "flex")
        h = h + self.o(a.reshape(b, -1))
        x = F.rms_norm(h, (h.shape[-1],), self.norm2, 1e-5)
        gate, up = self.gate_up(x).chunk(2, dim=-1) if self.fused else (self.gate(x), self.up(x))
        return h, self.down(F.silu(gate) * up)

    def _qkv(self, x):
        """x (b, hidden) -> q (b, heads * hd), k and v (b, kv * hd)."""
        if self.fused:
            return self.qkv(x).split(self.qkv_sizes, dim=-1)
        return self.q(x), self.k(x), self.v(x)


def torch_attention(q, k, v, k_cache, v_cache, pos, cos, sin, mask, flex: bool = False):
    """RoPE, the cache writes and attention in torch ops (SDPA, or FlexAttention if `flex`): q (b, heads * hd), k and
    v (b, kv * hd), caches (b, kv, cache, hd) -> (b, kv, group, hd), positions past `pos` masked out."""
    b, kv, _, hd = k_cache.shape
    # grouped-query attention without copying K/V: a group's query heads act as its query positions
    q = _rope(q.view(b, kv, -1, hd), cos, sin)  # (b, kv, group, hd)
    k_cache.index_copy_(2, pos, _rope(k.view(b, kv, 1, hd), cos, sin))
    v_cache.index_copy_(2, pos, v.view(b, kv, 1, hd))
    if flex:
        return flex_attention(q, k_cache, v_cache, score_mod=_up_to(pos))
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)


def _up_to(pos):
    """FlexAttention score_mod: cache positions after `pos` (a (1,) device tensor) score -inf."""
    return lambda score, b, h, q_idx, kv_idx: torch.where(kv_idx <= pos[0], score, -float("inf"))


def _rope(t, cos, sin):
    half = t.shape[-1] // 2
    t1, t2 = t[..., :half], t[..., half:]
    return torch.cat([t1 * cos - t2 * sin, t1 * sin + t2 * cos], dim=-1)


class Decoder(nn.Module):
    def __init__(self, fmt: str, cfg: dict, batch: int, cache: int, dev: torch.device, fused: bool = False,
                 attention: str = "default"):
        super().__init__()
        self.embed = (torch.randn(cfg["vocab"], cfg["hidden"], device=dev) * 0.02).to(torch.bfloat16)
        self.blocks = nn.ModuleList(Block(fmt, cfg, batch, cache, dev, fused, attention) for _ in range(cfg["layers"]))
        self.norm = torch.ones(cfg["hidden"], dtype=torch.bfloat16, device=dev)
        self.head = make_linear(fmt, cfg["hidden"], cfg["vocab"], dev)
        inv = 1.0 / 500000 ** (torch.arange(0, cfg["head_dim"], 2, device=dev).float() / cfg["head_dim"])
        angles = torch.arange(cache, device=dev).float()[:, None] * inv[None, :]  # (cache, hd / 2)
        self.cos, self.sin = angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16)
        self.positions = torch.arange(cache, device=dev)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=dev)  # the graph's input and output
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)

    @torch.no_grad()
    def step(self) -> None:
        """One greedy decode step for every sequence: reads tokens and pos, writes the next tokens, pos + 1."""
        h, pending = self.embed[self.tokens], None  # (batch, hidden)
        cos, sin = self.cos[self.pos], self.sin[self.pos]  # (1, hd / 2)
        mask = (self.positions <= self.pos)[None, None, None, :]  # (1, 1, 1, cache)
        for block in self.blocks:
            h, pending = block(h, pending, self.pos, cos, sin, mask)
        self.tokens.copy_(self.next_tokens(h, pending))
        self.pos.add_(1)

    def next_tokens(self, h, pending):
        """The last block's output added, normed, through the head: the greedy next token of each sequence."""
        h = h + pending
        return self.head(F.rms_norm(h, (h.shape[-1],), self.norm, 1e-5)).argmax(dim=-1)


def weight_bytes(model: Decoder) -> int:
    linear = [m for m in model.modules() if m is not model and not isinstance(m, (Block, nn.ModuleList))]
    return sum(b.numel() * b.element_size() for m in linear for b in list(m.buffers()) + list(m.parameters()))


def compile_blocks(model: Decoder, mode: str) -> None:
    """torch.compile each block in place (blocks of one structure reuse one compiled graph) and the step's tail
    (final add, norm, head, argmax)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # graphs and graph breaks are counted per variant
    for block in model.blocks:
        block.compile(mode=mode)
    model.next_tokens = torch.compile(model.next_tokens, mode=mode)


def warm_up(model: Decoder, steps: int = 2) -> float:
    """Run `steps` eager steps (compiling kernels, and the blocks when compiled); returns their seconds."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        model.step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def time_graph(model: Decoder, steps: int) -> float:
    """Capture one step in a CUDA graph; seconds per replay over `steps` replays from position 0."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model.step()
    model.pos.zero_()
    for _ in range(3):
        graph.replay()
    model.pos.zero_()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3 / steps


def profile_step(model: Decoder, steps: int = PROFILED_STEPS, top: int = 12) -> dict:
    """GPU time per decode step by kernel (torch.profiler over `steps` uncaptured steps): the `top` kernels by
    time, and the step's total kernel time, so the matrix products can be told from the glue around them."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            model.step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    rows = [{"kernel": e.key[:90], "calls": e.count // steps, "us": e.device_time_total / steps} for e in kernels]
    return {"total_us": sum(r["us"] for r in rows), "top": rows[:top]}


def run_variant(fmt: str, batch: int, cfg: dict, args: argparse.Namespace, mode: str, dev: torch.device) -> dict:
    torch.manual_seed(0)
    model = Decoder(fmt, cfg, batch, args.cache, dev, args.fused, args.sdpa)
    record = {"format": fmt, "batch": batch, "mode": mode, "fused": args.fused, "steps": args.steps,
              "cache": args.cache}
    if mode == "compiled":
        compile_blocks(model, args.compile_mode)
        record["compile_mode"] = args.compile_mode
    record["warm_up_s"] = warm_up(model)
    if mode == "compiled":
        counters = torch._dynamo.utils.counters
        record["graphs"] = counters["stats"]["unique_graphs"]
        record["graph_breaks"] = sum(counters["graph_break"].values())
    seconds = time_graph(model, args.steps)
    if args.profile:
        record["profile"] = profile_step(model)
    record.update(ms_per_step=seconds * 1e3, tokens_per_s=batch / seconds, weight_GB=weight_bytes(model) / 1e9,
                  kernels=kernel_summary(model, rows=batch, device=dev, dtype=torch.bfloat16))
    record["weight_GBps"] = record["weight_GB"] / seconds
    del model
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return record


def print_table(records: list[dict]) -> None:
    """One line per variant; x bf16 against bf16 of the same batch and mode."""
    base = {(r["batch"], r["mode"]): r["tokens_per_s"] for r in records
            if r["format"] == "bf16" and "tokens_per_s" in r}
    print(f"{'format':>18} {'mode':>8} {'batch':>5} {'tok/s':>9} {'x bf16':>7} {'ms/step':>8} {'weights GB':>10} "
          f"{'GB/s':>6}")
    for r in records:
        if "error" in r:
            print(f"{r['format']:>18} {r['mode']:>8} {r['batch']:>5}  ERROR {r['error']}")
            continue
        bf16 = base.get((r["batch"], r["mode"]))
        r["x_bf16"] = r["tokens_per_s"] / bf16 if bf16 else None
        ratio = f"{r['x_bf16']:7.2f}" if r["x_bf16"] else f"{'-':>7}"
        print(f"{r['format']:>18} {r['mode']:>8} {r['batch']:>5} {r['tokens_per_s']:9.1f} {ratio} "
              f"{r['ms_per_step']:8.2f} {r['weight_GB']:10.2f} {r['weight_GBps']:6.0f}")


def attention_launch() -> dict:
    """The launch settings lowbit::decode_attention runs the kernel with: triton_attention.decode_attention's
    defaults."""
    import inspect

    from lowbit.kernels.triton_attention import decode_attention

    params = inspect.signature(decode_attention).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def only_sdpa_backend(name: str) -> None:
    """Leave only `name`'s scaled_dot_product_attention backend enabled (every variant, bf16 included)."""
    if name in ("default", "flex", "lowbit"):
        return
    for backend in SDPA_BACKENDS[1:]:
        getattr(torch.backends.cuda, f"enable_{backend if backend != 'efficient' else 'mem_efficient'}_sdp")(
            backend == name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--cache", type=int, default=256, help="static KV cache length (tokens)")
    p.add_argument("--steps", type=int, default=64, help="timed decode steps (with --profile's 4, at most --cache)")
    p.add_argument("--layers", type=int, default=LLAMA3_8B["layers"])
    p.add_argument("--modes", nargs="+", default=["eager"], choices=MODES)
    p.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled blocks")
    p.add_argument("--fused", action="store_true", help="one q/k/v and one gate/up linear layer per block")
    p.add_argument("--sdpa", choices=ATTENTION, default="default",
                   help="attention of every variant: an SDPA backend (default: torch's choice, cuDNN on an H100), "
                        "flex (FlexAttention; with --modes compiled, its decoding kernel) or lowbit (RoPE, cache "
                        "writes and attention in one Triton kernel)")
    p.add_argument("--profile", action="store_true", help="also record GPU time per step by kernel")
    p.add_argument("--serial", action="store_true",
                   help="launch lowbit's CUDA kernels without programmatic dependent launch (PDL, on H100 by default)")
    p.add_argument("--inductor-pdl", action="store_true",
                   help="torch.compile's kernels with PDL too (torch._inductor.config.triton.enable_pdl), every "
                        "variant")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    last = args.steps + (PROFILED_STEPS if args.profile else 0)  # positions a variant decodes from 0
    if last > args.cache:
        p.error(f"{last} decode steps pass the {args.cache}-position cache: raise --cache or lower --steps")
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    cfg = dict(LLAMA3_8B, layers=args.layers)
    only_sdpa_backend(args.sdpa)
    serial = args.serial or not nvrtc.programmatic(dev.index or 0)
    torch._inductor.config.triton.enable_pdl = args.inductor_pdl
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": cfg, "cache": args.cache,
            "fused": args.fused, "sdpa": args.sdpa, "launch": "serial" if serial else "programmatic",
            "inductor_pdl": args.inductor_pdl}
    if args.sdpa == "lowbit":  # the attention kernel's launch setting (the op calls it with its defaults)
        meta["attention_launch"] = attention_launch()
    print(json.dumps(meta), flush=True)
    with nvrtc.serialized_launches() if args.serial else contextlib.nullcontext():
        records = run_all(args, cfg, dev, meta)
    print_table(records)
    save(args.out, meta, records)
    return 0


def run_all(args: argparse.Namespace, cfg: dict, dev: torch.device, meta: dict) -> list[dict]:
    """Every (batch, mode, format) variant's record, saved after each."""
    records = []
    for batch in args.batch:
        for mode in args.modes:
            for fmt in args.formats:
                try:
                    rec = run_variant(fmt, batch, cfg, args, mode, dev)
                except Exception as err:  # reported, never skipped silently
                    rec = {"format": fmt, "batch": batch, "mode": mode,
                           "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
                    torch._dynamo.reset()
                    torch.cuda.empty_cache()
                records.append(rec)
                print(json.dumps(rec), flush=True)
                save(args.out, meta, records)  # after every variant: a run cut short keeps what it measured
    return records


def save(path: Path | None, meta: dict, records: list[dict]) -> None:
    if path:
        path.write_text(json.dumps({"meta": meta, "records": records}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
