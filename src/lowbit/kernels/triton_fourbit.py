"""Triton kernels over the NF4/FP4 format (formats.nf4): CUDA-core matrix-vector for one row, tensor cores above.

QLoRA's 4-bit weights (Dettmers et al., 2023): w[i] = code_table[code[i]] * absmax[i // B] over the
row-major flattened weight. At one activation row the product is bound by the weight bytes, so, as in
triton_gemv, each thread unpacks its own int32 words in the load's register layout and accumulates in
registers. Eight codes share a word (two per byte, the first in the high nibble) and a block (B and
in_features are multiples of 8), so a tile of words is viewed as (BN rows, NBLK groups, WPB words):

    y[n] += absmax[n, group] * sum_{words in group} sum_j table[code_j] * x[8 * word + j]

With in_features a multiple of B a group of WPB words lies in one absmax block: the absmax, and with
double quantization its second level (absmax_q * absmax_scale[block // 256] + mean), is read and applied
once per group; otherwise (blocks spanning rows) WPB = 1 and it is applied per word. The 16-entry table
is a gather per code from 64 bytes (one L1 line; a 2 KB table of byte pairs, one lookup per two weights, ran
slower on the H100). That gather bounds the kernel: Nsight Compute saw most stall cycles waiting on L1TEX
(docs/kern6.md). Split-K partials are summed as in triton_gemv (triton_splitk). For more rows `_fourbit_tc`
looks each tile up once for BM rows and multiplies on tensor cores. Importing this module imports Triton:
callers import it lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lowbit.core.codebook import DOUBLE_QUANT_BLOCK
from lowbit.kernels.triton_int import _load
from lowbit.kernels.triton_splitk import _store, finish, split_buffers, split_k


@triton.jit
def _words(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean, offs_n, mask_n, t, N, K, WPR, B, NBLK: tl.constexpr,
           WPB: tl.constexpr, DOUBLE: tl.constexpr, EVEN: tl.constexpr):
    """Words (BN, NBLK, WPB) int32 and absmax (BN, NBLK) fp32 of K tile t (NBLK * WPB words per row)."""
    first = t * (NBLK * WPB) + tl.arange(0, NBLK) * WPB  # (NBLK,) first word of each group
    wcol = first[:, None] + tl.arange(0, WPB)[None, :]  # (NBLK, WPB)
    ptrs = w_ptr + offs_n[:, None, None] * WPR + wcol[None, :, :]  # the host keeps N * K under 2**31
    words = _load(ptrs, mask_n[:, None, None] & (wcol < WPR)[None, :, :], EVEN)
    amask = mask_n[:, None] & (first < WPR)[None, :]  # (BN, NBLK)
    block = (offs_n[:, None] * K + first[None, :] * 8) // B  # (BN, NBLK)
    if DOUBLE:
        q = _load(absmax_ptr + block, amask, EVEN).to(tl.float32)
        s = _load(dq_scale_ptr + block // 256, amask, EVEN).to(tl.float32)
        absmax = q * s + dq_mean
    else:
        absmax = _load(absmax_ptr + block, amask, EVEN)
    return words, absmax


@triton.jit
def _code(words, table_ptr, J: tl.constexpr):
    """The table value of code J of every word (byte J // 2, the high nibble first)."""
    return tl.load(table_ptr + ((words >> (8 * (J // 2) + 4 * (1 - J % 2))) & 15))


@triton.jit
def _fourbit_gemv(x_ptr, w_ptr, absmax_ptr, dq_scale_ptr, dq_mean_ptr, table_ptr, bias_ptr, y_ptr, part_ptr,
                  count_ptr, N, K, WPR, B, stride_x, stride_y,
                  K_TILES: tl.constexpr, NBLK: tl.constexpr, WPB: tl.constexpr, BN: tl.constexpr,
                  SPLIT_K: tl.constexpr, DOUBLE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN: tl.constexpr,
                  FIXUP: tl.constexpr, FENCE: tl.constexpr):
    """y[m, offs_n] (or this K slice's fp32 partial) for one row m; grid (N / BN, rows, SPLIT_K)."""
    pid_n, m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < N
    dq_mean = 0.0
    if DOUBLE:
        dq_mean = tl.load(dq_mean_ptr).to(tl.float32)
    acc = tl.zeros([BN, NBLK], dtype=tl.float32)
    words, absmax = _words(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean, offs_n, mask_n, pid_k, N, K, WPR, B, NBLK,
                           WPB, DOUBLE, EVEN)
    for t0 in range(0, K_TILES, SPLIT_K):  # constant bounds: Triton 3.6's interpreter needs them
        t = t0 + pid_k  # the last round may overrun: its loads are masked to zero
        t_next = tl.minimum(t + SPLIT_K, K_TILES - 1)  # next tile's words, loaded before this one is used
        nxt, absmax_next = _words(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean, offs_n, mask_n, t_next, N, K, WPR, B,
                                  NBLK, WPB, DOUBLE, EVEN)
        wcol = t * (NBLK * WPB) + tl.arange(0, NBLK)[:, None] * WPB + tl.arange(0, WPB)[None, :]  # (NBLK, WPB)
        p = tl.zeros([BN, NBLK, WPB], dtype=tl.float32)
        for j in tl.static_range(8):
            value = _code(words, table_ptr, j)  # (BN, NBLK, WPB)
            k = wcol * 8 + j  # (NBLK, WPB)
            xj = _load(x_ptr + m * stride_x + k, k < K, EVEN).to(tl.float32)
            p += value * xj[None, :, :]  # (BN, NBLK, WPB)
        acc += absmax * tl.sum(p, axis=2)
        words, absmax = nxt, absmax_next
    y = tl.sum(acc, axis=1)  # (BN,)
    _store(y_ptr, part_ptr, count_ptr, bias_ptr, y, m * stride_y + offs_n, mask_n, offs_n, mask_n,
           pid_n + m * tl.num_programs(0), pid_k, tl.num_programs(1) * stride_y, SPLIT_K, HAS_BIAS, FIXUP, FENCE)


@triton.jit
def _fourbit_tc(x_ptr, w_ptr, absmax_ptr, dq_scale_ptr, dq_mean_ptr, table_ptr, bias_ptr, y_ptr, part_ptr,
                count_ptr, ROWS, N, K, WPR, B, stride_x, stride_y,
                K_TILES: tl.constexpr, NBLK: tl.constexpr, WPB: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                SPLIT_K: tl.constexpr, DOUBLE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN: tl.constexpr,
                FIXUP: tl.constexpr, FENCE: tl.constexpr):
    """Tensor cores: y[offs_m, offs_n] (or a K slice's partial); grid (N / BN, rows / BM, SPLIT_K).

    Each weight tile is looked up once for all BM rows, scaled by its absmax, interleaved back into input
    order (tl.join of codes j and j + 4, then + 2, then + 1) and multiplied by the x tile with tl.dot."""
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < N
    offs_m = pid_m * BM + tl.arange(0, BM)
    mask_m = offs_m < ROWS
    BK: tl.constexpr = NBLK * WPB * 8
    dq_mean = 0.0
    if DOUBLE:
        dq_mean = tl.load(dq_mean_ptr).to(tl.float32)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for t0 in range(0, K_TILES, SPLIT_K):
        t = t0 + pid_k
        words, absmax = _words(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean, offs_n, mask_n, t, N, K, WPR, B, NBLK,
                               WPB, DOUBLE, EVEN)
        w = tl.join(tl.join(tl.join(_code(words, table_ptr, 0), _code(words, table_ptr, 4)),
                            tl.join(_code(words, table_ptr, 2), _code(words, table_ptr, 6))),
                    tl.join(tl.join(_code(words, table_ptr, 1), _code(words, table_ptr, 5)),
                            tl.join(_code(words, table_ptr, 3), _code(words, table_ptr, 7))))  # [..., a, b, c]: 4a+2b+c
        w = tl.reshape(w * absmax[:, :, None, None, None, None], (BN, BK))  # (BN, BK) in input order
        k = t * BK + tl.arange(0, BK)
        xt = tl.load(x_ptr + offs_m[:, None] * stride_x + k[None, :], mask=mask_m[:, None] & (k < K)[None, :],
                     other=0.0)  # (BM, BK)
        acc += tl.dot(xt, tl.trans(w.to(xt.dtype)))
    _store(y_ptr, part_ptr, count_ptr, bias_ptr, acc, offs_m[:, None] * stride_y + offs_n[None, :],
           mask_m[:, None] & mask_n[None, :], offs_n[None, :], mask_n[None, :], pid_n + pid_m * tl.num_programs(0),
           pid_k, ROWS * stride_y, SPLIT_K, HAS_BIAS, FIXUP, FENCE)


# H100 sweeps (benchmarks/results/sweep-h100-kern6-run2*.json): the matrix-vector kernel ran 0.93-1.10x bf16
# over every config tried; the tensor-core one 0.37-0.57x at 16 rows with one stage, 0.16-0.21x with two
FOURBIT_CONFIG = {"BN": 256, "BKW": 4, "num_warps": 4, "num_stages": 1, "waves": 4}
FOURBIT_TC_CONFIG = {"BN": 64, "BM": 16, "BKW": 16, "num_warps": 4, "num_stages": 1, "waves": 4}


def _groups(in_features: int, blocksize: int, bkw: int) -> tuple[int, int]:
    """(NBLK, WPB): words per group divide a block when blocks lie within rows, else one word per group."""
    if in_features % blocksize:
        return bkw, 1
    wpb = math.gcd(blocksize // 8, bkw)
    return bkw // wpb, wpb


def fourbit_matmul(
    x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor, absmax_scale: torch.Tensor | None,
    absmax_mean: torch.Tensor | None, table: torch.Tensor, blocksize: int, out_features: int,
    bias: torch.Tensor | None, path: str = "mv", config: dict | None = None,
) -> torch.Tensor:
    """x (rows, in) fp16/bf16 @ dequant(W)^T + bias -> (rows, out) in x's dtype; table (16,) fp32 (the code
    table); absmax fp32, or int8 with absmax_scale (n_blocks / 256,) and absmax_mean (1,) under double
    quantization. path "mv": one program row per x row (CUDA cores); "tc": BM rows per program (tensor cores)."""
    assert DOUBLE_QUANT_BLOCK == 256  # the kernel's block // 256
    x = x.contiguous()
    rows, cols = x.shape
    cfg = dict((FOURBIT_CONFIG if path == "mv" else FOURBIT_TC_CONFIG) | (config or {}))
    waves, bkw, split = cfg.pop("waves"), cfg.pop("BKW"), cfg.pop("SPLIT_K", None)
    nblk, wpb = _groups(cols, blocksize, bkw)
    words = qweight.view(torch.int32)  # (out * in / 8,): eight codes per word, row-major
    wpr = cols // 8
    k_tiles = math.ceil(wpr / bkw)
    n_tiles = math.ceil(out_features / cfg["BN"])
    m_tiles = rows if path == "mv" else math.ceil(rows / cfg["BM"])
    split = split or split_k(n_tiles * m_tiles, k_tiles, x.device, waves)
    even = out_features % cfg["BN"] == 0 and wpr % bkw == 0 and k_tiles % split == 0
    y = torch.empty((rows, out_features), dtype=x.dtype, device=x.device)  # (rows, out)
    part, counters, fix = split_buffers(y, split, n_tiles * m_tiles, cfg.pop("FIXUP", True))
    double = absmax_scale is not None
    args = (x, words, absmax, absmax_scale if double else absmax, absmax_mean if double else absmax, table,
            bias if bias is not None else absmax, y, part, counters)
    sizes = (out_features, cols, wpr, blocksize, x.stride(0), out_features)
    flags = dict(K_TILES=k_tiles, NBLK=nblk, WPB=wpb, SPLIT_K=split, DOUBLE=double, HAS_BIAS=bias is not None,
                 EVEN=even, **fix, **cfg)
    if path == "mv":
        _fourbit_gemv[(n_tiles, rows, split)](*args, *sizes, **flags)
    else:
        _fourbit_tc[(n_tiles, m_tiles, split)](*args, rows, *sizes, **flags)
    return finish(y, part, bias, split, fix)
