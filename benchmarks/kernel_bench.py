"""Kernel benchmark: lowbit's packed formats vs bf16 cuBLAS and torch's int4 kernel, Llama-3-8B layer shapes.

    PYTHONPATH=src python benchmarks/kernel_bench.py --out benchmarks/results/kernels-h100.json

(Named kernel_bench, not kernels: a benchmarks/kernels.py would shadow the `kernels` package that
transformers >= 5.25 imports whenever it loads a model from a script in this folder.)

Every variant of one (shape, rows) cell is timed in the same run: a CUDA graph runs the op once over each
of several weight copies (enough that the copies do not fit in L2), its replays are timed with
triton.testing.do_bench (median), and time per call is the replay time over the copy count. Bytes are the
weight's packed bytes plus activations in and out; GB/s and TFLOP/s follow from the median time.

lowbit's CUDA kernels launch with programmatic dependent launch on an H100 (kernels/cuda_common.cuh): a call may
start, prefetching its weights into L2, while the call ahead of it finishes, so back-to-back calls overlap at the
seams. A variant's name + "_serial" (with --variants) times it with every launch waiting in line, beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lowbit.core.affine import int8_absmax
from lowbit.core.codebook import code_table, double_quantize
from lowbit.formats.aqlm import AQLMLayout
from lowbit.formats.bitpack import pack_bits
from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.formats.int_group import IntGroupLayout
from lowbit.formats.nf4 import FourBitLayout
from lowbit.formats.word_tiles import to_tiles
from lowbit.kernels import nvrtc
from lowbit.kernels.select import CallContext, select
from lowbit.modules import fourbit_linear, int8_linear, int_linear

SHAPES = [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096), (4096, 128256)]  # (in, out)
ROWS = [1, 4, 16, 64, 128, 512]
L2_FLUSH_BYTES = 256 * 2**20  # weight copies per variant add up to at least this (H100 L2: 50 MB)
MAX_COPIES = 64
SERIAL = "_serial"  # a variant's name + this: the same variant, its CUDA kernels launched without PDL
TWO_TILES_AHEAD = {"PREFETCH": 2}  # triton_gemv with two K tiles loaded ahead instead of one (kern8)
PRMT = {"LOOKUP": "prmt", "X64": True}  # NF4 table looked up in registers with byte permutes, inputs as int64 words
NF4_MV_CONFIGS = {  # triton_fourbit's matrix-vector kernel at one row beside its default (the table gathered)
    "prmt": PRMT,
    "prmt_st3": PRMT | {"STAGES": 3},  # Triton's software pipeliner, two tiles in flight through shared memory
    "prmt_bn512": PRMT | {"BN": 512},  # 4 rows a thread, not 2: each input converted once for 4 rows (126 registers)
    "prmt_w2": PRMT | {"num_warps": 2},  # 4 rows a thread as bn512, with as many programs as the default
}


def _copies(nbytes: int) -> int:
    return max(2, min(MAX_COPIES, math.ceil(L2_FLUSH_BYTES / nbytes)))


def _time_per_call(fn, copies: int) -> float:
    """Median seconds of one call: a CUDA graph calls fn(i) for every copy i; its replays are timed."""
    import triton

    for i in range(copies):  # compile and warm up outside the capture (each copy: settled_weights)
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            fn(i)
    ms = triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
    return ms * 1e-3 / copies


def _candidate_call(op, ctx, preference, weights):
    """(call(x, i), kernel name) of the candidate the selector picks, repacked per copy when it needs it."""
    cand = select(op, ctx, preference)
    if cand.prepare is None:
        return (lambda x, i: cand.fn(x, *weights[i], None)), cand.name
    packed = [cand.prepare(ctx, *w) for w in weights]
    return (lambda x, i: cand.fn(x, packed[i], None)), cand.name


def int_group_weights(cols, out, bits, dev, whole_zeros=False) -> tuple[tuple, int]:
    """Random codes and qparams in the group-wise format (group 128, asymmetric; fractional zeros as rtn's default
    and hqq's, or whole numbers as gptq's and awq's): ((qweight, scale, zero), packed bytes)."""
    layout = IntGroupLayout(out, cols, bits, 128, symmetric=False)
    codes = torch.randint(0, 2**bits, (out, cols), dtype=torch.uint8, device=dev)  # (out, in)
    qweight = pack_bits(codes, bits)  # (out, words)
    scale = (torch.rand(out, layout.n_groups, device=dev) * 0.02 + 0.001).half()  # (out, n_groups)
    zero = (torch.rand(out, layout.n_groups, device=dev) * (2**bits - 1)).half()
    zero = zero.round() if whole_zeros else zero
    return (qweight, scale, zero), layout.nbytes()


def weight_copies(args: tuple, nbytes: int) -> list[tuple]:
    """Enough copies of a weight's arguments (tensors cloned, settings shared) that they do not fit in L2."""
    return [tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args) for _ in range(_copies(nbytes))]


