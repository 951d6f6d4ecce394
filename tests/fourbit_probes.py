"""Triton kernels that run triton_fourbit's register lookup on its own, for test_triton_kernels.

Imported lazily inside the tests (as the kernels themselves are), so that on a machine without CUDA they are
decorated while Triton's interpreter is on.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lowbit.kernels.triton_fourbit import _pair_f32, _prmt, _table_planes


@triton.jit
def prmt_probe(a_ptr, b_ptr, sel_ptr, out_ptr, N: tl.constexpr, ASM: tl.constexpr):
    """out[i] = prmt(a[i], b[i], sel[i]) for i < N."""
    i = tl.arange(0, N)
    tl.store(out_ptr + i, _prmt(tl.load(a_ptr + i), tl.load(b_ptr + i), tl.load(sel_ptr + i), ASM))


@triton.jit
def decode_probe(w_ptr, table_ptr, out_ptr, N: tl.constexpr, ASM: tl.constexpr):
    """out[i, j] = the looked-up value of code j of word i, for N words (out (N, 8) fp32)."""
    i = tl.arange(0, N)
    words = tl.load(w_ptr + i)
    planes = _table_planes(table_ptr)
    for j in tl.static_range(0, 8, 2):
        first, second = _pair_f32(words, planes, j, ASM)
        tl.store(out_ptr + i * 8 + j, first)
        tl.store(out_ptr + i * 8 + j + 1, second)
