"""Tile-shape sweep of the group-wise integer Triton kernels (int4 g128 unless --bits), on the GPU.

    PYTHONPATH=src python benchmarks/kernel_sweep.py --path mv --rows 1 --out sweep.json

For each (shape, rows) cell it times bf16 cuBLAS, torch's int4 kernel and every candidate configuration
of `_mm_tc` (--path tc), of the matrix-vector `_gemv` (--path mv; --bits 8 --signed8 is the int8
weight-only layout), of the CUDA tensor-core kernels (--path mma: cuda_mma; --nf4 its NF4 path; --aqlm
2x8|1x16 cuda_aqlm) or of the dequantization kernel ahead of cuBLAS (--path dq) side by side
(benchmarks/kernel_bench.py's timing: CUDA graph over weight copies that overflow L2, do_bench median), checks each
configuration once against an fp32 reference, and prints the best per cell. The tuned table in kernels/triton_int.py
(tc_config) comes from its output.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from kernel_bench import (_bf16_variant, _time_per_call, _torch_int4_variant, aqlm_weights, copy_bandwidth,
                          fourbit_weights, int_group_weights, weight_copies)
from lowbit.kernels import reference
from lowbit.kernels.cuda_aqlm import aqlm_mma
from lowbit.kernels.cuda_mma import FRAGMENT_ROWS, fourbit_mma, mma_matmul, tile_words
from lowbit.kernels.reference import int_group_linear
from lowbit.kernels.triton_fourbit import fourbit_matmul
from lowbit.kernels.triton_dequant import dequant_matmul
from lowbit.kernels.triton_gemv import int_group_gemv
from lowbit.kernels.triton_int import int_group_matmul, tc_config

SHAPES = ["4096x14336", "14336x4096", "4096x4096", "4096x1024"]


def tc_space(rows: int):
    """Candidate _mm_tc configurations, likeliest first (a cell's time budget may cut the tail)."""
    if rows <= 16:
        grid = [(64, 128, 3, 4, None), (64, 128, 4, 8, None), (64, 128, 2, 4, None), (64, 128, 3, 2, None),
                (64, 128, 3, 4, 1), (64, 64, 3, 4, None), (128, 128, 3, 4, None), (64, 128, 5, 4, None)]
        for bn, bk, st, waves, split in grid:
            cfg = {"BM": 16, "BN": bn, "BK": bk, "num_warps": 4, "num_stages": st, "waves": waves, "DEQUANT": False}
            yield cfg if split is None else cfg | {"SPLIT_K": split}
        yield {"BM": 16, "BN": 64, "BK": 128, "num_warps": 4, "num_stages": 3, "waves": 4, "DEQUANT": False,
               "ASM": False}
        return
    bm = 32 if rows <= 32 else 64 if rows <= 64 else 128
    tiles = [(128, 128, 8, 3), (64, 128, 4, 3), (128, 128, 8, 4), (128, 64, 8, 3)]
    for deq in ([True, False] if rows > 64 else [False, True]):
        for bn, bk, nw, st in tiles:
            cfg = {"BM": bm, "BN": bn, "BK": bk, "num_warps": nw, "num_stages": st, "waves": 1, "DEQUANT": deq}
            yield cfg  # _mm_bytes (2, 4 and 8 bits)
            yield cfg | {"BYTES": False}  # _mm_tc: one product a tile


def dq_space(rows: int):
    """Tiles of the dequantization kernel ahead of cuBLAS (triton_dequant._dequant_int): its default, then
    (outputs, inputs, warps) a program."""
    yield {}
    for bn, bk, warps in [(128, 128, 4), (128, 128, 8), (64, 256, 4), (128, 256, 8), (32, 128, 2), (32, 256, 4),
                          (256, 128, 8), (64, 128, 2), (16, 512, 4)]:
        yield {"BN": bn, "BK": bk, "num_warps": warps}


def nf4_tc_space(rows: int):
    """_fourbit_tc tiles (NF4/FP4, 128 inputs a K step): its default (fourbit_tc_config), the same with the table
    read by byte permutes (LOOKUP "prmt"), then (BM, BN, warps, stages)."""
    yield {}
    yield {"LOOKUP": "prmt"}
    yield {"LOOKUP": "prmt", "BM": min(128, max(16, rows)), "BN": 64, "num_warps": 4}
    for bm, bn, warps, stages in [(128, 128, 8, 2), (128, 64, 4, 1), (64, 128, 8, 1), (64, 64, 4, 1), (64, 64, 4, 3),
                                  (128, 128, 4, 1), (32, 128, 4, 1), (16, 64, 4, 1)]:
        yield {"BM": min(bm, max(16, rows)), "BN": bn, "num_warps": warps, "num_stages": stages}


def mv_space(rows: int):
    """Candidate _gemv configurations, likeliest first (a cell's time budget may cut the tail): the register
    prefetch that was the default (STAGES 0, one tile ahead; BN 128 for int4, 64 for int8), then
    (BN, num_warps, waves, STAGES) through the software pipeliner, two tiles ahead in registers, no LOP3 asm."""
    base = {"BK": 128, "num_stages": 1}
    yield base | {"BN": 128, "num_warps": 4, "waves": 4, "STAGES": 0, "PREFETCH": 1}
    yield base | {"BN": 64, "num_warps": 4, "waves": 4, "STAGES": 0, "PREFETCH": 1}
    for bn, nw, waves, stages in [(128, 4, 4, 4), (128, 4, 4, 3), (128, 4, 8, 4), (64, 4, 4, 4), (64, 4, 8, 4),
                                  (128, 4, 4, 6), (256, 8, 4, 4), (64, 2, 8, 4), (128, 4, 2, 4)]:
        yield base | {"BN": bn, "num_warps": nw, "waves": waves, "STAGES": stages}
    yield base | {"BN": 128, "num_warps": 4, "waves": 4, "STAGES": 0, "PREFETCH": 2}
    yield base | {"BN": 128, "num_warps": 4, "waves": 4, "STAGES": 4, "ASM": False}


def mma_space(rows: int):
    """Candidate launch shapes of the CUDA kernel (cuda_mma.cu), likeliest first: its default (choose_config),
    then (K inputs per warp, warps per block, output tiles per block, tiles loaded ahead, blocks a multiprocessor
    must hold; 14 warps split K = 14336 into equal blocks) with the activation fragments in shared memory
    (SMEM_X: 51-111 registers a thread at one row fragment instead of 128-222, so 2-5 blocks share a
    multiprocessor), then the kern11 register shapes."""
    yield {}
    frags = 1 if rows <= FRAGMENT_ROWS else 2
    smem = [(512, 8, 1, 1, 3), (256, 16, 2, 0, None), (256, 8, 4, 0, None), (256, 8, 2, 1, None), (512, 8, 2, 0, None),
            (256, 8, 8, 0, None), (256, 8, 4, 1, None), (256, 8, 4, 1, 3), (256, 8, 1, 1, None),
            (512, 8, 4, 0, None), (256, 16, 4, 0, None), (512, 4, 1, 1, None), (256, 4, 4, 0, None),
            (1024, 4, 1, 1, None), (512, 8, 1, 0, None), (256, 14, 4, 0, None), (512, 14, 4, 0, None)]
    for ks, warps, tiles, depth, blocks in smem:
        cfg = {"KS": ks, "WARPS": warps, "TILES": tiles, "DEPTH": depth, "SMEM_X": 1}
        yield cfg | ({"MIN_BLOCKS": blocks} if blocks else {})
    for ks, warps, tiles, depth in [(512, 8, 4, 1), (256, 8, 4, 1), (512, 8, 1, 1), (1024, 4, 1, 1), (256, 8, 2, 1)]:
        if ks * frags <= 1024:
            yield {"KS": ks, "WARPS": warps, "TILES": tiles, "DEPTH": depth, "SMEM_X": 0}


def aqlm_space(rows: int):
    """Launch shapes of the CUDA AQLM kernel (cuda_aqlm.cu) for 8-bit codebooks: its default, then (warps, tiles of
    16 outputs)."""
    yield {}
    for warps, tiles in [(8, 1), (8, 2), (8, 4), (4, 4), (4, 2), (16, 1), (16, 2), (4, 8)]:
        yield {"WARPS": warps, "TILES": tiles}


def aqlm16_space(rows: int):
    """Launch shapes of the CUDA AQLM kernel for one 16-bit codebook: its default, codewords from L2 (BUCKETS 1),
    then the codes split in 5 or 6 ranges, one a block's shared memory (lowbit_aqlm_split)."""
    yield {}
    for warps, tiles in [(16, 1), (4, 2)]:
        yield {"WARPS": warps, "TILES": tiles, "BUCKETS": 1}
    for buckets, warps, tiles in [(5, 16, 2), (6, 16, 2), (5, 8, 4), (6, 8, 4), (5, 8, 2)]:
        yield {"WARPS": warps, "TILES": tiles, "BUCKETS": buckets}


def _int8_weights(cols, out, dev):
    """int8 weight-only layout for _gemv: (out, in / 4) int32 words of int8 codes, scale (out, 1), no zero."""
    q = torch.randint(-127, 128, (out, cols), dtype=torch.int8, device=dev)  # (out, in)
    scale = (torch.rand(out, 1, device=dev) * 0.02 + 0.001).half()
    return (q.view(torch.int32), scale, None), q.numel() + 2 * out


def format_label(bits: int, signed8: bool, nf4: bool, aqlm: str | None) -> int | str:
    """The format a sweep times, as its records name it: the int_group bit width, "int8wo", "nf4", "aqlm2x8" or
    "aqlm1x16"."""
    return f"aqlm{aqlm}" if aqlm else "nf4" if nf4 else "int8wo" if signed8 else bits


def _problem(x, cols, out, fmt, dev, path, int_zeros=False):
    """(weight arguments, packed bytes, fp32 reference output, run(x, weights, config)) of one format (fmt, as
    format_label names it): int_group codes (g128; zeros rounded to whole numbers with int_zeros, as rtn, gptq and
    awq store them), int8 weight-only, NF4 with double-quantized absmax in blocks of 64 (mma only) or AQLM 2x8 or
    1x16 (the CUDA AQLM kernel)."""
    if fmt in ("aqlm2x8", "aqlm1x16"):
        args, nbytes = aqlm_weights(cols, out, dev, *((2, 8) if fmt == "aqlm2x8" else (1, 16)))
        ref = reference.aqlm_linear(x.float(), *args, None)
        return args, nbytes, ref, lambda x, w, cfg: aqlm_mma(x, *w, None, config=cfg)
    if fmt == "nf4":
        args, nbytes = fourbit_weights(cols, out, dev)
        ref = reference.fourbit_linear(x.float(), *args, None)
        if path == "tc":
            return args, nbytes, ref, lambda x, w, cfg: fourbit_matmul(x, *w, None, "tc", config=cfg)
        return args, nbytes, ref, lambda x, w, cfg: fourbit_mma(x, *w, None, config=cfg)
    signed8 = fmt == "int8wo"
    bits = 8 if signed8 else fmt
    weights = _int8_weights(cols, out, dev) if signed8 else int_group_weights(cols, out, bits, dev, int_zeros)
    (qweight, scale, zero), nbytes = weights
    group = cols if signed8 else 128
    if signed8:
        ref = x.float() @ (qweight.view(torch.int8).float() * scale.float()).t()  # (rows, out) fp32
    else:
        ref = int_group_linear(x.float(), qweight, scale, zero, bits, 128, None)  # (rows, out) fp32
    kernel = {"mv": int_group_gemv, "tc": int_group_matmul, "mma": mma_matmul, "dq": dequant_matmul}[path]
    return (qweight, scale, zero), nbytes, ref, lambda x, w, cfg: kernel(x, *w, None, bits, group, signed8=signed8,
                                                                          config=cfg)


def _tiled(qweight: torch.Tensor, fmt, cols: int, out: int) -> torch.Tensor:
    """A format's words in tile order (tile_words: what TILED launches read), in the tensor type its call takes."""
    if fmt == "nf4":  # (out * in / 2,) bytes, eight codes a word; absmax blocks of 64
        return tile_words(qweight.view(torch.int32).view(out, cols // 8), 4, 64).view(torch.uint8)
    return tile_words(qweight, *((8, cols) if fmt == "int8wo" else (fmt, 128)))


def sweep_cell(cols, out, rows, fmt, dev, budget_s, path="tc", configs=None, int_zeros=False) -> list[dict]:
    x = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)  # (rows, in)
    args, nbytes, ref, run = _problem(x, cols, out, fmt, dev, path, int_zeros)
    ws = weight_copies(args, nbytes)
    out_rows = []
    for label, build in (("bf16", lambda: _bf16_variant(cols, out, dev)), ("torch_int4", lambda: _torch_int4_variant(cols, out, dev))):
        call, copies, _, _ = build()
        out_rows.append({"variant": label, "us": _time_per_call(lambda i: call(x, i), copies) * 1e6})
        del call
    start = time.time()
    spaces = {"aqlm2x8": aqlm_space, "aqlm1x16": aqlm16_space} | ({"nf4": nf4_tc_space} if path == "tc" else {})
    space_of = spaces.get(fmt) or {"mv": mv_space, "tc": tc_space, "mma": mma_space, "dq": dq_space}[path]
    tiled = {}  # TILED launches read the words in tile_words' order: copies of ws made once, outside the timing
    weights_for = (lambda cfg: ws if not cfg.get("TILED") else tiled.setdefault("ws", [
        (_tiled(w[0], fmt, cols, out), *w[1:]) for w in ws]))
    for space in (configs or space_of(rows),):
        for cfg in space:
            if time.time() - start > budget_s:
                out_rows.append({"variant": "budget", "error": "cell time budget spent, rest skipped"})
                break
            rec = {"variant": path, "config": dict(cfg)}
            try:
                cws = weights_for(cfg)
                y = run(x, cws[0], cfg)
                rec["rel_err"] = ((y.float() - ref).norm() / ref.norm()).item()
                rec["us"] = _time_per_call(lambda i: run(x, cws[i], cfg), len(cws)) * 1e6
            except Exception as err:  # reported, never skipped silently
                rec["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            out_rows.append(rec)
    bf16 = out_rows[0]["us"]
    for r in out_rows:
        r.update(shape=f"{cols}x{out}", rows=rows, bits=fmt)
        if "us" in r:
            r["x_bf16"] = bf16 / r["us"]
            r["GBps"] = (nbytes + x.numel() * 2 + rows * out * 2) / r["us"] / 1e3
    return out_rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=SHAPES)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--signed8", action="store_true", help="int8 weight-only layout (implies --bits 8)")
    p.add_argument("--path", choices=["tc", "mv", "mma", "dq"], default="tc")
    p.add_argument("--nf4", action="store_true", help="NF4, double-quantized absmax in blocks of 64 (--path mma or tc)")
    p.add_argument("--aqlm", choices=["2x8", "1x16"], help="AQLM on the CUDA AQLM kernel (--path mma)")
    p.add_argument("--int-zeros", action="store_true", help="whole-number zeros (SUB16 and W16 need them)")
    p.add_argument("--cell-budget", type=float, default=40.0, help="seconds per cell")
    p.add_argument("--configs", type=json.loads, help="a JSON list of configurations to time instead of the space")
    p.add_argument("--auto-vs", type=json.loads, help="a JSON object: time each cell's tuned tile (tc_config) and the "
                   "same with these keys changed, in turn, twice each (--path tc)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.auto_vs is not None and (args.path != "tc" or args.nf4):
        p.error("--auto-vs times the integer tensor-core kernel's tuned tile (--path tc)")
    if (args.nf4 and args.path == "mv") or (args.aqlm and args.path != "mma"):
        p.error("--nf4 sweeps cuda_mma (--path mma) or _fourbit_tc (--path tc), --aqlm the CUDA kernel (--path mma)")
    fmt = format_label(args.bits, args.signed8, args.nf4, args.aqlm)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_GBps": copy_bandwidth(dev)}
    print(json.dumps(meta), flush=True)
    records = []
    for shape, rows in itertools.product(args.shapes, args.rows):
        cols, out = map(int, shape.split("x"))
        configs = args.configs
        if args.auto_vs is not None:
            auto = tc_config(rows, out, cols, 8 if args.signed8 else args.bits, args.signed8)
            configs = [auto, auto | args.auto_vs] * 2
        cell = sweep_cell(cols, out, rows, fmt, dev, args.cell_budget, args.path, configs, args.int_zeros)
        records += cell
        for r in cell:
            print(json.dumps(r), flush=True)
        ok = [r for r in cell if "us" in r and r["variant"] == args.path and r["rel_err"] < 1e-2]
        best = min(ok, key=lambda r: r["us"], default=None)
        if best:
            print(f"BEST {shape} rows={rows} bits={cell[0]['bits']} {args.path} {best['us']:.1f}us "
                  f"x{best['x_bf16']:.2f} {best['GBps']:.0f}GB/s {best['config']}", flush=True)
        bad = [r for r in cell if r.get("rel_err", 0) >= 1e-2]
        print(f"CELL {shape} rows={rows} bf16 {cell[0]['us']:.1f}us torch_int4 x{cell[1]['x_bf16']:.2f} "
              f"bad={len(bad)} errors={sum('error' in r for r in cell)}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
