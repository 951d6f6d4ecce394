"""The kernel selector: one place that decides which implementation runs an op.

Each op has an ordered list of candidates; a candidate's `unavailable(ctx)` returns None when it can run
the call or a short reason when it cannot. `select` returns the first candidate that can run, so the
list always ends with the reference implementation, which runs everywhere; `explain` lists every
candidate with the reason it was skipped.

A candidate without `prepare` is called with the module's canonical buffers, `fn(x, *weights, bias)`.
A candidate with `prepare` repacks those buffers once, `prepare(ctx, *weights) -> packed` (the module
caches the result), and is called as `fn(x, packed, bias)`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from lowbit.errors import LowbitError
from lowbit.kernels import cpu, cuda_aqlm, cuda_mma, nvrtc, reference, triton_ops

log = logging.getLogger(__name__)

PREFERENCES = ("auto", "triton", "reference")  # or a kernel's full name, e.g. triton_tc


@dataclass(frozen=True)
class CallContext:
    device: torch.device
    rows: int  # activation rows in the call (batch * sequence)
    in_features: int
    out_features: int
    dtype: torch.dtype | None = None  # activation dtype
    bits: int | None = None  # of the weight codes, for formats with a bit width
    group_size: int | None = None  # resolved group size of group-wise formats
    codebooks: int | None = None  # AQLM's number of codebooks
    tile_chunk: int = 0  # words of a tile chunk where the packed words are in tile order (formats.word_tiles)


def always(_ctx: CallContext) -> str | None:
    return None


@dataclass(frozen=True)
class Candidate:
    name: str
    fn: Callable
    unavailable: Callable[[CallContext], str | None]  # cannot run the call
    unsuited: Callable[[CallContext], str | None] = always  # can, but another candidate is faster
    prepare: Callable | None = None  # one-time repacking of a layer's buffers into the kernel's layout


def _int_mm_unavailable(ctx: CallContext) -> str | None:
    if not hasattr(torch, "_int_mm"):
        return "this torch has no _int_mm"
    if ctx.device.type == "cuda" and (ctx.rows <= 16 or ctx.in_features % 8 or ctx.out_features % 8):
        return "CUDA _int_mm needs more than 16 rows and sizes that are multiples of 8"
    if ctx.device.type not in ("cpu", "cuda"):
        return f"_int_mm does not run on {ctx.device.type}"
    return None


def _int32_index(ctx: CallContext) -> str | None:
    if ctx.out_features * ctx.in_features >= 2**31:
        return "2**31 weights or more: the Triton kernels index with int32"
    return None


def _triton_int_group(ctx: CallContext) -> str | None:
    return _int32_index(ctx) or triton_ops.int_group_unavailable(ctx.device, ctx.dtype, ctx.bits)


def _triton_mv_int_group(ctx: CallContext) -> str | None:
    if triton_ops.gemv_tile_units(ctx.bits or 0, ctx.group_size or 0, ctx.in_features) is None:
        return f"group size {ctx.group_size} does not hold whole K tiles of {ctx.bits}-bit codes"
    return _triton_int_group(ctx)


def _more_rows_than(limit: int, faster: str, ctx: CallContext) -> str | None:
    """Unsuited above `limit` activation rows, where `faster` says what wins instead."""
    if ctx.rows > limit:
        return f"more than {limit} rows: {faster}"
    return None


_few_rows = partial(_more_rows_than, triton_ops.GEMV_MAX_ROWS, "the tensor-core kernel is faster")
_mma_rows = partial(_more_rows_than, cuda_mma.MAX_ROWS, "cuda_mma's limit; the Triton tensor-core kernel runs more")


def _triton_int8_weight(ctx: CallContext) -> str | None:
    if ctx.in_features % 4:
        return "int8 rows are read as int32 words: in_features must be a multiple of 4"
    return _int32_index(ctx) or triton_ops.int_group_unavailable(ctx.device, ctx.dtype, 8)


def _triton_fourbit(ctx: CallContext) -> str | None:
    return _int32_index(ctx) or triton_ops.fourbit_unavailable(ctx.device, ctx.dtype, ctx.in_features,
                                                               ctx.group_size or 0)


def _cuda_mma_fourbit(ctx: CallContext) -> str | None:
    blocksize = ctx.group_size or 0
    return (cuda_mma.fourbit_unsupported(ctx.in_features, blocksize) or _int32_index(ctx) or _tile_chunk_differs(ctx)
            or cuda_mma.unavailable(ctx.device, ctx.dtype, 4, ctx.rows, ctx.in_features, ctx.out_features, blocksize))


def _tile_chunk_differs(ctx: CallContext) -> str | None:
    """A layer in tile order whose chunks are not the ones cuda_mma reads (a checkpoint tiled elsewhere), or None."""
    if not ctx.tile_chunk:
        return None
    group = ctx.group_size or ctx.in_features  # int8 weight-only: one scale a row
    return cuda_mma.foreign_chunk(ctx.tile_chunk, ctx.bits or 0, ctx.in_features, ctx.out_features, group)


def _mma_fourbit_few_rows(ctx: CallContext) -> str | None:
    """Auto takes cuda_mma for NF4/FP4 up to its 16 rows: on an H100, in one run over the five Llama-3-8B shapes,
    1.78-2.48x bf16 at one row against the Triton kernel's 0.87-1.44x, and 1.57-2.00x at 8 rows against 0.44-0.72x
    (kern12 runs 2-3); 1.22-1.42x at 9 rows and 1.17-1.39x at 16 against the Triton tensor-core kernel's 0.45-0.75x
    (kern15 run 8)."""
    return _mma_rows(ctx)


def _triton_aqlm(kernel: str, ctx: CallContext) -> str | None:
    return _int32_index(ctx) or triton_ops.aqlm_unavailable(ctx.device, ctx.dtype, kernel, ctx.bits or 0,
                                                            ctx.group_size or 0)


def _cuda_mma_aqlm(ctx: CallContext) -> str | None:
    """Auto takes cuda_aqlm first, up to its 8 rows: 2x8 at 1.76-3.44x bf16 at one row (kern15 run 10, kern16 run 6);
    1x16 at 0.86-1.10x against triton_gather's 0.76-0.93x at one row and 0.54-0.92x against 0.09-0.24x at 8 rows
    (kern16 run 6)."""
    return cuda_aqlm.unavailable(ctx.device, ctx.dtype, ctx.rows, ctx.in_features, ctx.out_features,
                                 ctx.codebooks or 0, ctx.bits or 0, ctx.group_size or 0)


def _cuda_mma_int_group(ctx: CallContext) -> str | None:
    return _int32_index(ctx) or _tile_chunk_differs(ctx) or cuda_mma.unavailable(
        ctx.device, ctx.dtype, ctx.bits, ctx.rows, ctx.in_features, ctx.out_features, ctx.group_size or 0)


# layers this narrow (Llama-3-8B's k/v projections) stay on cuda_mma: int2 and int4 to 16 rows, int8 at 1
FEW_OUTPUTS = 1024


def _mma_int_few_rows(ctx: CallContext) -> str | None:
    """Auto takes cuda_mma for 2- and 4-bit codes at up to 8 rows (one activation fragment). On an H100, in one
    run over the five Llama-3-8B shapes, int2 ran 2.16-3.46x bf16 at one row against the Triton kernels'
    1.43-3.15x and 1.84-3.07x at 8 rows against 1.01-2.01x (kern13 run 2; 2.21-3.98x at one row with the wide
    shape since, run 3); int4 ran ahead of them at 1 and 8 rows (kern11, kern12); int3 ran 1.56-2.86x at one row
    against 0.91-1.24x and 1.43-2.31x at 8 rows against 0.50-0.68x (kern14 run 1), so 3-bit codes take it up
    to its 16 rows (1.12-1.41x at 9 and 16 rows against 0.50-0.70x, kern14 run 7). At 16 rows the Triton
    tensor-core kernel was faster for int4 except where the outputs are few (4096x1024: 1.36-1.37x against
    0.93-0.96x, kern13 and kern14 run 5), so int4 takes cuda_mma up to 16 rows there, and so does int2 (1.54x and
    1.31x at 9 and 16 rows against the Triton kernel's 1.18x and 1.06x, kern22 run 3); and both take it where its
    short slices fill one or two waves (_short_slices, kern22-23)."""
    if ctx.bits == 3 or (ctx.bits in (2, 4) and ctx.out_features <= FEW_OUTPUTS) or _short_slices(ctx):
        return _mma_rows(ctx)
    if ctx.bits not in (2, 4):
        return f"{ctx.bits}-bit codes: not shown faster than the Triton kernels (kern11); name cuda_mma to use it"
    return _more_rows_than(cuda_mma.FRAGMENT_ROWS, "the Triton tensor-core kernel is faster", ctx)


def _short_slices(ctx: CallContext) -> bool:
    """int2 and int4 at 9-16 rows where cuda_mma's short-slice blocks fill one or two waves
    (cuda_mma.short_slice_tiles: int4 at 9-16 rows 1.46-2.03x bf16 on four of the five Llama-3-8B shapes against the
    Triton tensor-core kernel's 1.01-1.84x, kern23 run 4; int2 at 16 rows 1.53-2.16x, run 5's sweep)."""
    if not cuda_mma.short_slice_candidate(ctx.bits or 0, ctx.rows):
        return False
    if ctx.device.type != "cuda" or not torch.cuda.is_available():
        return False
    sms = _multiprocessors(ctx.device.index or 0)
    return cuda_mma.short_slice_tiles(ctx.bits, ctx.rows, ctx.in_features, ctx.out_features, sms) > 0


def _multiprocessors(device_index: int) -> int:
    """nvrtc.multiprocessors as a plain function that torch.compile keeps as a constant (as cuda_mma._compile_failure):
    Dynamo would trace through its lru_cache wrapper, with a warning."""
    return nvrtc.multiprocessors(device_index)


_multiprocessors._dynamo_marked_constant = True


def _mma_int8_few_rows(ctx: CallContext) -> str | None:
    """int8 weight-only: auto takes cuda_mma up to 8 rows, where the Triton kernel is the tensor-core one from 2
    rows: on an H100 over the five Llama-3-8B shapes, 1.37-1.89x bf16 at 2 rows against its 0.91-1.46x (kern13 run
    3) and 1.28-1.87x at 8 rows against 0.87-1.45x (run 2). At one row, with the codes in tile order, cuda_mma ran
    1.55 / 1.67 / 1.64 / 2.07x against triton_mv's 1.52 / 1.28 / 1.63 / 1.97x on 4096x4096 / 4096x1024 /
    4096x14336 / 4096x128256 and 1.60x against 1.74x on 14336x4096 (kern19 run 1), so auto keeps triton_mv at one
    row where inputs outnumber outputs and the outputs are more than FEW_OUTPUTS."""
    if ctx.rows == 1 and ctx.in_features > ctx.out_features > FEW_OUTPUTS:
        return "one row, many outputs, more inputs: the Triton matrix-vector kernel is faster on an H100 (kern19)"
    return _more_rows_than(cuda_mma.FRAGMENT_ROWS, "not timed against the Triton kernels (kern13)", ctx)


def _cuda_mma_int8(ctx: CallContext) -> str | None:
    """int8 weight-only: signed codes, one scale per row (a group spanning the row)."""
    return _int32_index(ctx) or _tile_chunk_differs(ctx) or cuda_mma.unavailable(
        ctx.device, ctx.dtype, 8, ctx.rows, ctx.in_features, ctx.out_features, ctx.in_features)


# dequant_cublas (triton_dequant: the layer dequantized by one Triton kernel into a 16-bit buffer, then cuBLAS)
DEQUANT_MIN_ROWS = {2: 256, 3: 256, 4: 257, 8: 257}  # the integer codes by bit width (int8 weight-only: 8)
DEQUANT_MIN_ROWS_FOURBIT = 256  # NF4/FP4
DEQUANT_MAX_WEIGHTS = 2**27  # a larger layer's 16-bit buffer (over 256 MiB) stays off where a kernel needs none


def _dequant_unsuited(min_rows: int, tc_max_rows: int, ctx: CallContext) -> str | None:
    """dequant_cublas from `min_rows` rows, for layers of up to DEQUANT_MAX_WEIGHTS weights while the tensor-core
    kernel (up to `tc_max_rows`) can run instead. On an H100, x bf16, through the kernels by name, against the
    tensor-core kernel on the five Llama-3-8B shapes (4096x4096 / 4096x1024 / 4096x14336 / 14336x4096 / 4096x128256,
    kern33 runs 1-3, kern34 run 1): int4 at 512 rows 0.64 / 0.68 / 0.60 / 0.61 / 0.55 against 0.52 / 0.46 / 0.47 /
    0.52 / 0.51, at 2048 rows 0.77-0.88 against 0.38-0.57, at 256 rows 0.42-0.71 against 0.55-0.69 (faster only on
    4096x1024), and from 257: at 320 / 384 / 448 rows on the four shapes under the cap 0.52-0.69 / 0.57-0.67 /
    0.61-0.71 against 0.38-0.43 / 0.40-0.56 / 0.48-0.60 (the tensor-core kernel's third 128-row tile costs it a step);
    int8 weight-only there 0.49-0.69 / 0.54-0.67 / 0.58-0.66 against 0.44-0.47 / 0.43-0.64 / 0.51-0.67 (ahead on 9 of
    12, behind by up to 0.04 on 3; at 512 rows 0.58-0.69 against 0.48-0.60); int3 and int2 at 512 rows 0.56-0.72
    against 0.37-0.45, already at 256 rows on the four shapes (0.50-0.75 against 0.42-0.57). NF4 from 256 rows:
    0.44-0.63 against 0.32-0.44, at 512 / 1024 rows 0.56-0.62 / 0.70-0.77 against 0.29-0.35 / 0.29-0.35, and at
    2048 0.78-0.88 against the reference path's 0.21-0.25 (at 128 rows 0.40-0.61 against 0.35-0.57). The cap keeps
    4096x128256 (525M weights, a 1 GiB buffer) on the tensor-core kernel: int4 7% slower at 512 rows, NF4 half as fast
    (0.30 against 0.58); `--kernel dequant_cublas` takes the buffer anyway."""
    if ctx.rows < min_rows:
        return f"fewer than {min_rows} rows: the tensor-core kernel is faster"
    if ctx.in_features * ctx.out_features > DEQUANT_MAX_WEIGHTS and ctx.rows <= tc_max_rows:
        return "over 2**27 weights: the 16-bit copy it writes would pass 256 MiB (the tensor-core kernel needs none)"
    return None


def _dequant_rows_int(ctx: CallContext) -> str | None:
    return _dequant_unsuited(DEQUANT_MIN_ROWS.get(ctx.bits or 8, 512), math.inf, ctx)


_dequant_rows_fourbit = partial(_dequant_unsuited, DEQUANT_MIN_ROWS_FOURBIT, triton_ops.FOURBIT_TC_ROWS)


_few_rows_fourbit = partial(_more_rows_than, triton_ops.FOURBIT_MV_ROWS, "the tensor-core kernel is faster")
_fourbit_tc_rows = partial(_more_rows_than, triton_ops.FOURBIT_TC_ROWS, "dequantizing once for cuBLAS is faster")
_few_rows_aqlm = partial(_more_rows_than, triton_ops.AQLM_MAX_ROWS, "dequantizing for cuBLAS is faster")


def _lut_unsuited(ctx: CallContext) -> str | None:
    if ctx.out_features < triton_ops.AQLM_LUT_MIN_OUT:
        return f"fewer than {triton_ops.AQLM_LUT_MIN_OUT} outputs: building the table costs more than it saves"
    return _few_rows_aqlm(ctx)


def _triton_w8a8(ctx: CallContext) -> str | None:
    return triton_ops.triton_unavailable(ctx.device)


_int8_rows_int_mm = partial(reference.int8_rows_matmul, int8_mm=reference.w8a8_linear_int_mm)

# Fastest first; the last entry of each op is the reference path and runs everywhere.
_CANDIDATES: dict[str, tuple[Candidate, ...]] = {
    "int_group_linear": (
        Candidate("cuda_mma", triton_ops.int_group_linear_mma, _cuda_mma_int_group, _mma_int_few_rows),
        # at one row torch's tinygemm ran 9-30% faster than triton_mv on the H100 but holds a second, repacked
        # copy of the weights, so auto keeps lowbit's kernel; name torch_int4_cuda to get it
        Candidate("triton_mv", triton_ops.int_group_linear_mv, _triton_mv_int_group, _few_rows),
        Candidate("torch_int4_cuda", cpu.int4_cpu_linear, cpu.int4_cuda_unavailable, cpu.int4_cuda_unsuited,
                  prepare=cpu.prepare_int4_cpu),
        Candidate("dequant_cublas", triton_ops.int_group_linear_dq, _triton_int_group, _dequant_rows_int),
        Candidate("triton_tc", triton_ops.int_group_linear, _triton_int_group),
        Candidate("int4_cpu", cpu.int4_cpu_linear, cpu.int4_cpu_unavailable, prepare=cpu.prepare_int4_cpu),
        Candidate("int4x2_cpu", cpu.int4_cpu_linear, cpu.int4x2_cpu_unavailable, prepare=cpu.prepare_int4_cpu),
        Candidate("reference", reference.int_group_linear, always),
    ),
    "int_group_offset_linear": (
        Candidate("int4_cpu", cpu.int4_cpu_linear, cpu.int4_cpu_unavailable, prepare=cpu.prepare_int4_cpu_offset),
        Candidate("int4x2_cpu", cpu.int4_cpu_linear, cpu.int4x2_cpu_unavailable, prepare=cpu.prepare_int4_cpu_offset),
        Candidate("reference", reference.int_group_offset_linear, always),
    ),
    "int_group_embedding": (Candidate("reference", reference.int_group_embedding, always),),
    "int8_weight_linear": (
        Candidate("cuda_mma", triton_ops.int8_weight_linear_mma, _cuda_mma_int8, _mma_int8_few_rows),
        Candidate("triton_mv", triton_ops.int8_weight_linear_mv, _triton_int8_weight, _few_rows),
        Candidate("dequant_cublas", triton_ops.int8_weight_linear_dq, _triton_int8_weight, _dequant_rows_int),
        Candidate("triton_tc", triton_ops.int8_weight_linear, _triton_int8_weight),
        Candidate("int8_cpu", cpu.int8_cpu_linear, cpu.int8_cpu_unavailable, prepare=cpu.prepare_int8_cpu),
        Candidate("reference", reference.int8_weight_linear, always),
    ),
    "int_group_linear_t": (Candidate("reference", reference.int_group_linear_t, always),),
    "fourbit_linear": (
        Candidate("cuda_mma", triton_ops.fourbit_linear_mma, _cuda_mma_fourbit, _mma_fourbit_few_rows),
        Candidate("triton_mv", triton_ops.fourbit_linear_mv, _triton_fourbit, _few_rows_fourbit),
        Candidate("dequant_cublas", triton_ops.fourbit_linear_dq, _triton_fourbit, _dequant_rows_fourbit),
        Candidate("triton_tc", triton_ops.fourbit_linear_tc, _triton_fourbit, _fourbit_tc_rows),
        Candidate("reference", reference.fourbit_linear, always),
    ),
    "aqlm_linear": (
        Candidate("cuda_mma", triton_ops.aqlm_linear_mma, _cuda_mma_aqlm),
        Candidate("triton_lut", triton_ops.aqlm_linear_lut, partial(_triton_aqlm, "lut"), _lut_unsuited),
        Candidate("triton_gather", triton_ops.aqlm_linear_gather, partial(_triton_aqlm, "gather"), _few_rows_aqlm),
        Candidate("reference", reference.aqlm_linear, always),
    ),
    # LLM.int8 (outlier columns in float, the rest int8 x int8): fn(x, qweight, scale, threshold, bias),
    # or fn(x, packed, threshold, bias) for a candidate with `prepare`
    "llm_int8_linear": (
        Candidate("int8_cpp", cpu.llm_int8_cpp_linear, cpu.int8_cpp_unavailable, prepare=cpu.prepare_int8_cpu),
        Candidate("int8_cpu", cpu.llm_int8_cpu_linear, cpu.int8_cpu_unavailable, prepare=cpu.prepare_int8_cpu),
        Candidate("torch_int_mm", partial(reference.llm_int8_linear, int8_matmul=_int8_rows_int_mm), _int_mm_unavailable),
        Candidate("reference", reference.llm_int8_linear, always),
    ),
    "w8a8_linear": (
        Candidate("torch_int_mm", reference.w8a8_linear_int_mm, _int_mm_unavailable),
        Candidate("triton", triton_ops.w8a8_mm, _triton_w8a8),
        Candidate("reference", reference.w8a8_linear_emulated, always),
    ),
}


def check_preference(preference: str) -> str:
    """`preference` if some op knows it (auto, triton, reference or a kernel name), else a LowbitError."""
    names = {c.name for candidates in _CANDIDATES.values() for c in candidates}
    if preference not in set(PREFERENCES) | names:
        raise LowbitError(f"unknown kernel preference {preference!r}: choose one of {', '.join(PREFERENCES)}")
    return preference


def _matches(candidate: Candidate, preference: str) -> bool:
    """A kernel's full name, or its family: 'triton' matches triton_mv and triton_tc."""
    return candidate.name == preference or candidate.name.startswith(preference + "_")


def explain(op: str, ctx: CallContext) -> list[tuple[str, str | None]]:
    """(name, reason it cannot run or None) for every candidate of `op`, fastest first."""
    return [(c.name, c.unavailable(ctx)) for c in _CANDIDATES[op]]


def _log(level: int, msg: str, *args) -> None:
    """Log, except while torch.compile traces a forward (a logger call there would break the graph)."""
    if not torch.compiler.is_compiling():
        log.log(level, msg, *args)


def select(op: str, ctx: CallContext, preference: str = "auto") -> Candidate:
    """The fastest candidate able to run `ctx`; `preference` is 'auto', 'reference', a family or a kernel name.

    A family ('triton') takes its best-suited member able to run the call; a full kernel name is honoured
    whenever that kernel can run the call, even where another would be faster.
    """
    candidates = _CANDIDATES[op]
    if preference == "reference":
        return candidates[-1]
    if preference != "auto":
        named = [c for c in candidates if _matches(c, preference)]
        if not named:
            names = ", ".join(c.name for c in candidates)
            raise LowbitError(f"no kernel {preference!r} for {op}: choose auto, reference or one of {names}")
        able = [c for c in named if c.unavailable(ctx) is None]
        suited = [c for c in able if len(named) == 1 or c.unsuited(ctx) is None]
        if able:
            return (suited or able)[0]
        reason = named[-1].unavailable(ctx)
        _log(logging.INFO, "kernel %s cannot run %s (%s); using auto choice", preference, op, reason)
    for candidate in candidates:  # the cheap row and shape checks first: a kernel auto would not take is not
        reason = candidate.unsuited(ctx) or candidate.unavailable(ctx)  # probed (cuda_mma's probe builds it)
        if reason is None:
            return candidate
        _log(logging.DEBUG, "kernel %s skipped for %s: %s", candidate.name, op, reason)
    raise AssertionError("unreachable: the reference candidate is always available")
