"""Triton int8 x int8 -> int32 tensor-core matmul for W8A8 layers (formats.int8_rows), any row count.

torch._int_mm (cuBLASLt) refuses 16 rows or fewer on CUDA; this kernel takes every shape and applies
both scales in its epilogue: y = (x_q w_q^T) * s_x * s_w, float32 (rows, out), as the reference does.
Importing this module imports Triton: callers import it lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _w8a8_mm(x_ptr, w_ptr, xs_ptr, ws_ptr, y_ptr, M, N, K, stride_x, stride_w, stride_y, K_TILES: tl.constexpr, BM: tl.constexpr,
             BN: tl.constexpr, BK: tl.constexpr):
    """(BM, BN) tile of y; grid (M / BM, N / BN)."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    mask_m, mask_n = offs_m < M, offs_n < N
    acc = tl.zeros([BM, BN], dtype=tl.int32)
    for t in range(0, K_TILES):  # constant bounds: Triton 3.6's interpreter needs them
        k = t * BK + offs_k
        xt = tl.load(x_ptr + offs_m[:, None] * stride_x + k[None, :], mask=mask_m[:, None] & (k < K)[None, :],
                     other=0)  # (BM, BK) int8
        wt = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * stride_w + k[None, :],
                     mask=mask_n[:, None] & (k < K)[None, :], other=0)  # (BN, BK) int8
        acc += tl.dot(xt, tl.trans(wt), out_dtype=tl.int32)
    ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    y = acc.to(tl.float32) * tl.load(xs_ptr).to(tl.float32) * ws[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_y + offs_n[None, :], y, mask=mask_m[:, None] & mask_n[None, :])


def w8a8_matmul(x_q: torch.Tensor, x_scale: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """(rows, in) int8 x (out, in) int8 -> (rows, out) float32 with both scales applied."""
    x_q, qweight = x_q.contiguous(), qweight.contiguous()
    rows, cols = x_q.shape
    out_features = qweight.shape[0]
    bm = 16 if rows <= 16 else 32 if rows <= 32 else 64 if rows <= 64 else 128
    bn, bk = (64, 128) if rows <= 64 else (128, 128)
    y = torch.empty((rows, out_features), dtype=torch.float32, device=x_q.device)  # (rows, out)
    grid = (math.ceil(rows / bm), math.ceil(out_features / bn))
    _w8a8_mm[grid](x_q, qweight, x_scale, w_scale, y, rows, out_features, cols, x_q.stride(0), qweight.stride(0),
                   y.stride(0), K_TILES=math.ceil(cols / bk), BM=bm, BN=bn, BK=bk, num_warps=4 if bm <= 64 else 8, num_stages=3)
    return y
