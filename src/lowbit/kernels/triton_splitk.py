"""Split-K output handling shared by the Triton kernels (triton_int._mm_tc, triton_gemv._gemv).

When the output alone cannot fill the GPU, K is split across SPLIT_K programs per output tile. Each writes
its fp32 partial; then either the last program of the tile to finish adds the partials up in the same
launch (the "fix-up" of stream-K GEMMs, Osama et al. 2023: a per-tile arrival counter, reset by that last
program, so no launch zeroes it), or a second small kernel, `_sum_slices`, does it (no counters; kept for
calls whose tiles outnumber the counters and for captures that would have to allocate them).
One launch instead of two matters at decode sizes, where a kernel takes a few microseconds. The counters
assume that launches sharing them run one after another (one stream).
Importing this module imports Triton: callers import it lazily.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from lowbit.kernels.split_counters import counters_for


@triton.jit
def _fence():
    """fence.acq_rel.gpu in every thread: its partial stores become visible before the tile's counter moves."""
    tl.inline_asm_elementwise("fence.acq_rel.gpu;\nmov.b32 $0, $1;", "=r,r", [tl.full([1], 0, tl.int32)],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _store(y_ptr, part_ptr, count_ptr, bias_ptr, acc, offs, mask, bias_offs, bias_mask, tile, pid_k, TOTAL,
           SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, FIXUP: tl.constexpr, FENCE: tl.constexpr):
    """acc (fp32, any shape) -> y at element offsets `offs` (+ bias[bias_offs]), or this K slice's partial.

    y is (rows, N) in the activations' dtype, partials (SPLIT_K, rows, N) fp32 with TOTAL = rows * N.
    """
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + bias_offs, mask=bias_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + pid_k * TOTAL + offs, acc, mask=mask)
        if FIXUP:
            if FENCE:
                _fence()
            tl.debug_barrier()  # every thread's partial is out before the counter moves
            arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLIT_K - 1:  # the last slice of this tile: add them all up
                total = tl.zeros_like(acc)
                for i in tl.static_range(SPLIT_K):
                    total += tl.load(part_ptr + i * TOTAL + offs, mask=mask, other=0.0, cache_modifier=".cg")
                if HAS_BIAS:
                    total += tl.load(bias_ptr + bias_offs, mask=bias_mask, other=0.0).to(tl.float32)
                tl.store(y_ptr + offs, total.to(y_ptr.dtype.element_ty), mask=mask)
                tl.atomic_xchg(count_ptr + tile, 0)  # ready for the next launch


@triton.jit
def _sum_slices(part_ptr, bias_ptr, y_ptr, N, TOTAL, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                BLOCK: tl.constexpr):
    """y (rows, N) = sum over K slices of the fp32 partials (SPLIT_K, rows, N) (+ bias), in y's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + i * TOTAL + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def split_k(programs: int, k_tiles: int, device: torch.device, waves: int) -> int:
    """K slices so that about `waves` waves of programs fill the GPU (1 when the output already does)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    split = 1
    while programs * split * 2 <= waves * sms and split * 2 <= k_tiles:
        split *= 2
    return split


def split_buffers(y: torch.Tensor, split: int, tiles: int, fixup: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(partials, counters, launch flags) for a call writing y (rows, N) with `split` K slices."""
    if split == 1:
        return y, y, {"FIXUP": False, "FENCE": False}
    part = torch.empty((split, *y.shape), dtype=torch.float32, device=y.device)  # (split, rows, N)
    counters = counters_for(y.device, tiles) if fixup else None
    flags = {"FIXUP": counters is not None, "FENCE": counters is not None and not interpreting()}
    return part, (counters if counters is not None else part), flags


def finish(y: torch.Tensor, part: torch.Tensor, bias: torch.Tensor | None, split: int, flags: dict) -> torch.Tensor:
    """Sum the partials with _sum_slices when the launch did not fix them up itself."""
    if split > 1 and not flags["FIXUP"]:
        total = y.numel()
        _sum_slices[(math.ceil(total / 1024),)](part, bias if bias is not None else part, y, y.shape[1], total,
                                                 SPLIT_K=split, HAS_BIAS=bias is not None, BLOCK=1024, num_warps=4)
    return y
