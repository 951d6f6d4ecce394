"""Triton kernels for the group-wise integer format (formats.int_group) times fp16/bf16 activations.

They read the canonical checkpoint layout directly (no repacking): qweight (out, words) int32, codes packed
along the input dim, low bits first. A *unit* is the fewest whole words that hold whole codes: one word of
32 / b codes for b in {2, 4, 8}, three words of 32 codes for b = 3 (codes 10 and 21 straddle two words).
A (BN, BU) tile of units unpacks to (BN, BU, codes per unit) and reshapes to a (BN, BK) weight tile whose
columns are consecutive inputs, so one wide tensor-core product covers a whole K tile.

Codes become 16-bit floats without an int -> float conversion: OR-ing a code c into the bits of 1024.0
(fp16, 0x6400) or 128.0 (bf16, 0x4300) gives exactly OFFSET + c (the fp16x2 "magic number" trick of
FasterTransformer and Marlin, Frantar et al. 2024). For 4-bit codes one `lop3` per word pair makes two
such values at once (inline PTX; plain shifts and masks under Triton's interpreter). When a K tile lies in
one quantization group the tile's product is corrected once per tile and output,

    y[m, n] += s[n] * (sum_k (OFFSET + c[n, k]) x[m, k] - (OFFSET + z[n]) * sum_k x[m, k]),

so the inner loop never touches scales; otherwise (odd group sizes) every weight is dequantized first.

One kernel, `_mm_tc`, serves every row count: the weight tile is the left operand of tl.dot and the
activations the right one ("swap AB": y^T = W x^T), so up to 16 rows fill one Hopper wgmma of 64 outputs
x 16 rows (fewer rows are zero-padded; the tensor cores have time to spare in a matrix-vector product).
When the output alone cannot fill the GPU, K is split across programs (fp32 partials, summed in the same
launch by each tile's last program: triton_splitk).
The int8 weight-only op reuses them (int8 bytes seen as int32 words, one group per row, codes ^ 0x80 so
that the implicit zero 128 applies). Importing this module imports Triton: callers import it lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lowbit.formats.word_tiles import row_shaped
from lowbit.kernels import nvrtc
from lowbit.kernels.triton_splitk import _store, finish, interpreting, split_buffers, split_k
from lowbit.kernels.zero_points import whole_zeros


@triton.jit
def _tile_rows(offs_n, wpr, TILE: tl.constexpr):
    """The row part of word offsets in tile order (formats.word_tiles, chunks of TILE words): row n's word w lies at
    _tile_rows(n) + _tile_cols(w)."""
    return (offs_n // 16) * (16 * wpr) + (offs_n % 16) * TILE


@triton.jit
def _tile_cols(words, TILE: tl.constexpr):
    """The word part of word offsets in tile order (see _tile_rows), any shape."""
    return (words // TILE) * (16 * TILE) + words % TILE


@triton.jit
def _word_ptrs(w_ptr, offs_n, words, wpr, TILE: tl.constexpr):
    """Pointers (BN, BW) to words `words` (BW,) of rows offs_n, in row order or (TILE > 0) tile order."""
    if TILE:
        ptrs = w_ptr + _tile_rows(offs_n, wpr, TILE)[:, None] + _tile_cols(words, TILE)[None, :]
    else:
        ptrs = w_ptr + offs_n[:, None] * wpr + words[None, :]  # the host keeps qweight under 2**31 words
    return ptrs


@triton.jit
def _unit_words(w_ptr, offs_n, mask_n, wpr, unit0, BU: tl.constexpr, UW: tl.constexpr, EVEN: tl.constexpr,
                TILE: tl.constexpr):
    """The words (BN, BU) int32 of units unit0 .. unit0 + BU of rows offs_n: three for 3-bit units (UW 3: 32 codes
    in 3 words), else one, returned three times."""
    units = unit0 + tl.arange(0, BU)  # (BU,)
    mask = mask_n[:, None] & (units[None, :] * UW < wpr)
    w0 = _load(_word_ptrs(w_ptr, offs_n, units * UW, wpr, TILE), mask, EVEN)
    w1 = w0
    w2 = w0
    if UW == 3:
        w1 = _load(_word_ptrs(w_ptr, offs_n, units * 3 + 1, wpr, TILE), mask, EVEN)
        w2 = _load(_word_ptrs(w_ptr, offs_n, units * 3 + 2, wpr, TILE), mask, EVEN)
    return w0, w1, w2


@triton.jit
def _unpack(w_ptr, offs_n, mask_n, wpr, unit0, BU: tl.constexpr, BITS: tl.constexpr, UC: tl.constexpr,
            SIGNED8: tl.constexpr, EVEN: tl.constexpr, TILE: tl.constexpr):
    """Codes of one-word units unit0 .. unit0 + BU of rows offs_n (2, 4, 8 bits) -> (BN, BU, UC) int32 (input k =
    unit * UC + j); the words in row order, or (TILE > 0) in tile order."""
    words, _, _ = _unit_words(w_ptr, offs_n, mask_n, wpr, unit0, BU, 1, EVEN, TILE)  # (BN, BU)
    j = tl.arange(0, UC)  # code index inside a unit
    codes = (words[:, :, None] >> (j * BITS)[None, None, :]) & ((1 << BITS) - 1)
    if SIGNED8:
        codes = codes ^ 0x80
    return codes


@triton.jit
def _code3(w0, w1, w2, J: tl.constexpr):
    """Code J (0..31) of 3-bit units as int32 (BN, BU): bits 3 J .. 3 J + 2 of the words w0 w1 w2 (J = 10 and 21
    straddle two words); shifts known when compiled, so each code is a shift and a mask."""
    P: tl.constexpr = 3 * J
    OFF: tl.constexpr = P % 32
    if P // 32 == 0:
        word, nxt = w0, w1
    elif P // 32 == 1:
        word, nxt = w1, w2
    else:
        word, nxt = w2, w2
    c = word >> OFF
    if OFF > 29:
        c = c | (nxt << (32 - OFF))
    return (c & 7).to(tl.int32)


@triton.jit
def _codes3_every4(w0, w1, w2, R: tl.constexpr):
    """Codes R, R + 4, .., R + 28 of 3-bit units as _join8_tree's (BN, BU, 2, 2, 2): code R + 4 k at index k."""
    return _join8_tree(_code3(w0, w1, w2, R), _code3(w0, w1, w2, R + 4), _code3(w0, w1, w2, R + 8),
                       _code3(w0, w1, w2, R + 12), _code3(w0, w1, w2, R + 16), _code3(w0, w1, w2, R + 20),
                       _code3(w0, w1, w2, R + 24), _code3(w0, w1, w2, R + 28))