def _int_group_variant(cols, out, bits, rows, dev, preference="auto", gemv_config=None, order="layer",
                       whole_zeros=False):
    """int_group_weights through the selector, or straight to the matrix-vector kernel with `gemv_config`
    (launch settings other than its defaults); the words in the order a CUDA layer holds them (order "layer":
    int_linear.cuda_tile_chunk) or in row order ("rows")."""
    (qweight, scale, zero), nbytes = int_group_weights(cols, out, bits, dev, whole_zeros)
    chunk = int_linear.cuda_tile_chunk(IntGroupLayout(out, cols, bits, 128, False)) if order == "layer" else 0
    ws = weight_copies((to_tiles(qweight, chunk) if chunk else qweight, scale, zero, bits, 128), nbytes)
    if gemv_config is not None:
        args = [(q, s, z, None, bits, 128) for q, s, z, _, _ in ws]  # no bias
        return _gemv_call(args, gemv_config), len(ws), nbytes, "triton_mv"
    ctx = CallContext(dev, rows, cols, out, torch.bfloat16, bits, 128, tile_chunk=chunk)
    call, name = _candidate_call("int_group_linear", ctx, preference, ws)
    return call, len(ws), nbytes, name


def _gemv_call(args, config, signed8=False):
    """call(x, i) of triton_gemv.int_group_gemv over weight copy i (its arguments after x) with `config`."""
    from lowbit.kernels.triton_gemv import int_group_gemv

    return lambda x, i: int_group_gemv(x, *args[i], signed8=signed8, config=config)


def _int8_variant(cols, out, rows, dev, gemv_config=None, preference="auto", order="layer"):
    """int8 weight-only (one scale a row) through the selector, or straight to the matrix-vector kernel with
    `gemv_config`; the codes in the order a CUDA layer holds them (order "layer": int8_linear.cuda_tile_chunk) or in
    row order ("rows")."""
    q, s = int8_absmax(torch.randn(out, cols, device=dev))  # (out, in) int8, (out, 1)
    chunk = int8_linear.cuda_tile_chunk(Int8RowLayout(out, cols)) if order == "layer" else 0
    q = to_tiles(q, 4 * chunk) if chunk else q  # chunks of 4 * chunk bytes
    n, nbytes = _copies(q.numel() + 2 * out), q.numel() + 2 * out
    ws = [(q.clone(), s.clone()) for _ in range(n)]
    if gemv_config is not None:  # as the int8_weight_mm op calls it: int32 words of four codes
        args = [(q.view(torch.int32), s, None, None, 8, cols) for q, s in ws]
        return _gemv_call(args, gemv_config, signed8=True), n, nbytes, "triton_mv"
    ctx = CallContext(dev, rows, cols, out, torch.bfloat16, 8, tile_chunk=chunk)
    call, name = _candidate_call("int8_weight_linear", ctx, preference, ws)
    return call, n, nbytes, name


