"""Matrix-vector kernels for few activation rows over the AQLM format (formats.aqlm; Egiazarian et al., 2024).

    y[r, o] = scales[o] * sum_j sum_m  dot(x[r, j*g:(j+1)*g], codebooks[m, codes[o, j, m]])  (+ bias[o])

Two ways to get the inner dot products, as in AQLM's own kernels:
- lookup tables ("lut", K = 2**B <= 256 codewords, e.g. 2x8): once per call, every codeword's dot with
  every x slice, lut[r, m, j, c] (rows, M, G, K) in x's dtype (one batched matmul, fp32 accumulation);
  the kernel then sums one table entry per code, a 2-byte gather. The code tile is BC = 16 columns wide,
  so a warp's lanes hold 32 rows of the same columns and one load instruction's lookups all fall in one
  column's 512-byte table (a few L1 lines) instead of 32 different ones;
- direct gathers ("gather", any K, e.g. 1x16 whose 65536 codewords make a table per call too large):
  each code fetches its codeword (g fp16 values, one 16-byte load at g = 8) from the L2-resident
  codebook and dots it with the x slice.
Either way each thread sums its own codes in registers (the layout of the code load), K is split across
programs when the output cannot fill the GPU, and the partials are summed as in triton_gemv
(triton_splitk). Importing this module imports Triton: callers import it lazily.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lowbit.kernels.triton_int import _load
from lowbit.kernels.triton_splitk import _store, finish, split_buffers, split_k


@triton.jit
def _codes(codes_ptr, offs_n, mask_n, t, C, BC: tl.constexpr, EVEN: tl.constexpr):
    """Codes (BN, BC) int32 in [0, 2**16) of column tile t of the (out, C = G * M) code matrix."""
    cols = t * BC + tl.arange(0, BC)
    c = _load(codes_ptr + offs_n[:, None] * C + cols[None, :], mask_n[:, None] & (cols < C)[None, :], EVEN)
    return c.to(tl.int32) & 0xFFFF  # int16 storage of codes >= 2**15 reads negative


@triton.jit
def _aqlm_gemv(x_ptr, codes_ptr, table_ptr, scales_ptr, bias_ptr, y_ptr, part_ptr, count_ptr, N, K, C, G,
               stride_x, stride_y, stride_t,
               C_TILES: tl.constexpr, M: tl.constexpr, KC: tl.constexpr, GS: tl.constexpr, BN: tl.constexpr,
               BC: tl.constexpr, LUT: tl.constexpr, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
               EVEN: tl.constexpr, FIXUP: tl.constexpr, FENCE: tl.constexpr):
    """y[m, offs_n] (or this slice's fp32 partial) for one row m; grid (N / BN, rows, SPLIT_K).

    Column c = j * M + b of the codes is group j, codebook b. LUT: table_ptr is lut (rows, M, G, KC) fp32
    (stride_t per row); else the codebooks (M, KC, GS) fp16."""
    pid_n, m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < N
    acc = tl.zeros([BN, BC], dtype=tl.float32)
    codes = _codes(codes_ptr, offs_n, mask_n, pid_k, C, BC, EVEN)
    for t0 in range(0, C_TILES, SPLIT_K):  # constant bounds: Triton 3.6's interpreter needs them
        t = t0 + pid_k  # the last round may overrun: its loads are masked (their entries are not added)
        nxt = _codes(codes_ptr, offs_n, mask_n, tl.minimum(t + SPLIT_K, C_TILES - 1), C, BC, EVEN)
        cols = t * BC + tl.arange(0, BC)  # (BC,)
        valid = mask_n[:, None] & (cols < C)[None, :]  # (BN, BC)
        book, group = cols % M, cols // M
        if LUT:
            row = table_ptr + m * stride_t + (book * G + group) * KC  # (BC,)
            acc += _load(row[None, :] + codes, valid, EVEN).to(tl.float32)
        else:
            d = tl.arange(0, GS)  # (GS,)
            k = group[:, None] * GS + d[None, :]  # (BC, GS)
            xg = _load(x_ptr + m * stride_x + k, k < K, EVEN).to(tl.float32)
            entry = (book[None, :] * KC + codes) * GS  # (BN, BC)
            vec = _load(table_ptr + entry[:, :, None] + d[None, None, :], valid[:, :, None], EVEN)  # (BN, BC, GS)
            acc += tl.sum(vec.to(tl.float32) * xg[None, :, :], axis=2)
        codes = nxt
    s = _load(scales_ptr + offs_n, mask_n, EVEN).to(tl.float32)
    y = s * tl.sum(acc, axis=1)  # (BN,)
    _store(y_ptr, part_ptr, count_ptr, bias_ptr, y, m * stride_y + offs_n, mask_n, offs_n, mask_n,
           pid_n + m * tl.num_programs(0), pid_k, tl.num_programs(1) * stride_y, SPLIT_K, HAS_BIAS, FIXUP, FENCE)


# H100 sweep (benchmarks/results/sweep-h100-kern6-run2.json), 1 row: 16-bit tables and BC 16 (a warp's
# lanes on 32 rows of one column, so one instruction's lookups share one 512-byte table) were best for 2x8
AQLM_CONFIG = {"lut": {"BN": 256, "BC": 16, "num_warps": 4, "num_stages": 1, "waves": 4, "LUT16": True},
               "gather": {"BN": 32, "BC": 32, "num_warps": 4, "num_stages": 1, "waves": 4}}


def lookup_table(x: torch.Tensor, codebooks: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x (rows, in), codebooks (M, K, g) -> lut (rows, M, G, K) in `dtype`: every x slice dot every codeword."""
    rows, cols = x.shape
    m, _, g = codebooks.shape
    xg = F.pad(x.to(dtype), (0, -cols % g)).view(rows, 1, -1, g)  # (rows, 1, G, g), zero-padded
    return torch.matmul(xg, codebooks.to(dtype).transpose(1, 2)).contiguous()  # (rows, M, G, K)


def aqlm_gemv(
    x: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
    kernel: str = "lut", config: dict | None = None,
) -> torch.Tensor:
    """x (rows, in) fp16/bf16 @ W^T + bias -> (rows, out) in x's dtype; codes (out, G, M) uint8 or int16."""
    x = x.contiguous()
    rows, cols = x.shape
    out_features, groups, m = codes.shape
    kc, g = codebooks.shape[1:]
    cfg = dict(AQLM_CONFIG[kernel] | (config or {}))
    waves, split = cfg.pop("waves"), cfg.pop("SPLIT_K", None)
    lut_dtype = x.dtype if cfg.pop("LUT16", False) else torch.float32  # 16-bit: half the table bytes
    table = lookup_table(x, codebooks, lut_dtype) if kernel == "lut" else codebooks.contiguous()
    c = groups * m
    c_tiles = math.ceil(c / cfg["BC"])
    n_tiles = math.ceil(out_features / cfg["BN"])
    split = split or split_k(n_tiles * rows, c_tiles, x.device, waves)
    even = out_features % cfg["BN"] == 0 and c % cfg["BC"] == 0 and c_tiles % split == 0 and cols == groups * g
    y = torch.empty((rows, out_features), dtype=x.dtype, device=x.device)  # (rows, out)
    part, counters, fix = split_buffers(y, split, n_tiles * rows, cfg.pop("FIXUP", True))
    _aqlm_gemv[(n_tiles, rows, split)](
        x, codes.contiguous(), table, scales, bias if bias is not None else scales, y, part, counters,
        out_features, cols, c, groups, x.stride(0), out_features, table.stride(0) if kernel == "lut" else 0,
        C_TILES=c_tiles, M=m, KC=kc, GS=g, LUT=kernel == "lut", SPLIT_K=split, HAS_BIAS=bias is not None,
        EVEN=even, **fix, **cfg)
    return finish(y, part, bias, split, fix)
