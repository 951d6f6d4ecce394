"""CUDA-core matrix-vector kernel for few activation rows over the group-wise integer format.

At one activation row a product reads every weight once and does two flops with it: the time is the
weight bytes over memory bandwidth if dequantization costs fewer instructions than the bytes take to
arrive. Tensor cores do not help there, and moving dequantized tiles into their operand layout costs
shared-memory traffic (what bounds triton_int._mm_tc at one row), so this kernel stays in the layout of
the weight load: each thread unpacks its own words and accumulates in registers, with one cross-thread
sum per program at the end.

Codes become fp32 without an int -> float conversion. Code c shifted to mantissa bits [p, p + b) and OR-ed
with the exponent of 2**(23 - p) reads as exactly 2**(23 - p) + c (FasterTransformer's "magic number"
conversion, Kim et al. 2022, moved to fp32). Codes already inside the window of small offsets (up to
4096; 32768 for 8-bit codes), small enough that fp32 sums stay far below bf16 rounding, need no shift, and
one shift places each further chunk of neighbours (`_place`: int4 two shifts per word), so a code costs
about one LOP3 and one FFMA. The offsets, zero and scale are applied once per word column and
K tile (one tile lies in one quantization group):

    y[n] += s[n] * sum_w (sum_j (off_j + c[n, w, j]) x[w, j] - sum_j off_j x[w, j] - z[n] sum_j x[w, j]).

Units of UW words hold UC whole codes (UW = 3 for 3-bit codes, two of which straddle words). When the
output alone cannot fill the GPU, K is split across programs (partials summed: triton_splitk).
Importing this module imports Triton: callers import it lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lowbit.formats.word_tiles import row_shaped
from lowbit.kernels.triton_int import _load, _unit_words, unit_shape
from lowbit.kernels.triton_ops import gemv_tile_units
from lowbit.kernels.triton_splitk import _store, finish, interpreting, split_buffers, split_k


@triton.constexpr_function
def _place(bits, j):
    """(word, shift, new position) that brings whole code j of a unit to fp32 mantissa bits [pos, pos + bits).

    The window [23 - e, 23 - bits] keeps offsets 2**(23 - pos) <= 2**e, whose fp32 rounding (2**(e - 24) |x|
    per FFMA) stays about 2**-14 of the signal (|code - zero| |x|, about 2**(bits - 2) |x|): e = 12 for 2..4-bit
    codes, 15 for 8-bit ones. Codes already in the window stay where they are; the codes above and below
    them are taken from the top down in chunks that one shift lands in that window (int4: codes 3, 4 unshifted,
    0-2 and 5-7 one shift each; 2 shifts per word instead of 3)."""
    word, local = divmod(bits * j, 32)
    lo, hi = (8 if bits == 8 else 11), 23 - bits
    if lo <= local <= hi:
        return word, 0, local
    first = (32 * word + bits - 1) // bits  # whole codes of this word: first .. last
    last = (32 * (word + 1) - bits) // bits
    if local > hi:
        top = last
        while True:  # chunks of the codes above the window, from the top
            shift = hi - (bits * top - 32 * word)
            if local + shift >= lo:
                return word, shift, local + shift
            top -= (hi - lo) // bits + 1
    top = max(i for i in range(first, last + 1) if bits * i - 32 * word < lo)
    while True:  # the codes below the window
        shift = hi - (bits * top - 32 * word)
        if local + shift >= lo:
            return word, shift, local + shift
        top -= (hi - lo) // bits + 1


@triton.constexpr_function
def _code_offset(bits, j):
    """off_j of _code_f32: 2**(23 - new position), or 2**bits for a code straddling two words (3 bits)."""
    if (bits * j) % 32 + bits > 32:
        return 1 << bits
    return 1 << (23 - _place(bits, j)[2])


@triton.jit
def _code_f32(w0, w1, w2, J: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """Code J of a unit (words w0, w1, w2) as the fp32 value off_J + code (see the module docstring)."""
    P: tl.constexpr = BITS * J  # bit position in the unit
    I: tl.constexpr = P // 32
    OFF: tl.constexpr = P % 32
    if I == 0:
        w = w0
    elif I == 1:
        w = w1
    else:
        w = w2
    if OFF + BITS > 32:  # straddles words I and I + 1 (3 bits only): bring the code to bits [23 - BITS, 23)
        if I == 0:
            nxt = w1
        else:
            nxt = w2
        lo = (w.to(tl.uint32, bitcast=True) >> OFF).to(tl.int32, bitcast=True)
        v = (lo << (23 - BITS)) | (nxt << (55 - BITS - OFF))
        NEWPOS: tl.constexpr = 23 - BITS
    else:
        S: tl.constexpr = _place(BITS, J)[1]
        if S > 0:
            v = w << S
        elif S < 0:
            v = w >> (-S)  # sign bits land above the mask
        else:
            v = w
        NEWPOS: tl.constexpr = _place(BITS, J)[2]
    MASK: tl.constexpr = ((1 << BITS) - 1) << NEWPOS
    MAGIC: tl.constexpr = (150 - NEWPOS) << 23  # exponent of 2 ** (23 - NEWPOS)
    if ASM:  # one LOP3 (ptxas splits (v & MASK) | MAGIC into two when both are immediates)
        bits = tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, 0xEA;", "=r,r,r,r",
                                         [v, tl.full(v.shape, MASK, tl.int32), tl.full(v.shape, MAGIC, tl.int32)],
                                         dtype=tl.int32, is_pure=True, pack=1)
    else:
        bits = (v & MASK) | MAGIC
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _x_f32(x_ptr, xw, k, K, J: tl.constexpr, X64: tl.constexpr, EVEN: tl.constexpr):
    """x[k] (k = unit * UC + J) as fp32. With X64, xw holds the int64 word of inputs k - J % 4 .. k - J % 4 + 3
    (one 8-byte load for four inputs instead of four 2-byte ones)."""
    if X64:
        if J % 4 < 2:
            w32 = xw.to(tl.int32)  # the word's low half: inputs 0, 1
        else:
            w32 = (xw >> 32).to(tl.int32)
        if x_ptr.dtype.element_ty == tl.bfloat16:  # bf16 bits are the top half of the fp32 ones
            if J % 2 == 0:
                xj = (w32 << 16).to(tl.float32, bitcast=True)
            else:
                xj = (w32 & -65536).to(tl.float32, bitcast=True)  # 0xFFFF0000
        else:
            xj = (w32 >> (16 * (J % 2))).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        xj = _load(x_ptr + k, k < K, EVEN).to(tl.float32)
    return xj


@triton.jit
def _tile(w_ptr, scale_ptr, zero_ptr, offs_n, mask_n, wpr, n_groups, G, t, BITS: tl.constexpr, UW: tl.constexpr,
          BU: tl.constexpr, BK: tl.constexpr, HAS_ZERO: tl.constexpr, EVEN: tl.constexpr, TILE: tl.constexpr):
    """Words (three (BN, BU) int32 tensors; one when UW == 1) and scale, zero (BN,) fp32 of K tile t; the words in
    row order, or (TILE > 0) in tile order (3-bit chunks hold whole units)."""
    w0, w1, w2 = _unit_words(w_ptr, offs_n, mask_n, wpr, t * BU, BU, UW, EVEN, TILE)  # (BN, BU) int32 each
    g = (t * BK) // G
    s = _load(scale_ptr + offs_n * n_groups + g, mask_n, EVEN).to(tl.float32)  # (BN,)
    if HAS_ZERO:
        z = _load(zero_ptr + offs_n * n_groups + g, mask_n, EVEN).to(tl.float32)
    else:
        z = tl.full([offs_n.shape[0]], 1 << (BITS - 1), tl.float32)
    return w0, w1, w2, s, z


@triton.jit
def _xwords(x_row, t, BU: tl.constexpr, UC: tl.constexpr):
    """Tile t's inputs as int64 words of four (BU,) tensors: word i of every unit (UC // 4 <= 4 of them used)."""
    units = t * BU + tl.arange(0, BU)  # (BU,)
    ptr = x_row.to(tl.pointer_type(tl.int64)) + units * (UC // 4)
    xa = tl.load(ptr)
    xb = xa
    xc = xa
    xd = xa
    if UC >= 8:
        xb = tl.load(ptr + 1)
    if UC >= 16:
        xc = tl.load(ptr + 2)
        xd = tl.load(ptr + 3)
    return xa, xb, xc, xd


@triton.jit
def _no_xwords(BU: tl.constexpr):
    """Placeholders for _xwords' words when the inputs are loaded inside the tile (XMODE 0 and 1)."""
    xw = tl.zeros([BU], dtype=tl.int64)
    return xw, xw, xw, xw


@triton.jit
def _tile_sum(acc, w0, w1, w2, s, z, xa, xb, xc, xd, x_row, t, K, BITS: tl.constexpr, UC: tl.constexpr,
              BU: tl.constexpr, SIGNED8: tl.constexpr, EVEN: tl.constexpr, ASM: tl.constexpr, XMODE: tl.constexpr):
    """acc (BN, BU) plus K tile t's products: words w0..w2 (BN, BU), scale and zero (BN,); inputs as int64
    words xa..xd (XMODE 2), loaded here as words (1) or one by one (0)."""
    if SIGNED8:  # int8 codes q -> q + 128 in every byte
        w0 = w0 ^ -2139062144  # 0x80808080
    units = t * BU + tl.arange(0, BU)  # (BU,)
    p = tl.zeros(acc.shape, dtype=tl.float32)
    xs = tl.zeros([BU], dtype=tl.float32)
    xoff = tl.zeros([BU], dtype=tl.float32)
    xw = tl.zeros([BU], dtype=tl.int64)
    for j in tl.static_range(UC):
        if XMODE == 1 and j % 4 == 0:
            xw = tl.load(x_row.to(tl.pointer_type(tl.int64)) + units * (UC // 4) + j // 4)
        if XMODE == 2:
            if j // 4 == 0:
                xw = xa
            elif j // 4 == 1:
                xw = xb
            elif j // 4 == 2:
                xw = xc
            else:
                xw = xd
        xj = _x_f32(x_row, xw, units * UC + j, K, j, XMODE > 0, EVEN)
        p += _code_f32(w0, w1, w2, j, BITS, ASM) * xj[None, :]
        xs += xj
        xoff += _code_offset(BITS, j) * xj
    return acc + s[:, None] * (p - xoff[None, :] - z[:, None] * xs[None, :])


@triton.jit
def _gemv(x_ptr, w_ptr, scale_ptr, zero_ptr, bias_ptr, y_ptr, part_ptr, count_ptr, N, K, wpr, n_groups, G,
          stride_x, stride_y,
          K_TILES: tl.constexpr, BITS: tl.constexpr, UC: tl.constexpr, UW: tl.constexpr, BN: tl.constexpr,
          BU: tl.constexpr, SPLIT_K: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
          SIGNED8: tl.constexpr, EVEN: tl.constexpr, ASM: tl.constexpr, FIXUP: tl.constexpr, FENCE: tl.constexpr,
          XMODE: tl.constexpr, PREFETCH: tl.constexpr, STAGES: tl.constexpr, TILE: tl.constexpr):
    """y[m, offs_n] (or this K slice's fp32 partial) for one row m; grid (N / BN, rows, SPLIT_K).

    STAGES > 0: Triton's software pipeliner copies the next STAGES - 1 tiles' words, qparams and inputs
    into shared memory with cp.async while this one is computed (no registers held for tiles in flight).
    STAGES 0: the next PREFETCH (1 or 2) tiles are loaded ahead into registers. Inputs: XMODE 0 loads them
    one by one, 1 as int64 words of four (whole tiles, aligned rows), 2 as int64 words loaded with the
    weights."""
    pid_n, m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < N
    BK: tl.constexpr = BU * UC
    acc = tl.zeros([BN, BU], dtype=tl.float32)
    x_row = x_ptr + m * stride_x
    if STAGES > 0:
        for t0 in tl.range(0, K_TILES, SPLIT_K, num_stages=STAGES):  # constant bounds (Triton's interpreter)
            t = t0 + pid_k  # the last round may overrun: its loads are masked to zero
            w0, w1, w2, s, z = _tile(w_ptr, scale_ptr, zero_ptr, offs_n, mask_n, wpr, n_groups, G, t, BITS, UW, BU,
                                     BK, HAS_ZERO, EVEN, TILE)
            xa, xb, xc, xd = _no_xwords(BU)
            if XMODE == 2:
                xa, xb, xc, xd = _xwords(x_row, t, BU, UC)
            acc = _tile_sum(acc, w0, w1, w2, s, z, xa, xb, xc, xd, x_row, t, K, BITS, UC, BU, SIGNED8, EVEN, ASM,
                            XMODE)
    else:
        w0, w1, w2, s, z = _tile(w_ptr, scale_ptr, zero_ptr, offs_n, mask_n, wpr, n_groups, G, pid_k, BITS, UW,
                                 BU, BK, HAS_ZERO, EVEN, TILE)
        if PREFETCH == 2:  # the tile after: (f0, f1, f2, s_f, z_f) moves to the next tile each round
            t_f = tl.minimum(pid_k + SPLIT_K, K_TILES - 1)
            f0, f1, f2, s_f, z_f = _tile(w_ptr, scale_ptr, zero_ptr, offs_n, mask_n, wpr, n_groups, G, t_f, BITS,
                                         UW, BU, BK, HAS_ZERO, EVEN, TILE)
        xa, xb, xc, xd = _no_xwords(BU)
        if XMODE == 2:
            xa, xb, xc, xd = _xwords(x_row, pid_k, BU, UC)
        for t0 in range(0, K_TILES, SPLIT_K):  # constant bounds: Triton 3.6's interpreter needs them
            t = t0 + pid_k  # the last round may overrun: its loads are masked to zero
            t_next = tl.minimum(t + PREFETCH * SPLIT_K, K_TILES - 1)  # clamped: the last prefetches are never used
            n0, n1, n2, s_next, z_next = _tile(w_ptr, scale_ptr, zero_ptr, offs_n, mask_n, wpr, n_groups, G,
                                               t_next, BITS, UW, BU, BK, HAS_ZERO, EVEN, TILE)
            na, nb, nc, nd = xa, xb, xc, xd
            if XMODE == 2:
                na, nb, nc, nd = _xwords(x_row, tl.minimum(t + SPLIT_K, K_TILES - 1), BU, UC)
            acc = _tile_sum(acc, w0, w1, w2, s, z, xa, xb, xc, xd, x_row, t, K, BITS, UC, BU, SIGNED8, EVEN, ASM,
                            XMODE)
            if PREFETCH == 2:
                w0, w1, w2, s, z = f0, f1, f2, s_f, z_f
                f0, f1, f2, s_f, z_f = n0, n1, n2, s_next, z_next
            else:
                w0, w1, w2, s, z = n0, n1, n2, s_next, z_next
            xa, xb, xc, xd = na, nb, nc, nd
    y = tl.sum(acc, axis=1)  # (BN,)
    _store(y_ptr, part_ptr, count_ptr, bias_ptr, y, m * stride_y + offs_n, mask_n, offs_n, mask_n,
           pid_n + m * tl.num_programs(0), pid_k, tl.num_programs(1) * stride_y, SPLIT_K, HAS_BIAS, FIXUP, FENCE)


# H100 sweep, int4 g128 (kern7). H200 sweep (kern9, docs/kern9.md): PREFETCH 2 ran 9% slower on 4096x14336, and
# STAGES 3-6 (software pipeliner) slower at every launch shape on the large int4/int2 shapes, 2-3% faster for
# int8 on two shapes: the kernel is not waiting on memory, so one tile ahead in registers stays the default.
GEMV_CONFIG = {"BN": 128, "BK": 128, "num_warps": 4, "num_stages": 1, "waves": 4, "PREFETCH": 1, "STAGES": 0}
GEMV_CONFIG_8BIT = {"BN": 64}  # int8 codes: more bytes per code, fewer outputs per program


def int_group_gemv(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
    bias: torch.Tensor | None, bits: int, group_size: int, signed8: bool = False, config: dict | None = None,
) -> torch.Tensor:
    """x (rows, in) fp16/bf16 @ dequant(qweight)^T + bias -> (rows, out) in x's dtype, one program row per x row."""
    x = x.contiguous()
    rows, cols = x.shape
    qweight, tile = row_shaped(qweight)  # row order, or tile order's words under a row-shaped view
    out_features, wpr = qweight.shape
    uc, uw = unit_shape(bits)
    cfg = dict(GEMV_CONFIG | (GEMV_CONFIG_8BIT if bits == 8 else {}) | (config or {}))
    waves, bk, split = cfg.pop("waves"), cfg.pop("BK"), cfg.pop("SPLIT_K", None)
    bu = gemv_tile_units(bits, group_size, cols, bk)
    if bu is None:
        raise ValueError(f"group size {group_size} does not hold whole K tiles of {bits}-bit codes")
    k_tiles = math.ceil(cols / (bu * uc))
    n_blocks = math.ceil(out_features / cfg["BN"])
    split = split or split_k(n_blocks * rows, k_tiles, x.device, waves)
    even = out_features % cfg["BN"] == 0 and cols % (bu * uc) == 0 and k_tiles % split == 0
    y = torch.empty((rows, out_features), dtype=x.dtype, device=x.device)  # (rows, out)
    part, counters, fix = split_buffers(y, split, n_blocks * rows, cfg.pop("FIXUP", True))
    x64 = even and x.stride(0) % 4 == 0 and x.data_ptr() % 8 == 0  # unmasked 8-byte input loads
    xmode = min(cfg.pop("XMODE", 2), 2 if uc <= 16 else 1)  # _xwords: at most 16 codes per unit
    xmode = xmode if x64 else 0
    _gemv[(n_blocks, rows, split)](
        x, qweight, scale, zero if zero is not None else scale, bias if bias is not None else scale, y, part,
        counters, out_features, cols, wpr, scale.shape[1], group_size, x.stride(0), out_features, K_TILES=k_tiles,
        BITS=bits, UC=uc, UW=uw, BU=bu, SPLIT_K=split, HAS_ZERO=zero is not None, HAS_BIAS=bias is not None,
        SIGNED8=signed8, EVEN=even, ASM=cfg.pop("ASM", not interpreting()), XMODE=xmode,
        PREFETCH=cfg.pop("PREFETCH"), STAGES=cfg.pop("STAGES"), TILE=tile, **fix, **cfg)
    return finish(y, part, bias, split, fix)