def _w8a8_variant(cols, out, rows, dev):
    q, s = int8_absmax(torch.randn(out, cols, device=dev))
    n = _copies(q.numel() + 2 * out)
    ws = [(q.clone(), s.clone()) for _ in range(n)]
    kernel = select("w8a8_linear", CallContext(dev, rows, cols, out, torch.int8), "auto")
    x_scale = torch.tensor([0.02], device=dev)

    def call(x, i):
        x_q = torch.round(x.float() / x_scale).clamp(-127, 127).to(torch.int8)  # activation rounding included
        return kernel.fn(x_q, x_scale, ws[i][0], ws[i][1]).to(x.dtype)

    return call, n, q.numel() + 2 * out, kernel.name


def fourbit_weights(cols, out, dev, chunk: int = 0) -> tuple[tuple, int]:
    """NF4, blocksize 64, double-quantized absmax (QLoRA's setting), random codes: (the op's weight and setting
    arguments, packed bytes); the codes in row order, or with `chunk` in tile order (formats.nf4)."""
    layout = FourBitLayout(out, cols, "nf4", 64, True, chunk)
    qweight = torch.randint(0, 256, layout.buffer_shapes()["qweight"][0], dtype=torch.uint8, device=dev)
    absmax_q, absmax_scale, absmax_mean = double_quantize(torch.rand(layout.n_blocks, device=dev) * 0.1 + 0.01)
    table = code_table("nf4", dev)  # (16,)
    return (qweight, absmax_q, absmax_scale, absmax_mean, table, 64, out), layout.nbytes()


def aqlm_weights(cols, out, dev, m, nbits) -> tuple[tuple, int]:
    """AQLM with M codebooks of 2**nbits codewords of 8 inputs, random codes: ((codes, codebooks, scales), bytes)."""
    layout = AQLMLayout(out, cols, m, nbits, 8)
    codes = torch.randint(0, 2**nbits, (out, layout.n_groups, m), device=dev)  # (out, G, M)
    codes = (codes - (2**16 if nbits > 8 else 0) * (codes >= 2**15)).to(layout.code_dtype)
    codebooks = (torch.randn(m, 2**nbits, 8, device=dev) * 0.01).half()  # (M, K, g)
    scales = torch.rand(out, 1, device=dev).half()  # (out, 1)
    return (codes, codebooks, scales), layout.nbytes()


def _codebook_variant(op, weights, ctx, preference="auto"):
    """A codebook format (fourbit_linear or aqlm_linear) through the selector, over enough weight copies."""
    args, nbytes = weights
    ws = weight_copies(args, nbytes)
    call, name = _candidate_call(op, ctx, preference, ws)
    return call, len(ws), nbytes, name


def _nf4(cols, out, rows, dev, preference="auto", order="layer"):
    """NF4 through the selector, the codes in the order a CUDA layer holds them (order "layer":
    fourbit_linear.cuda_tile_chunk) or in row order ("rows")."""
    chunk = fourbit_linear.cuda_tile_chunk(FourBitLayout(out, cols, "nf4", 64, True)) if order == "layer" else 0
    ctx = CallContext(dev, rows, cols, out, torch.bfloat16, 4, 64, tile_chunk=chunk)
    return _codebook_variant("fourbit_linear", fourbit_weights(cols, out, dev, chunk), ctx, preference)


def _nf4_mv(cols, out, dev, mv_config):
    """NF4 straight to triton_fourbit's matrix-vector kernel with `mv_config` (launch settings other than its
    defaults), over enough weight copies."""
    from lowbit.kernels.triton_fourbit import fourbit_matmul

    args, nbytes = fourbit_weights(cols, out, dev)
    ws = weight_copies(args, nbytes)
    return (lambda x, i: fourbit_matmul(x, *ws[i], None, "mv", config=mv_config)), len(ws), nbytes, "triton_mv"


