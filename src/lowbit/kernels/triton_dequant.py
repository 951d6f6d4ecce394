"""Dequantize, then one cuBLAS product: the many-row path for the group-wise integer format, int8 weight-only and
NF4/FP4.

Above some rows a product of 16-bit weights is compute-bound, and cuBLAS on 16-bit weights runs the tensor cores
closer to their peak than a kernel that unpacks codes between its products (triton_int._mm_tc). `_dequant_int`
writes the layer's weights once in x's dtype, every value exactly `((code - zero) * scale)` rounded once, as
reference._dequantize_int computes it (`_dequant_fourbit`: table[code] * absmax, as reference.fourbit_linear), and
`F.linear` multiplies. The packed weights are read once and written whole in 16 bits (a transient buffer the
caching allocator hands to the next layer), so the path pays only where the product's own time dwarfs that write:
the selector takes it by rows and layer size (select._dequant_unsuited, timed on an H100). This is how bitsandbytes
runs its 4-bit layers over a prompt (dequantize_4bit, then a 16-bit matmul; Dettmers et al. 2023).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lowbit.formats.word_tiles import row_shaped
from lowbit.kernels.triton_fourbit import _code, _groups, _words
from lowbit.kernels.triton_int import (_block_units, _join8_tree, _qparams, _weight_tile, nibble_asm, offset16,
                                       unit_shape)

BLOCK_OUT = 64  # outputs a program
BLOCK_IN = 128  # inputs a program (whole units: 3-bit units hold 32)
FOURBIT_WORDS = 16  # words of eight 4-bit codes a row a program


@triton.jit
def _store_weights(out_ptr, w, offs_n, k, N, K, EVEN: tl.constexpr):
    """w (BN, BK) fp32 rounded to out's dtype at rows offs_n, columns k of out (N, K); masked unless EVEN."""
    ptrs = out_ptr + offs_n[:, None] * K + k[None, :]
    if EVEN:
        tl.store(ptrs, w.to(out_ptr.dtype.element_ty))
    else:
        tl.store(ptrs, w.to(out_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (k < K)[None, :])


@triton.jit
def _dequant_int(w_ptr, scale_ptr, zero_ptr, out_ptr, N, K, wpr, n_groups, G, BITS: tl.constexpr, UC: tl.constexpr,
                 UW: tl.constexpr, BN: tl.constexpr, BU: tl.constexpr, PER_TILE: tl.constexpr,
                 HAS_ZERO: tl.constexpr, SIGNED8: tl.constexpr, OFFSET: tl.constexpr, ASM: tl.constexpr,
                 EVEN: tl.constexpr, TILE: tl.constexpr):
    """out (N, K) in out's dtype = (code - zero) * scale for one (BN outputs, BU units) tile; grid (N / BN, K tiles)."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    t = tl.program_id(1)
    BK: tl.constexpr = BU * UC
    k = t * BK + tl.arange(0, BK)
    mask_n = offs_n < N
    DT: tl.constexpr = out_ptr.dtype.element_ty
    w = _weight_tile(w_ptr, offs_n, mask_n, wpr, t * BU, DT, BU, BITS, UC, UW, SIGNED8, ASM, EVEN, TILE)
    codes = w.to(tl.float32) - OFFSET  # exact: OFFSET + code is exact in DT
    if PER_TILE:  # the tile lies in one group
        s, z = _qparams(scale_ptr, zero_ptr, offs_n, mask_n, n_groups, (t * BK) // G, BITS, HAS_ZERO, EVEN)
        v = (codes - z[:, None]) * s[:, None]
    else:
        mask = mask_n[:, None] & (k < K)[None, :]
        s, z = _qparams(scale_ptr, zero_ptr, offs_n[:, None], mask, n_groups, (k // G)[None, :], BITS, HAS_ZERO)
        v = (codes - z) * s
    _store_weights(out_ptr, v, offs_n, k, N, K, EVEN)


def int_group_dequantize(qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                         group_size: int, cols: int, dtype: torch.dtype, signed8: bool = False,
                         config: dict | None = None) -> torch.Tensor:
    """Packed int_group codes (row or tile order) -> (out, cols) weights in `dtype` (fp16/bf16), on their device.
    `signed8`: int8 weight-only's signed bytes (implicit zero, one group a row). `config` overrides the tile
    ({"BN", "BK", "num_warps"}: benchmarks' sweeps)."""
    cfg = {"BN": BLOCK_OUT, "BK": BLOCK_IN, "num_warps": 4} | (config or {})
    qweight, tile = row_shaped(qweight)
    out_features, wpr = qweight.shape
    uc, uw = unit_shape(bits)
    bu, per_tile = _block_units(cfg.pop("BK"), group_size, cols, uc)
    k_tiles = math.ceil(cols / (bu * uc))
    w = torch.empty((out_features, cols), dtype=dtype, device=qweight.device)
    even = out_features % cfg["BN"] == 0 and cols % (bu * uc) == 0
    grid = (math.ceil(out_features / cfg["BN"]), k_tiles)
    _dequant_int[grid](qweight, scale, zero if zero is not None else scale, w, out_features, cols, wpr,
                       scale.shape[1], group_size, BITS=bits, UC=uc, UW=uw, BU=bu, PER_TILE=per_tile,
                       HAS_ZERO=zero is not None, SIGNED8=signed8, OFFSET=offset16(dtype, bits),
                       ASM=nibble_asm(bits, signed8), EVEN=even, TILE=tile, **cfg)
    return w


def dequant_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                   bias: torch.Tensor | None, bits: int, group_size: int, signed8: bool = False,
                   config: dict | None = None) -> torch.Tensor:
    """x (rows, in) fp16/bf16 @ dequant(qweight)^T + bias -> (rows, out): the weights dequantized, then F.linear."""
    w = int_group_dequantize(qweight, scale, zero, bits, group_size, x.shape[-1], x.dtype, signed8, config)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


@triton.jit
def _dequant_fourbit(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean_ptr, table_ptr, out_ptr, N, K, WPR, B,
                     NBLK: tl.constexpr, WPB: tl.constexpr, BN: tl.constexpr, DOUBLE: tl.constexpr,
                     EVEN: tl.constexpr, TILE: tl.constexpr):
    """out (N, K) in out's dtype = table[code] * absmax for one (BN outputs, NBLK * WPB words) tile; grid (N / BN,
    K tiles). Codes come high nibble first (formats.nf4), placed back in input order as in triton_fourbit."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    t = tl.program_id(1)
    mask_n = offs_n < N
    dq_mean = 0.0
    if DOUBLE:
        dq_mean = tl.load(dq_mean_ptr).to(tl.float32)
    words, absmax = _words(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean, offs_n, mask_n, t, N, K, WPR, B, NBLK, WPB,
                           DOUBLE, EVEN, TILE)
    w = _join8_tree(_code(words, table_ptr, 0), _code(words, table_ptr, 1), _code(words, table_ptr, 2),
                    _code(words, table_ptr, 3), _code(words, table_ptr, 4), _code(words, table_ptr, 5),
                    _code(words, table_ptr, 6), _code(words, table_ptr, 7))  # (BN, NBLK, WPB, 2, 2, 2)
    BK: tl.constexpr = NBLK * WPB * 8
    w = tl.reshape(w * absmax[:, :, None, None, None, None], (BN, BK))
    _store_weights(out_ptr, w, offs_n, t * BK + tl.arange(0, BK), N, K, EVEN)


def fourbit_dequantize(qweight: torch.Tensor, absmax: torch.Tensor, absmax_scale: torch.Tensor | None,
                       absmax_mean: torch.Tensor | None, table: torch.Tensor, blocksize: int, out_features: int,
                       cols: int, dtype: torch.dtype) -> torch.Tensor:
    """NF4/FP4 codes (formats.nf4, row or tile order; absmax fp32, or int8 with absmax_scale and absmax_mean)
    -> (out_features, cols) weights in `dtype`."""
    words = qweight.view(torch.int32)
    tile = row_shaped(words)[1]
    wpr = cols // 8
    nblk, wpb = _groups(cols, blocksize, FOURBIT_WORDS)
    k_tiles = math.ceil(wpr / FOURBIT_WORDS)
    w = torch.empty((out_features, cols), dtype=dtype, device=qweight.device)
    even = out_features % BLOCK_OUT == 0 and wpr % FOURBIT_WORDS == 0
    double = absmax_scale is not None
    _dequant_fourbit[(math.ceil(out_features / BLOCK_OUT), k_tiles)](
        words, absmax, absmax_scale if double else absmax, absmax_mean if double else absmax, table, w, out_features,
        cols, wpr, blocksize, NBLK=nblk, WPB=wpb, BN=BLOCK_OUT, DOUBLE=double, EVEN=even, TILE=tile)
    return w


def fourbit_dequant_matmul(x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor,
                           absmax_scale: torch.Tensor | None, absmax_mean: torch.Tensor | None, table: torch.Tensor,
                           blocksize: int, out_features: int, bias: torch.Tensor | None) -> torch.Tensor:
    """x (rows, in) fp16/bf16 @ dequant(W)^T + bias -> (rows, out): NF4/FP4 weights dequantized, then F.linear."""
    w = fourbit_dequantize(qweight, absmax, absmax_scale, absmax_mean, table, blocksize, out_features, x.shape[-1],
                           x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))
