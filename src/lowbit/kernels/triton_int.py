"""Triton kernels for the group-wise integer format (formats.int_group) times fp16/bf16 activations.

They read the canonical checkpoint layout directly (no repacking): qweight (out, words) int32, codes packed
along the input dim, low bits first. A *unit* is the fewest whole words that hold whole codes: one word of
32 / b codes for b in {2, 4, 8}, three words of 32 codes for b = 3 (codes 10 and 21 straddle two words).
The kernels load (BN, units) word tiles and take code j of every unit in an unrolled loop over j (its
word and shift are compile-time constants), so no tensor is ever reshaped.

Two paths, both splitting K across programs (fp32 atomics) when the output alone cannot fill the GPU:
  * split-K matrix-vector (few rows): one program per (activation row, output block, K slice), CUDA cores;
  * tiled (many rows): (BM, BN) output tiles on tensor cores through tl.dot.
When a K tile lies inside one quantization group, the scale and zero are applied once per tile and output
(y += s * (sum_k q x - z * sum_k x)), so the inner loop only converts codes; otherwise every weight is
dequantized in the tile (slower, any group size). The same kernels serve int8 weight-only layers (int8
bytes seen as int32 words, one group per row, codes ^ 0x80 so that the implicit zero 128 applies).
Importing this module imports Triton: callers import it lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _load_words(w_ptr, offs_n, mask_n, wpr, units, UW: tl.constexpr):
    """The words of units `units` (BU,) of rows offs_n (BN,): three (BN, BU) int32 tiles (w1, w2 only for UW 3)."""
    row = w_ptr + offs_n[:, None].to(tl.int64) * wpr + units[None, :] * UW  # (BN, BU)
    mask = mask_n[:, None] & (units[None, :] * UW < wpr)
    w0 = tl.load(row, mask=mask, other=0)
    if UW == 1:
        return w0, w0, w0
    return w0, tl.load(row + 1, mask=mask, other=0), tl.load(row + 2, mask=mask, other=0)


@triton.jit
def _code(w0, w1, w2, J: tl.constexpr, BITS: tl.constexpr, UW: tl.constexpr, SIGNED8: tl.constexpr):
    """Code J of every unit, (BN, BU) int32; J, and so its word and bit offset, is known at compile time."""
    MASK: tl.constexpr = (1 << BITS) - 1
    if UW == 1:  # (one return at the end: Triton compiles the code after an early return too)
        c = (w0 >> (J * BITS)) & MASK
        if SIGNED8:
            c = c ^ 0x80
    else:
        WI: tl.constexpr = (J * BITS) // 32
        OFF: tl.constexpr = (J * BITS) % 32
        if WI == 0:
            lo, nxt = w0, w1
        elif WI == 1:
            lo, nxt = w1, w2
        else:
            lo, nxt = w2, w2
        if OFF + BITS <= 32:
            c = (lo >> OFF) & MASK
        else:  # the code straddles into the next word
            LOW: tl.constexpr = (1 << (32 - OFF)) - 1
            c = ((lo >> OFF) & LOW) | ((nxt << (32 - OFF)) & MASK)
    return c


@triton.jit
def _qparams(scale_ptr, zero_ptr, offs, mask, n_groups, g, BITS: tl.constexpr, HAS_ZERO: tl.constexpr):
    """Scale and zero (fp32) at (offs rows, group g); offs and g broadcast to one shape."""
    s = tl.load(scale_ptr + offs * n_groups + g, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZERO:
        z = tl.load(zero_ptr + offs * n_groups + g, mask=mask, other=0.0).to(tl.float32)
    else:
        z = tl.full(s.shape, 1 << (BITS - 1), tl.float32)
    return s, z


@triton.jit
def _splitk_mv(x_ptr, w_ptr, scale_ptr, zero_ptr, bias_ptr, y_ptr, N, K, wpr, n_groups, G, stride_x,
               stride_y, K_TILES: tl.constexpr, BITS: tl.constexpr, UC: tl.constexpr, UW: tl.constexpr,
               BN: tl.constexpr, BU: tl.constexpr, SPLIT_K: tl.constexpr, PER_TILE: tl.constexpr,
               HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, SIGNED8: tl.constexpr):
    """y[m, n] (+)= sum_k x[m, k] w[n, k] over this program's K slice; grid (rows, N / BN, SPLIT_K).

    Rows vary fastest in the grid, so the programs that share a weight tile run together (L2 hits).
    """
    m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < N
    acc = tl.zeros([BN, BU], dtype=tl.float32)  # reduced over units once, at the end
    for t0 in range(0, K_TILES, SPLIT_K):  # constant bounds: Triton 3.6's interpreter needs them
        t = t0 + pid_k  # the last round may overrun: its loads are masked to zero
        units = t * BU + tl.arange(0, BU)
        w0, w1, w2 = _load_words(w_ptr, offs_n, mask_n, wpr, units, UW)
        if PER_TILE:
            part = tl.zeros([BN, BU], dtype=tl.float32)
            xs = tl.zeros([BU], dtype=tl.float32)
            for j in tl.static_range(UC):
                k = units * UC + j
                xj = tl.load(x_ptr + m * stride_x + k, mask=k < K, other=0.0).to(tl.float32)  # (BU,)
                part += _code(w0, w1, w2, j, BITS, UW, SIGNED8).to(tl.float32) * xj[None, :]
                xs += xj
            s, z = _qparams(scale_ptr, zero_ptr, offs_n, mask_n & (t < K_TILES), n_groups, (t * BU * UC) // G,
                            BITS, HAS_ZERO)
            acc += s[:, None] * part - (s * z)[:, None] * xs[None, :]
        else:
            for j in tl.static_range(UC):
                k = units * UC + j
                xj = tl.load(x_ptr + m * stride_x + k, mask=k < K, other=0.0).to(tl.float32)
                s, z = _qparams(scale_ptr, zero_ptr, offs_n[:, None], mask_n[:, None] & (k < K)[None, :],
                                n_groups, (k // G)[None, :], BITS, HAS_ZERO)
                acc += (_code(w0, w1, w2, j, BITS, UW, SIGNED8).to(tl.float32) - z) * s * xj[None, :]
    y = tl.sum(acc, axis=1)  # (BN,)
    if HAS_BIAS:
        y += tl.where(pid_k == 0, tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32), 0.0)
    out = y_ptr + m * stride_y + offs_n
    if SPLIT_K == 1:
        tl.store(out, y.to(y_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.atomic_add(out, y, mask=mask_n)


@triton.jit
def _tiled_mm(x_ptr, w_ptr, scale_ptr, zero_ptr, bias_ptr, y_ptr, M, N, K, wpr, n_groups, G, stride_x,
              stride_y, K_TILES: tl.constexpr, BITS: tl.constexpr, UC: tl.constexpr, UW: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BU: tl.constexpr, SPLIT_K: tl.constexpr,
              PER_TILE: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, SIGNED8: tl.constexpr):
    """(BM, BN) tile of y = x w^T on tensor cores; grid (M / BM, N / BN, SPLIT_K).

    Code j of each unit meets activation columns unit * UC + j: one (BM, BU) x (BU, BN) product per j.
    """
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_m, mask_n = offs_m < M, offs_n < N
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for t0 in range(0, K_TILES, SPLIT_K):  # constant bounds: Triton 3.6's interpreter needs them
        t = t0 + pid_k  # the last round may overrun: its loads are masked to zero
        units = t * BU + tl.arange(0, BU)
        w0, w1, w2 = _load_words(w_ptr, offs_n, mask_n, wpr, units, UW)
        part = tl.zeros([BM, BN], dtype=tl.float32)
        xs = tl.zeros([BM], dtype=tl.float32)
        for j in tl.static_range(UC):
            k = units * UC + j
            xj = tl.load(x_ptr + offs_m[:, None] * stride_x + k[None, :], mask=mask_m[:, None] & (k < K)[None, :],
                         other=0.0)  # (BM, BU)
            c = _code(w0, w1, w2, j, BITS, UW, SIGNED8)
            if PER_TILE:  # codes < 256 are exact in fp16 and bf16
                part = tl.dot(xj, tl.trans(c.to(xj.dtype)), part)
                xs += tl.sum(xj.to(tl.float32), axis=1)
            else:
                s, z = _qparams(scale_ptr, zero_ptr, offs_n[:, None], mask_n[:, None] & (k < K)[None, :],
                                n_groups, (k // G)[None, :], BITS, HAS_ZERO)
                part = tl.dot(xj, tl.trans(((c.to(tl.float32) - z) * s).to(xj.dtype)), part)
        if PER_TILE:
            s, z = _qparams(scale_ptr, zero_ptr, offs_n, mask_n & (t < K_TILES), n_groups, (t * BU * UC) // G,
                            BITS, HAS_ZERO)
            acc += s[None, :] * (part - xs[:, None] * z[None, :])
        else:
            acc += part
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, bias[None, :], 0.0)
    out = y_ptr + offs_m[:, None] * stride_y + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out, acc, mask=mask)


def unit_shape(bits: int) -> tuple[int, int]:
    """(codes, words) per unit: the fewest whole int32 words that hold whole codes."""
    words = bits // math.gcd(bits, 32)
    return 32 * words // bits, words


def _block_units(path: str, target_k: int, group_size: int, in_features: int, codes: int) -> tuple[int, bool]:
    """Units per K tile, and whether each tile lies inside one quantization group (per-tile qparams).

    The tiled path needs at least 16 units (a tensor-core product's depth); split-K takes the largest
    power-of-two tile (up to target_k) that divides the group.
    """
    if path == "tiled":
        units = max(16, target_k // codes)
        return units, group_size >= in_features or group_size % (units * codes) == 0
    if group_size >= in_features:
        return max(target_k // codes, 1), True
    bk = group_size & -group_size  # largest power of two dividing the group size
    if bk >= codes:
        return max(min(bk, target_k) // codes, 1), True
    return max(target_k // codes, 1), False


def _split_k(programs: int, k_tiles: int, device: torch.device) -> int:
    """K slices so that about four waves of programs fill the GPU (1 when the output already does)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    split = 1
    while programs * split * 2 <= 4 * sms and split * 2 <= k_tiles:
        split *= 2
    return split


def _tiled_config(rows: int) -> dict[str, int]:
    if rows <= 16:
        return {"BM": 16, "BN": 64, "BK": 128, "num_warps": 4, "num_stages": 4}
    if rows <= 32:
        return {"BM": 32, "BN": 64, "BK": 128, "num_warps": 4, "num_stages": 4}
    if rows <= 64:
        return {"BM": 64, "BN": 64, "BK": 128, "num_warps": 4, "num_stages": 3}
    return {"BM": 128, "BN": 64, "BK": 128, "num_warps": 8, "num_stages": 3}


def int_group_matmul(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
    bias: torch.Tensor | None, bits: int, group_size: int, path: str, signed8: bool = False,
) -> torch.Tensor:
    """x (rows, in) fp16/bf16 @ dequant(qweight)^T + bias -> (rows, out) in x's dtype; path 'splitk' or 'tiled'."""
    x = x.contiguous()
    rows, cols = x.shape
    out_features, wpr = qweight.shape
    n_groups = scale.shape[1]
    uc, uw = unit_shape(bits)
    cfg = {"BN": 64, "BK": 256, "num_warps": 4, "num_stages": 3} if path == "splitk" else _tiled_config(rows)
    bu, per_tile = _block_units(path, cfg.pop("BK"), group_size, cols, uc)
    k_tiles = math.ceil(cols / (bu * uc))
    blocks = math.ceil(out_features / cfg["BN"]) * (rows if path == "splitk" else math.ceil(rows / cfg["BM"]))
    split = _split_k(blocks, k_tiles, x.device)
    y = torch.zeros if split > 1 else torch.empty
    y = y((rows, out_features), dtype=torch.float32 if split > 1 else x.dtype, device=x.device)  # (rows, out)
    args = (x, qweight, scale, zero if zero is not None else scale, bias if bias is not None else scale, y)
    flags = dict(K_TILES=k_tiles, BITS=bits, UC=uc, UW=uw, BU=bu, SPLIT_K=split, PER_TILE=per_tile,
                 HAS_ZERO=zero is not None, HAS_BIAS=bias is not None, SIGNED8=signed8, **cfg)
    if path == "splitk":
        grid = (rows, math.ceil(out_features / cfg["BN"]), split)
        _splitk_mv[grid](*args, out_features, cols, wpr, n_groups, group_size, x.stride(0), y.stride(0), **flags)
    else:
        grid = (math.ceil(rows / cfg["BM"]), math.ceil(out_features / cfg["BN"]), split)
        _tiled_mm[grid](*args, rows, out_features, cols, wpr, n_groups, group_size, x.stride(0), y.stride(0),
                        **flags)
    return y.to(x.dtype)