def _aqlm(cols, out, rows, dev, m, nbits, preference="auto"):
    ctx = CallContext(dev, rows, cols, out, torch.bfloat16, nbits, 8, codebooks=m)
    return _codebook_variant("aqlm_linear", aqlm_weights(cols, out, dev, m, nbits), ctx, preference)


def _bf16_variant(cols, out, dev):
    w = torch.randn(out, cols, device=dev, dtype=torch.bfloat16)
    n = _copies(w.numel() * 2)
    ws = [w.clone() for _ in range(n)]
    return (lambda x, i: F.linear(x, ws[i])), n, w.numel() * 2, "cublas"


def _torch_int4_variant(cols, out, dev):
    """torch.ops.aten._weight_int4pack_mm (tinygemm; what torchao and HQQ use), group 128."""
    codes = torch.randint(0, 16, (out, cols), dtype=torch.int32, device=dev)
    packed = torch.ops.aten._convert_weight_to_int4pack((codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8), 8)
    sz = torch.rand(cols // 128, out, 2, device=dev).to(torch.bfloat16)  # (in / 128, out, [scale, zero])
    nbytes = out * cols // 2 + sz.numel() * 2
    n = _copies(nbytes)
    ws = [(packed.clone(), sz.clone()) for _ in range(n)]
    return (lambda x, i: torch.ops.aten._weight_int4pack_mm(x, ws[i][0], 128, ws[i][1])), n, nbytes, "tinygemm"


def variants(cols, out, rows, dev):
    """(label, builder) for every variant of one cell; builders return (call, copies, weight bytes, kernel)."""
    yield from _int_variants(cols, out, rows, dev)
    yield "nf4_dq_b64", lambda: _nf4(cols, out, rows, dev)
    yield "nf4_dq_b64_mma", lambda: _nf4(cols, out, rows, dev, "cuda_mma")  # cuda_mma's byte-pair table by name
    yield "nf4_dq_b64_triton", lambda: _nf4(cols, out, rows, dev, "triton")  # the Triton kernels by name
    yield "nf4_dq_b64_rows", lambda: _nf4(cols, out, rows, dev, order="rows")  # auto, the codes in row order
    yield "aqlm_2x8", lambda: _aqlm(cols, out, rows, dev, 2, 8)
    yield "aqlm_1x16", lambda: _aqlm(cols, out, rows, dev, 1, 16)
    yield "aqlm_2x8_mma", lambda: _aqlm(cols, out, rows, dev, 2, 8, "cuda_mma")  # cuda_aqlm by name
    yield "aqlm_1x16_mma", lambda: _aqlm(cols, out, rows, dev, 1, 16, "cuda_mma")
    yield "aqlm_1x16_gather", lambda: _aqlm(cols, out, rows, dev, 1, 16, "triton_gather")
    yield "aqlm_2x8_lut", lambda: _aqlm(cols, out, rows, dev, 2, 8, "triton_lut")
    if rows == 1:  # the kernels auto does not take at one row
        yield "nf4_dq_b64_tc", lambda: _nf4(cols, out, rows, dev, "triton_tc")
        for name, mv_config in NF4_MV_CONFIGS.items():
            yield f"nf4_dq_b64_{name}", lambda c=mv_config: _nf4_mv(cols, out, dev, c)
        yield "aqlm_2x8_gather", lambda: _aqlm(cols, out, rows, dev, 2, 8, "triton_gather")
    else:  # the matrix-vector kernels above their row limit, against the reference path (dequantize + cuBLAS)
        yield "nf4_dq_b64_ref", lambda: _nf4(cols, out, rows, dev, "reference")
        yield "nf4_dq_b64_dqc", lambda: _nf4(cols, out, rows, dev, "dequant_cublas")  # triton_dequant
        yield "nf4_dq_b64_mv", lambda: _nf4(cols, out, rows, dev, "triton_mv")
        yield "aqlm_2x8_ref", lambda: _aqlm(cols, out, rows, dev, 2, 8, "reference")
        yield "aqlm_1x16_ref", lambda: _aqlm(cols, out, rows, dev, 1, 16, "reference")


def _int_variants(cols, out, rows, dev):
    """The dense baselines and the integer formats."""
    yield "bf16", lambda: _bf16_variant(cols, out, dev)
    yield "torch_int4_g128", lambda: _torch_int4_variant(cols, out, dev)
    yield "int4_g128", lambda: _int_group_variant(cols, out, 4, rows, dev)
    yield "int4_g128_wz", lambda: _int_group_variant(cols, out, 4, rows, dev, whole_zeros=True)  # gptq's, awq's zeros
    yield "int4_g128_mma", lambda: _int_group_variant(cols, out, 4, rows, dev, "cuda_mma")  # cuda_mma by name
    yield "int4_g128_triton", lambda: _int_group_variant(cols, out, 4, rows, dev, "triton")  # the Triton kernels
    yield "int4_g128_rows", lambda: _int_group_variant(cols, out, 4, rows, dev, order="rows")  # auto, row order
    yield "int4_g128_triton_rows", lambda: _int_group_variant(cols, out, 4, rows, dev, "triton", order="rows")
    if rows == 1:  # the selector takes the matrix-vector kernel there: the tensor-core one for comparison
        yield "int4_g128_tc", lambda: _int_group_variant(cols, out, 4, rows, dev, "triton_tc")
        yield "int3_g128_tc", lambda: _int_group_variant(cols, out, 3, rows, dev, "triton_tc")
        # the matrix-vector kernel with two tiles loaded ahead (its default loads one)
        yield "int4_g128_pf2", lambda: _int_group_variant(cols, out, 4, rows, dev, gemv_config=TWO_TILES_AHEAD)
        yield "int8_weight_only_pf2", lambda: _int8_variant(cols, out, rows, dev, gemv_config=TWO_TILES_AHEAD)
    yield "int3_g128", lambda: _int_group_variant(cols, out, 3, rows, dev)
    yield "int3_g128_wz", lambda: _int_group_variant(cols, out, 3, rows, dev, whole_zeros=True)
    yield "int3_g128_mma", lambda: _int_group_variant(cols, out, 3, rows, dev, "cuda_mma")  # PLAN3, by name
    yield "int3_g128_triton", lambda: _int_group_variant(cols, out, 3, rows, dev, "triton")  # the Triton kernels
    yield "int3_g128_rows", lambda: _int_group_variant(cols, out, 3, rows, dev, order="rows")
    yield "int2_g128", lambda: _int_group_variant(cols, out, 2, rows, dev)
    yield "int2_g128_mma", lambda: _int_group_variant(cols, out, 2, rows, dev, "cuda_mma")
    yield "int2_g128_triton", lambda: _int_group_variant(cols, out, 2, rows, dev, "triton")
    yield "int2_g128_rows", lambda: _int_group_variant(cols, out, 2, rows, dev, order="rows")
    yield "int8_weight_only", lambda: _int8_variant(cols, out, rows, dev)
    yield "int8_weight_only_mma", lambda: _int8_variant(cols, out, rows, dev, preference="cuda_mma")
    yield "int8_weight_only_triton", lambda: _int8_variant(cols, out, rows, dev, preference="triton")
    yield "int8_weight_only_rows", lambda: _int8_variant(cols, out, rows, dev, order="rows")
    yield "int8_weight_only_mma_rows", lambda: _int8_variant(cols, out, rows, dev, preference="cuda_mma", order="rows")
    yield "int8_weight_only_triton_rows", lambda: _int8_variant(cols, out, rows, dev, preference="triton", order="rows")
    yield "w8a8", lambda: _w8a8_variant(cols, out, rows, dev)
    if rows > 1:  # the weights dequantized by Triton, then cuBLAS (triton_dequant)
        for bits in (4, 3, 2):
            yield f"int{bits}_g128_dq", lambda b=bits: _int_group_variant(cols, out, b, rows, dev, "dequant_cublas")
        yield "int8_weight_only_dq", lambda: _int8_variant(cols, out, rows, dev, preference="dequant_cublas")


def bench_cell(cols, out, rows, dev, only: set[str] | None = None) -> list[dict]:
    x = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)  # (rows, in)
    results = []
    for label, build in variants(cols, out, rows, dev):
        if not only or label in only | {"bf16", "torch_int4_g128"}:  # the baselines always run
            results.append(_measure(label, build, x, out))
        if only and label + SERIAL in only:
            with nvrtc.serialized_launches():
                results.append(_measure(label + SERIAL, build, x, out))
        torch.cuda.empty_cache()  # the variant's weight copies and graph went with _measure's frame
    base = {r["variant"]: r.get("us") for r in results}
    for r in results:
        if "us" in r:
            r["x_bf16"] = base["bf16"] / r["us"] if base.get("bf16") else None
            r["x_torch_int4"] = base["torch_int4_g128"] / r["us"] if base.get("torch_int4_g128") else None
    return results