@triton.jit
def _codes3(w0, w1, w2):
    """3-bit units' words (BN, BU) each -> codes (BN, BU * 32) int32 in input order, all in registers: the joins
    place code R + 4 k at column 32 u + 4 k + R (the outer two joins pick R's bits, as in _join8)."""
    a = tl.join(tl.join(_codes3_every4(w0, w1, w2, 0), _codes3_every4(w0, w1, w2, 2)),
                tl.join(_codes3_every4(w0, w1, w2, 1), _codes3_every4(w0, w1, w2, 3)))
    return tl.reshape(a, (w0.shape[0], w0.shape[1] * 32))


@triton.jit
def _magic16(codes, DT: tl.constexpr, BITS: tl.constexpr):
    """int32 codes -> DT values OFFSET + code, exactly (see offset16); no int -> float conversion for < 8 bits."""
    if DT == tl.float16:
        v = (codes | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
    elif BITS < 8:
        v = (codes | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:  # bf16 holds 0..256 exactly but no single exponent covers 0..255: exact through fp32 (2**23 + c)
        v = ((codes | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0).to(tl.bfloat16)
    return v


def _nibble_asm(magic: str) -> str:
    """PTX: one int32 word of eight 4-bit codes -> eight 16-bit floats magic + code (two per lop3)."""
    pairs = "".join(f"lop3.b32 t{i}, s{i}, 0x000F000F, {magic}, 0xEA;\n" for i in range(4))
    return ("{ .reg .b32 s0, s1, s2, s3, t0, t1, t2, t3;\n"
            "mov.b32 s0, $8; shr.u32 s1, $8, 4; shr.u32 s2, $8, 8; shr.u32 s3, $8, 12;\n" + pairs +
            "mov.b32 {$0, $4}, t0; mov.b32 {$1, $5}, t1; mov.b32 {$2, $6}, t2; mov.b32 {$3, $7}, t3; }")


_ASM_F16 = tl.constexpr(_nibble_asm("0x64006400"))  # 1024.0 in fp16
_ASM_BF16 = tl.constexpr(_nibble_asm("0x43004300"))  # 128.0 in bf16


def _nibble_w16_asm(bf16: bool) -> str:
    """PTX: one int32 word of eight 4-bit codes ($8) -> eight 16-bit weights s (c - z), for a whole-number zero,
    two an instruction in input order (a prmt pairs code 2p with 2p + 1 so that each register is one of the
    tensor-core operand's pairs): (OFFSET + c) + -(OFFSET + z) ($9, in both halves) is exact, then bf16 takes the
    fp16 scale in two exact parts, t s_hi + round(t s_lo) rounded once ($10, $11: fma), fp16 one product ($10)."""
    magic, one, kind = ("0x43004300", "0x3F803F80", "bf16x2") if bf16 else ("0x64006400", "0x3C003C00", "f16x2")
    scale = ("fma.rn.bf16x2 u{p}, t{p}, $11, nz; fma.rn.bf16x2 t{p}, t{p}, $10, u{p};\n" if bf16 else
             "mul.rn.f16x2 t{p}, t{p}, $10;\n")
    pairs = "".join(f"prmt.b32 t{p}, $8, w4, {hex((p + 4) * 0x1100 + p * 0x11)};\n"
                    f"lop3.b32 t{p}, t{p}, 0x000F000F, {magic}, 0xEA;\n"
                    f"fma.rn.{kind} t{p}, t{p}, one, $9;\n" + scale.format(p=p) for p in range(4))
    return ("{ .reg .b32 w4, t0, t1, t2, t3, u0, u1, u2, u3, one, nz;\n"
            f"mov.b32 one, {one}; mov.b32 nz, 0x80008000; shr.u32 w4, $8, 4;\n" + pairs +
            "mov.b32 {$0, $1}, t0; mov.b32 {$2, $3}, t1; mov.b32 {$4, $5}, t2; mov.b32 {$6, $7}, t3; }")


_W16_F16 = tl.constexpr(_nibble_w16_asm(False))
_W16_BF16 = tl.constexpr(_nibble_w16_asm(True))


@triton.jit
def _nibbles_asm(words, DT: tl.constexpr):
    """4-bit words (BN, BU) -> eight DT tensors (BN, BU): OFFSET + code j for j = 0..7."""
    if DT == tl.float16:
        out = tl.inline_asm_elementwise(_ASM_F16, "=h,=h,=h,=h,=h,=h,=h,=h,r", [words], dtype=(tl.float16,) * 8,
                                        is_pure=True, pack=1)
    else:
        out = tl.inline_asm_elementwise(_ASM_BF16, "=h,=h,=h,=h,=h,=h,=h,=h,r", [words], dtype=(tl.bfloat16,) * 8,
                                        is_pure=True, pack=1)
    return out


_SUB_F16 = tl.constexpr("sub.rn.f16x2 $0, $1, $2;")
_SUB_BF16 = tl.constexpr("sub.rn.bf16x2 $0, $1, $2;")


@triton.jit
def _pair16(v):
    """(BN,) 16-bit floats -> int32 registers holding the value in both halves (a packed-pair operand)."""
    b = v.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return b | (b << 16)


@triton.jit
def _w16_qparams(s, z, DT: tl.constexpr, OFFSET: tl.constexpr):
    """A tile's fp32 scales and whole-number zeros (BN,) -> DT values -(OFFSET + z), s_hi = s rounded to DT and
    s_lo = s - s_hi (zero for fp16; for bf16 exact, as fp16 has three more significant bits)."""
    s_hi = s.to(DT)
    return (-(z + OFFSET)).to(DT), s_hi, (s - s_hi.to(tl.float32)).to(DT)


@triton.jit
def _weight_tile16(w_ptr, offs_n, mask_n, wpr, unit0, s, z, DT: tl.constexpr, BU: tl.constexpr, BITS: tl.constexpr,
                   UC: tl.constexpr, UW: tl.constexpr, OFFSET: tl.constexpr, ASM: tl.constexpr, EVEN: tl.constexpr,
                   TILE: tl.constexpr):
    """(BN, BU * UC) DT tile of s (c - z) for whole-number zeros z, in 16-bit arithmetic (W16): c - z is exact,
    and one rounding follows for fp16; bf16 rounds t s_hi + round(t s_lo) once (an fma), which can differ from one
    rounding of t s only where t s lies within 2^-17 of a tie. ASM: _nibble_w16_asm (4-bit codes), else Triton's
    arithmetic, the bf16 sum in fp32."""
    nzo, s_hi, s_lo = _w16_qparams(s, z, DT, OFFSET)
    if ASM:
        words, _, _ = _unit_words(w_ptr, offs_n, mask_n, wpr, unit0, BU, 1, EVEN, TILE)  # (BN, BU)
        nzo2 = tl.broadcast_to(_pair16(nzo)[:, None], words.shape)
        s_hi2 = tl.broadcast_to(_pair16(s_hi)[:, None], words.shape)
        s_lo2 = tl.broadcast_to(_pair16(s_lo)[:, None], words.shape)
        if DT == tl.float16:
            c = tl.inline_asm_elementwise(_W16_F16, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r", [words, nzo2, s_hi2],
                                          dtype=(tl.float16,) * 8, is_pure=True, pack=1)
        else:
            c = tl.inline_asm_elementwise(_W16_BF16, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r,r", [words, nzo2, s_hi2, s_lo2],
                                          dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
        w = _join8(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7])
    else:
        t = _weight_tile(w_ptr, offs_n, mask_n, wpr, unit0, DT, BU, BITS, UC, UW, False, False, EVEN, TILE)
        t = (t + nzo[:, None]).to(DT)  # exact
        if DT == tl.float16:
            w = (t * s_hi[:, None]).to(DT)
        else:
            t32 = t.to(tl.float32)
            u = (t32 * s_lo.to(tl.float32)[:, None]).to(DT)
            w = (t32 * s_hi.to(tl.float32)[:, None] + u.to(tl.float32)).to(DT)
    return w


@triton.jit
def _minus16(w, zo, ASM: tl.constexpr):
    """w (BN, BK) - zo (BN,) in w's 16-bit dtype, two values an instruction (ASM); exact for whole numbers."""
    zo = tl.broadcast_to(zo[:, None], w.shape)
    if not ASM:
        out = (w - zo).to(w.dtype)
    elif w.dtype == tl.float16:
        out = tl.inline_asm_elementwise(_SUB_F16, "=r,r,r", [w, zo], dtype=tl.float16, is_pure=True, pack=2)
    else:
        out = tl.inline_asm_elementwise(_SUB_BF16, "=r,r,r", [w, zo], dtype=tl.bfloat16, is_pure=True, pack=2)
    return out


@triton.jit
def _join8_tree(v0, v1, v2, v3, v4, v5, v6, v7):
    """Eight (BN, BU) tensors -> (BN, BU, 2, 2, 2): tl.join appends the last dimension, so the innermost join picks
    bit 2 of j and the outermost bit 0, and v_j lies at [n, u] + (j // 4, j // 2 % 2, j % 2)."""
    return tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))


@triton.jit
def _join8(v0, v1, v2, v3, v4, v5, v6, v7):
    """Eight (BN, BU) tensors -> (BN, BU * 8), v_j landing in column 8 u + j."""
    return tl.reshape(_join8_tree(v0, v1, v2, v3, v4, v5, v6, v7), (v0.shape[0], v0.shape[1] * 8))


@triton.jit
def _weight_tile(w_ptr, offs_n, mask_n, wpr, unit0, DT: tl.constexpr, BU: tl.constexpr, BITS: tl.constexpr,
                 UC: tl.constexpr, UW: tl.constexpr, SIGNED8: tl.constexpr, ASM: tl.constexpr, EVEN: tl.constexpr,
                 TILE: tl.constexpr):
    """(BN, BU * UC) DT tile of OFFSET + code, columns = consecutive inputs from unit0 * UC."""
    if ASM:  # 4-bit only
        words, _, _ = _unit_words(w_ptr, offs_n, mask_n, wpr, unit0, BU, 1, EVEN, TILE)  # (BN, BU)
        c0, c1, c2, c3, c4, c5, c6, c7 = _nibbles_asm(words, DT)
        w = _join8(c0, c1, c2, c3, c4, c5, c6, c7)
    elif UW == 3:
        w0, w1, w2 = _unit_words(w_ptr, offs_n, mask_n, wpr, unit0, BU, 3, EVEN, TILE)
        w0, w1, w2 = w0.to(tl.uint32, bitcast=True), w1.to(tl.uint32, bitcast=True), w2.to(tl.uint32, bitcast=True)
        w = _magic16(_codes3(w0, w1, w2), DT, BITS)
    else:
        codes = _unpack(w_ptr, offs_n, mask_n, wpr, unit0, BU, BITS, UC, SIGNED8, EVEN, TILE)
        w = tl.reshape(_magic16(codes, DT, BITS), (offs_n.shape[0], BU * UC))
    return w


@triton.jit
def _load(ptrs, mask, EVEN: tl.constexpr):
    """tl.load, masked (zeros outside) unless the launch guarantees every block is whole (EVEN)."""
    if EVEN:
        v = tl.load(ptrs)
    else:
        v = tl.load(ptrs, mask=mask, other=0)
    return v


@triton.jit
def _qparams(scale_ptr, zero_ptr, offs, mask, n_groups, g, BITS: tl.constexpr, HAS_ZERO: tl.constexpr,
             EVEN: tl.constexpr = False):
    """Scale and zero (fp32) at (offs rows, group g); offs and g broadcast to one shape."""
    s = _load(scale_ptr + offs * n_groups + g, mask, EVEN).to(tl.float32)
    if HAS_ZERO:
        z = _load(zero_ptr + offs * n_groups + g, mask, EVEN).to(tl.float32)
    else:
        z = tl.full(s.shape, 1 << (BITS - 1), tl.float32)
    return s, z


@triton.jit
def _x_tile(x_ptr, x_desc, m0, offs_m, mask_m, t, K, stride_x, BK: tl.constexpr, EVEN: tl.constexpr,
            XTMA: tl.constexpr):
    """x's tile of rows offs_m (from m0) and K tile t, zeros outside x: through the tensor memory accelerator (XTMA,
    a descriptor of x's (BM, BK) blocks) or the threads' own loads."""
    if XTMA:
        xr = x_desc.load([m0, t * BK])
    else:
        k = t * BK + tl.arange(0, BK)
        x_mask = mask_m[:, None] if EVEN else mask_m[:, None] & (k < K)[None, :]
        xr = tl.load(x_ptr + offs_m[:, None] * stride_x + k[None, :], mask=x_mask, other=0.0)
    return xr


@triton.jit
def _mm_tc(x_ptr, w_ptr, scale_ptr, zero_ptr, bias_ptr, y_ptr, part_ptr, count_ptr, M, N, K, wpr, n_groups, G,
           stride_x, stride_y,
           K_TILES: tl.constexpr, BITS: tl.constexpr, UC: tl.constexpr, UW: tl.constexpr, BM: tl.constexpr,
           BN: tl.constexpr, BU: tl.constexpr, SPLIT_K: tl.constexpr, PER_TILE: tl.constexpr,
           HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, SIGNED8: tl.constexpr, OFFSET: tl.constexpr,
           ASM: tl.constexpr, DEQUANT: tl.constexpr, EVEN: tl.constexpr, FIXUP: tl.constexpr,
           FENCE: tl.constexpr, TILE: tl.constexpr, PDL: tl.constexpr = False, SUB16: tl.constexpr = False,
           XTMA: tl.constexpr = False, W16: tl.constexpr = False, FMA32: tl.constexpr = False, x_desc=None):
    """acc (BN outputs, BM rows) = W_tile x^T on tensor cores; grid (N / BN, M / BM, SPLIT_K).

    DEQUANT (or a tile spanning groups): weights are dequantized (fp32 math, rounded to x's dtype; FMA32: one fma a
    weight; W16, a tile in one group and whole-number zeros: 16-bit math, _weight_tile16) and one accumulator chain
    runs; SUB16 (a tile in one group, zeros whole numbers: rtn, gptq, awq): the zero is subtracted in 16 bits and the
    scale multiplies the tile's product; else the per-tile correction above. A tile's qparams are loaded one round
    ahead (their latency would otherwise stall every round).
    """
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if PDL:  # programmatic dependent launch: read nothing before the kernel ahead has finished
        tl.extra.cuda.gdc_wait()
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    mask_n, mask_m = offs_n < N, offs_m < M
    BK: tl.constexpr = BU * UC
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    ones = tl.full([BN, BK], 1.0, x_ptr.dtype.element_ty)
    s, z = _qparams(scale_ptr, zero_ptr, offs_n, mask_n, n_groups, (pid_k * BK) // G, BITS, HAS_ZERO, EVEN)
    for t0 in range(0, K_TILES, SPLIT_K):  # constant bounds: Triton 3.6's interpreter needs them
        t = t0 + pid_k  # the last round may overrun: its loads are masked to zero
        xt = tl.trans(_x_tile(x_ptr, x_desc, pid_m * BM, offs_m, mask_m, t, K, stride_x, BK, EVEN, XTMA))  # (BK, BM)
        if W16:  # whole-number zeros, one group a tile: dequantized in 16 bits as the codes unpack
            w = _weight_tile16(w_ptr, offs_n, mask_n, wpr, t * BU, s, z, xt.dtype, BU, BITS, UC, UW, OFFSET, ASM,
                               EVEN, TILE)
        else:
            w = _weight_tile(w_ptr, offs_n, mask_n, wpr, t * BU, xt.dtype, BU, BITS, UC, UW, SIGNED8, ASM, EVEN,
                             TILE)
        if PER_TILE:
            t_next = tl.minimum(t + SPLIT_K, K_TILES - 1)  # clamped: the last prefetch is never used
            s_next, z_next = _qparams(scale_ptr, zero_ptr, offs_n, mask_n, n_groups, (t_next * BK) // G, BITS,
                                      HAS_ZERO, EVEN)
            if SUB16:  # whole-number zeros: OFFSET + code - (OFFSET + zero) is exact in 16 bits, scaled after
                w = _minus16(w, (tl.floor(z + 0.5) + OFFSET).to(xt.dtype), ASM)
                acc += s[:, None] * tl.dot(w, xt)
            elif DEQUANT:
                if FMA32 and not W16:  # one fma a weight: (OFFSET + c) s is exact in fp32, (OFFSET + z) s rounded
                    w = tl.fma(w.to(tl.float32), s[:, None], (-(z + OFFSET) * s)[:, None]).to(xt.dtype)
                elif not W16:  # (W16's tile is dequantized already)
                    w = ((w.to(tl.float32) - (z + OFFSET)[:, None]) * s[:, None]).to(xt.dtype)
                acc = tl.dot(w, xt, acc)
            else:
                part = tl.dot(w, xt)  # (BN, BM)
                xs = tl.dot(ones, xt)  # (BN, BM): every row holds sum_k x[m, k] (tensor cores beat a reduction)
                acc += s[:, None] * (part - (z + OFFSET)[:, None] * xs)
            s, z = s_next, z_next
        else:
            k = t * BK + tl.arange(0, BK)
            msk = mask_n[:, None] & (k < K)[None, :]
            sk, zk = _qparams(scale_ptr, zero_ptr, offs_n[:, None], msk, n_groups, (k // G)[None, :], BITS,
                              HAS_ZERO)
            w = ((w.to(tl.float32) - (zk + OFFSET)) * sk).to(xt.dtype)
            acc = tl.dot(w, xt, acc)
    if PDL:  # the next launch may start
        tl.extra.cuda.gdc_launch_dependents()
    _store(y_ptr, part_ptr, count_ptr, bias_ptr, acc, offs_m[None, :] * stride_y + offs_n[:, None],
           mask_n[:, None] & mask_m[None, :], offs_n[:, None], mask_n[:, None], pid_n + pid_m * tl.num_programs(0),
           pid_k, M * stride_y, SPLIT_K, HAS_BIAS, FIXUP, FENCE)


@triton.jit
def _x_parts(xr, CPB: tl.constexpr):
    """xr (BM, BK) -> the CPB column sets j, j + CPB, j + 2 CPB, ... as (BM, BK / CPB) tensors (j = 0..3)."""
    if CPB == 1:
        x0, x1, x2, x3 = xr, xr, xr, xr
    elif CPB == 2:
        x0, x1 = tl.split(tl.reshape(xr, (xr.shape[0], xr.shape[1] // 2, 2)))
        x2, x3 = x0, x1
    else:  # column 4 i + 2 a + b lands in part 2 a + b
        even, odd = tl.split(tl.reshape(xr, (xr.shape[0], xr.shape[1] // 4, 2, 2)))
        x0, x2 = tl.split(even)
        x1, x3 = tl.split(odd)
    return x0, x1, x2, x3


@triton.jit
def _byte_codes(b, J: tl.constexpr, BITS: tl.constexpr, SIGNED8: tl.constexpr, DT: tl.constexpr):
    """Code J of every byte (BN, BKB) as DT value OFFSET + code (elementwise: stays in the dot's layout)."""
    c = (b.to(tl.int32) >> (J * BITS)) & ((1 << BITS) - 1)
    if SIGNED8:
        c = c ^ 0x80
    return _magic16(c, DT, BITS)


def _bytes_asm(flip: bool) -> str:
    """PTX: four bytes of one register -> four fp32 values 2**23 + byte (one prmt each; flip: xor 0x80 first)."""
    src = "t" if flip else "$4"
    prmts = "".join(f"prmt.b32 ${i}, {src}, 0x4B000000, 0x765{i};\n" for i in range(4))
    xor = "xor.b32 t, $4, 0x80808080;\n" if flip else ""
    return "{ .reg .b32 t;\n" + xor + prmts + "}"


_ASM_BYTES = tl.constexpr(_bytes_asm(False))
_ASM_BYTES_SIGNED = tl.constexpr(_bytes_asm(True))


@triton.jit
def _byte_magic32(b, SIGNED8: tl.constexpr, ASM: tl.constexpr):
    """8-bit codes (bytes, flipped to offset binary if SIGNED8) -> fp32 2**23 + code, exactly (ASM: one prmt
    each; else integer ops, for Triton's interpreter)."""
    if not ASM:
        c = b.to(tl.int32) ^ 0x80 if SIGNED8 else b.to(tl.int32)
        v = (c | 0x4B000000).to(tl.float32, bitcast=True)
    elif SIGNED8:
        v = tl.inline_asm_elementwise(_ASM_BYTES_SIGNED, "=r,=r,=r,=r,r", [b], dtype=tl.float32, is_pure=True, pack=4)
    else:
        v = tl.inline_asm_elementwise(_ASM_BYTES, "=r,=r,=r,=r,r", [b], dtype=tl.float32, is_pure=True, pack=4)
    return v


@triton.jit
def _mm_bytes(x_ptr, w_ptr, scale_ptr, zero_ptr, bias_ptr, y_ptr, part_ptr, count_ptr, M, N, K, row_bytes, n_groups,
              G, stride_x, stride_y, K_TILES: tl.constexpr, BITS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
              BK: tl.constexpr, SPLIT_K: tl.constexpr, PER_TILE: tl.constexpr, HAS_ZERO: tl.constexpr,
              HAS_BIAS: tl.constexpr, SIGNED8: tl.constexpr, OFFSET: tl.constexpr, DEQUANT: tl.constexpr,
              EVEN: tl.constexpr, FIXUP: tl.constexpr, FENCE: tl.constexpr, ASM: tl.constexpr,
              SCALE_AFTER: tl.constexpr, TILE: tl.constexpr, PDL: tl.constexpr = False, XTMA: tl.constexpr = False,
              x_desc=None):
    """_mm_tc for 2, 4 and 8 bits, reading qweight as bytes of CPB = 8 / BITS codes: one product per code
    position j of a byte, (BN, BK / CPB) codes x the inputs j, j + CPB, ... Every step from the loaded bytes
    to the product's operand is elementwise, so Triton converts in registers, in the product's layout.
    SCALE_AFTER (DEQUANT, int8 codes without zeros, one scale a row): the products take the codes as they are
    and the accumulator is scaled once."""
    CPB: tl.constexpr = 8 // BITS
    BKB: tl.constexpr = BK // CPB
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if PDL:  # programmatic dependent launch: read nothing before the kernel ahead has finished
        tl.extra.cuda.gdc_wait()
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    mask_n, mask_m = offs_n < N, offs_m < M
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    ones = tl.full([BN, BK], 1.0, x_ptr.dtype.element_ty)
    s, z = _qparams(scale_ptr, zero_ptr, offs_n, mask_n, n_groups, (pid_k * BK) // G, BITS, HAS_ZERO, EVEN)
    for t0 in range(0, K_TILES, SPLIT_K):  # constant bounds: Triton 3.6's interpreter needs them
        t = t0 + pid_k  # the last round may overrun: its loads are masked to zero
        xr = _x_tile(x_ptr, x_desc, pid_m * BM, offs_m, mask_m, t, K, stride_x, BK, EVEN, XTMA)  # (BM, BK)
        kb = t * BKB + tl.arange(0, BKB)
        if TILE:  # tile order in bytes: chunks of 4 TILE bytes (one div and mod, so loads stay vectorized)
            b_ptrs = w_ptr + 4 * _tile_rows(offs_n, row_bytes // 4, TILE)[:, None] + _tile_cols(kb, 4 * TILE)[None, :]
        else:
            b_ptrs = w_ptr + offs_n[:, None] * row_bytes + kb[None, :]
        b = _load(b_ptrs, mask_n[:, None] & (kb < row_bytes)[None, :], EVEN)  # (BN, BKB) uint8
        x0, x1, x2, x3 = _x_parts(xr, CPB)
        if PER_TILE and not DEQUANT:
            t_next = tl.minimum(t + SPLIT_K, K_TILES - 1)  # clamped: the last prefetch is never used
            s_next, z_next = _qparams(scale_ptr, zero_ptr, offs_n, mask_n, n_groups, (t_next * BK) // G, BITS,
                                      HAS_ZERO, EVEN)
            part = tl.dot(_byte_codes(b, 0, BITS, SIGNED8, xr.dtype), tl.trans(x0))  # (BN, BM)
            if CPB >= 2:
                part = tl.dot(_byte_codes(b, 1, BITS, SIGNED8, xr.dtype), tl.trans(x1), part)
            if CPB == 4:
                part = tl.dot(_byte_codes(b, 2, BITS, SIGNED8, xr.dtype), tl.trans(x2), part)
                part = tl.dot(_byte_codes(b, 3, BITS, SIGNED8, xr.dtype), tl.trans(x3), part)
            xs = tl.dot(ones, tl.trans(xr))  # (BN, BM): every row holds sum_k x[m, k]
            acc += s[:, None] * (part - (z + OFFSET)[:, None] * xs)
            s, z = s_next, z_next
        else:  # weights dequantized (fp32 math, rounded to x's dtype), per element when groups cut tiles
            if PER_TILE:
                st, zt = _qparams(scale_ptr, zero_ptr, offs_n, mask_n, n_groups, (t * BK) // G, BITS, HAS_ZERO,
                                  EVEN)
            for j in tl.static_range(CPB):
                if PER_TILE:
                    sj, zj = st[:, None], zt[:, None]
                else:
                    kj = (t * BKB + tl.arange(0, BKB)) * CPB + j  # (BKB,) inputs of code position j
                    sj, zj = _qparams(scale_ptr, zero_ptr, offs_n[:, None], mask_n[:, None] & (kj < K)[None, :],
                                      n_groups, (kj // G)[None, :], BITS, HAS_ZERO)
                if SCALE_AFTER:  # the code itself (exact in 16 bits); the row's scale multiplies acc at the end
                    w = _byte_magic32(b, SIGNED8, ASM) - (8388608.0 + zj)
                elif BITS == 8 and HAS_ZERO:  # fp32 straight from the byte: no round trip through 16 bits
                    w = ((_byte_magic32(b, SIGNED8, ASM) - 8388608.0) - zj) * sj
                elif BITS == 8:  # the zero is 128: 2**23 + 128 is exact, one subtraction
                    w = (_byte_magic32(b, SIGNED8, ASM) - (8388608.0 + zj)) * sj
                else:
                    w = (_byte_codes(b, j, BITS, SIGNED8, xr.dtype).to(tl.float32) - (zj + OFFSET)) * sj
                if j == 0:
                    xj = x0
                elif j == 1:
                    xj = x1
                elif j == 2:
                    xj = x2
                else:
                    xj = x3
                acc = tl.dot(w.to(xr.dtype), tl.trans(xj), acc)
    if SCALE_AFTER:
        acc = acc * s[:, None]
    if PDL:  # the next launch may start
        tl.extra.cuda.gdc_launch_dependents()
    _store(y_ptr, part_ptr, count_ptr, bias_ptr, acc, offs_m[None, :] * stride_y + offs_n[:, None],
           mask_n[:, None] & mask_m[None, :], offs_n[:, None], mask_n[:, None], pid_n + pid_m * tl.num_programs(0),
           pid_k, M * stride_y, SPLIT_K, HAS_BIAS, FIXUP, FENCE)


def unit_shape(bits: int) -> tuple[int, int]:
    """(codes, words) per unit: the fewest whole int32 words that hold whole codes."""
    words = bits // math.gcd(bits, 32)
    return 32 * words // bits, words


def offset16(dtype: torch.dtype, bits: int) -> int:
    """What _magic16 adds to every code: 1024 (fp16), 128 (bf16, < 8 bits), 0 (bf16, 8 bits)."""
    if dtype == torch.float16:
        return 1024
    return 128 if bits < 8 else 0


def nibble_asm(bits: int, signed8: bool = False) -> bool:
    """Whether _weight_tile unpacks with inline PTX (_nibbles_asm): unsigned 4-bit codes, compiled (not under
    Triton's interpreter)."""
    return bits == 4 and not signed8 and not interpreting()


def tc_config(rows: int, out_features: int, in_features: int, bits: int, one_scale: bool = False) -> dict:
    """Tile shape for _mm_tc / _mm_bytes (H100 sweeps: kernels-h100-sweep2-best.txt, kernels-h100-run5/run6 and
    sweep-h100-kern14-* in benchmarks/results). 4-bit codes above 32 rows take _mm_tc (one product a tile,
    weights dequantized in fp32); int8 weight-only (`one_scale`: signed codes, one scale a row) dequantizes
    above 32 rows too, its scale applied after the products."""
    if rows <= 16:  # PDL where the device allows it (kern21 run 1: int4 1.51 / 0.96 / 1.58 / 1.78 / 2.05x bf16 against
        # 1.43 / 0.94 / 1.55 / 1.75 / 2.08 in line; int8 weight-only 1.21 / 0.87 / 1.22 / 1.37 / 1.50 against 1.17 /
        # 0.85 / 1.20 / 1.36 / 1.53)
        return {"BM": 16, "BN": 64, "BK": 128, "num_warps": 4, "num_stages": 3, "waves": 4, "DEQUANT": False,
                "PDL": True}
    if bits == 4 and rows > 32:
        return _tc_dequant_tile(rows, out_features, in_features)
    if one_scale and 32 < rows <= 64:  # kern14 run 10: 0.86-1.37x bf16 against 0.65-0.92x without dequantizing
        bn = 128 if out_features >= 2048 else 64
        return {"BM": 64, "BN": bn, "BK": 128, "num_warps": bn // 16, "num_stages": 3, "waves": 1, "DEQUANT": True}
    if rows <= 64:
        bm = 32 if rows <= 32 else 64
        return {"BM": bm, "BN": 64, "BK": 128, "num_warps": 4, "num_stages": 3, "waves": 2, "DEQUANT": False}
    if bits == 8:  # kern14 run 2: BN 64 at least as fast as BN 128 on every shape; BM 64 where outputs are few
        bm = 64 if out_features < 32 * 64 else 128
        return {"BM": bm, "BN": 64, "BK": 128, "num_warps": 4, "num_stages": 3, "waves": 1, "DEQUANT": True}
    # 3-bit codes fetch x through TMA (XTMA; kern34 run 4, 4096x4096 / 4096x1024 / 14336x4096 / 4096x14336: at 128
    # rows 0.46-0.47 / 0.59-0.60 / 0.62-0.63 / 0.58-0.59x bf16 against 0.45 / 0.58 / 0.58-0.59 / 0.56-0.57, at 256 rows
    # 0.39 / 0.55-0.56 / 0.40 / 0.33 against 0.37-0.38 / 0.55-0.56 / 0.37-0.38 / 0.32); 2-bit codes take _mm_bytes
    if out_features >= 4096:  # 128 rows: 0.59-0.74x bf16 vs 0.56-0.74x with (BN 64, 4 warps), runs 5 and 6
        return {"BM": 128, "BN": 128, "BK": 128, "num_warps": 8, "num_stages": 3, "waves": 1, "DEQUANT": True,
                "XTMA": bits == 3}
    return {"BM": 128, "BN": 64, "BK": 128, "num_warps": 4, "num_stages": 3, "waves": 1, "DEQUANT": True,
            "XTMA": bits == 3}


def _tc_dequant_tile(rows: int, out_features: int, in_features: int) -> dict:
    """4-bit, 33+ rows (kern14 runs 1-2): 128-output tiles of 8 warps where the weight is large (64 rows: where
    outputs are few enough that K is split anyway), else 64 outputs of 4 warps; 64-row tiles where fewer than 32
    output tiles would leave K split many ways. From 65 to 128 rows x's tiles come through TMA (XTMA; kern34 runs 2
    and 4, x bf16 on 4096x4096 / 4096x1024 / 4096x14336 / 14336x4096 / 4096x128256 at 128 rows: 0.85 / 0.77 / 1.00 /
    1.05-1.06 / 1.02 against 0.75 / 0.75 / 1.00 / 0.98-1.00 / 0.99-1.03; at 96 rows on 4096x4096 / 4096x1024 /
    14336x4096 0.84-0.85 / 0.78-0.79 / 1.03 against 0.72 / 0.77 / 0.93-0.95); not at 64 rows (0.85-0.86 against 0.89
    on 4096x4096, 1.11-1.12 against 1.21-1.22 on 4096x14336) nor above 128 (slower on 14336x4096 at 192 rows, on
    those three shapes at 384)."""
    large = in_features * out_features >= (4096 * 14336 if rows > 64 else 4096 * 4096)
    bn = 128 if large and (rows > 64 or out_features < 8192) else 64
    bm = 64 if rows <= 64 or out_features < 32 * bn else 128
    return {"BM": bm, "BN": bn, "BK": 128, "num_warps": bn // 16, "num_stages": 3, "waves": 1, "DEQUANT": True,
            "BYTES": False, "XTMA": 64 < rows <= 128}


def tma_aligned(x: torch.Tensor) -> bool:
    """Whether a TMA descriptor can address x (rows, in): 16-byte aligned start and row stride."""
    return x.data_ptr() % 16 == 0 and x.stride(0) * x.element_size() % 16 == 0


def _block_units(target_k: int, group_size: int, in_features: int, codes: int) -> tuple[int, bool]:
    """Units per K tile (K >= 16 for a tensor-core product), and whether each tile lies in one group."""
    units = max(target_k // codes, 1, 16 // codes)
    if group_size >= in_features:
        return units, True
    return units, group_size % (units * codes) == 0


def int_group_matmul(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
    bias: torch.Tensor | None, bits: int, group_size: int, signed8: bool = False, config: dict | None = None,
) -> torch.Tensor:
    """x (rows, in) fp16/bf16 @ dequant(qweight)^T + bias -> (rows, out) in x's dtype.

    `config` overrides the tuned tile shape (benchmarks' sweeps); split-K partials: triton_splitk.
    """
    x = x.contiguous()
    rows, cols = x.shape
    qweight, tile = row_shaped(qweight)  # row order, or tile order's words under a row-shaped view
    out_features, wpr = qweight.shape
    uc, uw = unit_shape(bits)
    one_scale = bits == 8 and zero is None and group_size >= cols  # int8 weight-only: SCALE_AFTER applies
    cfg = dict(config or tc_config(rows, out_features, cols, bits, one_scale))
    waves, bk, split = cfg.pop("waves"), cfg.pop("BK"), cfg.pop("SPLIT_K", None)
    bu, per_tile = _block_units(bk, group_size, cols, uc)
    k_tiles = math.ceil(cols / (bu * uc))
    grid = (math.ceil(out_features / cfg["BN"]), math.ceil(rows / cfg["BM"]))
    split = split or split_k(grid[0] * grid[1], k_tiles, x.device, waves)
    even = out_features % cfg["BN"] == 0 and cols % (bu * uc) == 0 and k_tiles % split == 0
    y = torch.empty((rows, out_features), dtype=x.dtype, device=x.device)  # (rows, out)
    part, counters, fix = split_buffers(y, split, grid[0] * grid[1], cfg.pop("FIXUP", True))
    bias_arg = bias if bias is not None else scale
    common = (scale, zero if zero is not None else scale, bias_arg, y, part, counters, rows, out_features, cols)
    flags = dict(K_TILES=k_tiles, BITS=bits, SPLIT_K=split, PER_TILE=per_tile, HAS_ZERO=zero is not None,
                 HAS_BIAS=bias is not None, SIGNED8=signed8, OFFSET=offset16(x.dtype, bits), EVEN=even, TILE=tile,
                 **fix)
    cfg.setdefault("ASM", not interpreting())
    if cfg.pop("PDL", False) and not interpreting() and nvrtc.programmatic(x.device.index):
        cfg |= {"PDL": True, "launch_pdl": True}
    if cfg.pop("XTMA", False) and tma_aligned(x):  # x's tiles through a TMA descriptor
        from triton.tools.tensor_descriptor import TensorDescriptor

        cfg |= {"XTMA": True, "x_desc": TensorDescriptor.from_tensor(x, [cfg["BM"], bu * uc])}
    w16 = cfg.pop("W16", False) and per_tile and cfg["DEQUANT"] and not cfg.get("SUB16")
    fma32 = cfg.pop("FMA32", False)
    if cfg.pop("BYTES", bits in (2, 4, 8)):
        scale_after = cfg.pop("SCALE_AFTER", one_scale and cfg["DEQUANT"])
        _mm_bytes[(*grid, split)](x, qweight.view(torch.uint8), *common, wpr * 4, scale.shape[1], group_size,
                                  x.stride(0), out_features, BK=bu * uc, SCALE_AFTER=scale_after, **flags, **cfg)
    else:
        cfg["ASM"] = cfg["ASM"] and nibble_asm(bits, signed8)
        cfg["W16"] = w16 and not signed8 and whole_zeros(zero, bits)
        cfg["FMA32"] = fma32
        _mm_tc[(*grid, split)](x, qweight, *common, wpr, scale.shape[1], group_size, x.stride(0), out_features,
                               UC=uc, UW=uw, BU=bu, **flags, **cfg)
    return finish(y, part, bias, split, fix)