def _measure(label: str, build, x: torch.Tensor, out: int) -> dict:
    """One variant's record in a cell: time, bytes moved a second, TFLOP/s (or the error that stopped it)."""
    rows, cols = x.shape
    record = {"shape": f"{cols}x{out}", "in": cols, "out": out, "rows": rows, "variant": label}
    try:
        call, copies, wbytes, kernel = build()
        seconds = _time_per_call(lambda i: call(x, i), copies)
    except Exception as err:  # a variant that cannot run this cell is reported, never skipped silently
        return record | {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    moved = wbytes + x.numel() * 2 + rows * out * 2
    record |= {"kernel": kernel, "copies": copies, "us": seconds * 1e6, "weight_bytes": wbytes,
               "GBps": moved / seconds / 1e9, "TFLOPs": 2 * rows * cols * out / seconds / 1e12}
    return record


def copy_bandwidth(dev) -> float:
    """Device-to-device copy, bytes read + written per second (the ceiling for decode-sized products)."""
    import triton

    src = torch.empty(2**30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def cuda_device() -> torch.device | None:
    """The CUDA device, seeded, or None (with a message) where there is none."""
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return None
    torch.manual_seed(0)
    return torch.device("cuda")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=ROWS)
    p.add_argument("--shapes", nargs="+", default=[f"{a}x{b}" for a, b in SHAPES], help="INxOUT")
    p.add_argument("--out", type=Path, help="JSON file for every record")
    p.add_argument("--variants", nargs="+", help="only these variants (besides bf16 and torch_int4_g128)")
    args = p.parse_args(argv)
    dev = cuda_device()
    if dev is None:
        return 2
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "copy_GBps": copy_bandwidth(dev)}
    print(json.dumps(meta), flush=True)
    records = []
    for shape in args.shapes:
        cols, out = map(int, shape.split("x"))
        for rows in args.rows:
            cell = bench_cell(cols, out, rows, dev, set(args.variants or ()))
            records += cell
            for r in cell:
                print(json.dumps(r), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    print_table(records)
    return 0


def print_table(records: list[dict]) -> None:
    print(f"{'shape':>12} {'rows':>4} {'variant':>18} {'kernel':>14} {'us':>9} {'GB/s':>7} {'TFLOP/s':>8} "
          f"{'x bf16':>7} {'x int4pk':>8}")
    for r in records:
        if "error" in r:
            print(f"{r['shape']:>12} {r['rows']:>4} {r['variant']:>18}  ERROR {r['error']}")
            continue
        ti4 = f"{r['x_torch_int4']:8.2f}" if r.get("x_torch_int4") else f"{'-':>8}"
        print(f"{r['shape']:>12} {r['rows']:>4} {r['variant']:>18} {r['kernel']:>14} {r['us']:9.1f} "
              f"{r['GBps']:7.0f} {r['TFLOPs']:8.1f} {r['x_bf16']:7.2f} {ti4}")


if __name__ == "__main__":
    sys.exit(main())
