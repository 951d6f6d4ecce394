"""Triton kernels over the NF4/FP4 format (formats.nf4): CUDA-core matrix-vector for one row, tensor cores above.

QLoRA's 4-bit weights (Dettmers et al., 2023): w[i] = code_table[code[i]] * absmax[i // B] over the
row-major flattened weight. At one activation row the product is bound by the weight bytes, so, as in
triton_gemv, each thread unpacks its own int32 words in the load's register layout and accumulates in
registers. Eight codes share a word (two per byte, the first in the high nibble) and a block (B and
in_features are multiples of 8), so a tile of words is viewed as (BN rows, NBLK groups, WPB words):

    y[n] += absmax[n, group] * sum_{words in group} sum_j table[code_j] * x[8 * word + j]

With in_features a multiple of B a group of WPB words lies in one absmax block: the absmax, and with
double quantization its second level (absmax_q * absmax_scale[block // 256] + mean), is read and applied
once per group; otherwise (blocks spanning rows) WPB = 1 and it is applied per word.

The 16-entry table is a gather per code from memory (LOOKUP "gather", the one-row kernel's default), or looked up in
registers (LOOKUP "prmt", the tensor-core kernel's default since kern21's timing), with byte permutes as LUT-based
low-bit GEMM kernels do: rounded to fp16, its low and high bytes form two planes of four int32 words each, and PTX's
prmt picks the bytes of four codes at once from a pair of words (8 entries; two pairs and a blend by code bit 3 cover
16): 4.75 SASS instructions per weight for lookup, conversion and FFMA (benchmarks/sass_stats.py). The gather bounds the
one-row kernel (Nsight Compute saw most stall cycles waiting on L1TEX, docs/kern6.md). Rounding the table to fp16 moves
a weight by at most 2**-11 of itself (NF4: 3.3e-4 at most, 1.6e-4 rms over the table's rms); bf16 would move it by up to
2**-8 (NF4: 1.1e-3 rms, half the fp16 test tolerance), whatever x's dtype. Split-K partials are summed as in triton_gemv
(triton_splitk). For more rows `_fourbit_tc` looks each tile up once (byte permutes) for BM rows and multiplies on
tensor cores. Importing this module imports Triton: callers import it lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lowbit.core.codebook import DOUBLE_QUANT_BLOCK
from lowbit.formats.word_tiles import row_shaped
from lowbit.kernels.triton_gemv import _x_f32
from lowbit.kernels.triton_int import _join8_tree, _load, _tile_cols, _tile_rows
from lowbit.kernels.triton_splitk import _store, finish, interpreting, split_buffers, split_k


@triton.jit
def _words(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean, offs_n, mask_n, t, N, K, WPR, B, NBLK: tl.constexpr,
           WPB: tl.constexpr, DOUBLE: tl.constexpr, EVEN: tl.constexpr, TILE: tl.constexpr):
    """Words (BN, NBLK, WPB) int32 and absmax (BN, NBLK) fp32 of K tile t (NBLK * WPB words per row); the words in
    row order, or with TILE > 0 in tile order with chunks of TILE words (formats.word_tiles)."""
    first = t * (NBLK * WPB) + tl.arange(0, NBLK) * WPB  # (NBLK,) first word of each group
    wcol = first[:, None] + tl.arange(0, WPB)[None, :]  # (NBLK, WPB)
    if TILE:
        ptrs = w_ptr + _tile_rows(offs_n, WPR, TILE)[:, None, None] + _tile_cols(wcol, TILE)[None, :, :]
    else:
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
    """The table value of code J of every word (byte J // 2, the high nibble first): a gather."""
    return tl.load(table_ptr + ((words >> (8 * (J // 2) + 4 * (1 - J % 2))) & 15))


@triton.jit
def _prmt(a, b, sel, ASM: tl.constexpr):
    """PTX prmt.b32, default mode: byte k of the result is byte (sel >> 4k) & 7 of the pair (a: bytes 0-3,
    b: 4-7), or that byte's sign bit replicated where bit 3 of the nibble is set; sel bits 16-31 are unused.
    Without ASM (Triton's interpreter) the same bytes are picked with shifts and masks."""
    if ASM:
        return tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, sel], dtype=tl.int32,
                                         is_pure=True, pack=1)
    out = 0
    for k in tl.static_range(4):
        nibble = (sel >> (4 * k)) & 15
        byte = (tl.where((nibble & 4) == 0, a, b) >> (8 * (nibble & 3))) & 255
        byte = tl.where(nibble < 8, byte, (byte >> 7) * 255)
        out |= byte << (8 * k)
    return out


@triton.jit
def _plane_words(table_ptr, FIRST: tl.constexpr):
    """Table entries FIRST .. FIRST + 3 rounded to fp16 and split into bytes: (low bytes, high bytes) as two
    int32 words, entry FIRST in byte 0."""
    low = 0
    high = 0
    for i in tl.static_range(4):
        bits = tl.load(table_ptr + FIRST + i).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
        low |= (bits & 255) << (8 * i)
        high |= ((bits >> 8) & 255) << (8 * i)
    return low, high


@triton.jit
def _table_planes(table_ptr):
    """The 16-entry table as byte planes for _lookup4: (low bytes of entries 0-3, 4-7, 8-11, 12-15, then
    their high bytes), eight int32 scalars read once per program."""
    lo0, hi0 = _plane_words(table_ptr, 0)
    lo1, hi1 = _plane_words(table_ptr, 4)
    lo2, hi2 = _plane_words(table_ptr, 8)
    lo3, hi3 = _plane_words(table_ptr, 12)
    return lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3


@triton.jit
def _lookup4(sel, shifted, planes, ASM: tl.constexpr):
    """fp16 bits of four codes as (low bytes, high bytes), code k's in byte k: sel holds code_k & 7 in nibble
    k, shifted the codes themselves one bit lower (code_k in bits 4k - 1 .. 4k + 2); planes: _table_planes.

    Each plane is two 8-entry lookups (entries 0-7 and 8-15) blended by code bit 3 in one LOP3. The blend
    mask is a lookup too: nibble k of `shifted` holds code_k >> 1 in its index bits (>= 4 exactly when bit 3
    is set) and picks 0x00 or 0xFF; its stray bit 3 (the next code's bit 0) asks for sign replication,
    which leaves 0x00 and 0xFF as they are."""
    mask = _prmt(0, -1, shifted, ASM)
    low_a = _prmt(planes[0], planes[1], sel, ASM)
    low_b = _prmt(planes[2], planes[3], sel, ASM)
    high_a = _prmt(planes[4], planes[5], sel, ASM)
    high_b = _prmt(planes[6], planes[7], sel, ASM)
    return (low_a & ~mask) | (low_b & mask), (high_a & ~mask) | (high_b & mask)


@triton.jit
def _shr(x, S: tl.constexpr):
    """x >> S, logical (S < 32), as the high word of x * 2**(32 - S): ptxas keeps that an IMAD.HI, on the FMA
    pipe, where a shift would add to the ALU pipe (half the issue rate on sm_90) that the PRMTs and LOP3s
    already fill: per word of codes 19 ALU instructions instead of 22, 3 IMADs beside 16 FFMA/HADD2."""
    if S == 0:
        return x
    factor = tl.full(x.shape, 1 << (32 - S), tl.uint32)
    return tl.umulhi(x.to(tl.uint32, bitcast=True), factor).to(tl.int32, bitcast=True)


@triton.jit
def _pair_f32(words, planes, J: tl.constexpr, ASM: tl.constexpr):
    """Table values (fp16-rounded, as fp32) of codes J and J + 1 (J even) of every word, without memory access.

    Byte permutes as in LUT-based low-bit GEMM kernels: _lookup4 turns the four codes of half J // 4 into
    fp16 byte planes (both pairs of a half share it: the compiler keeps one), one more permute interleaves a
    pair's bytes into two fp16 halves (code J in the high one: it is the high nibble of its byte)."""
    HALF: tl.constexpr = J // 4
    index = words & 0x77777777  # code & 7 in every nibble, both halves in one LOP3
    low, high = _lookup4(_shr(index, 16 * HALF), _shr(words, 16 * HALF + 1), planes, ASM)
    halves = _prmt(low, high, 0x5140 + 0x2222 * (J % 4 // 2), ASM)  # fp16 of code J << 16 | fp16 of code J + 1
    if ASM:  # one HADD2.F32 each (ptxas re-pairs halves of two registers when LLVM sees the conversions)
        return tl.inline_asm_elementwise(
            "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.f32.f16 $0, hi; cvt.f32.f16 $1, lo; }", "=r,=r,r",
            [halves], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    first = (halves >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    second = halves.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return first, second


@triton.jit
def _x_words(x_row, k, K, X64: tl.constexpr, EVEN: tl.constexpr):
    """With X64 the inputs k .. k + 7 of every word as two int64 words (k: (NBLK, WPB) multiples of 8), else
    placeholders (triton_gemv._x_f32 then loads the inputs one by one)."""
    xa = tl.zeros(k.shape, dtype=tl.int64)
    xb = xa
    if X64:
        ptr = x_row.to(tl.pointer_type(tl.int64)) + k // 4
        xa = _load(ptr, k < K, EVEN)
        xb = _load(ptr + 1, k < K, EVEN)
    return xa, xb


@triton.jit
def _tile_sum(acc, words, absmax, x_row, t, K, table_ptr, planes, NBLK: tl.constexpr, WPB: tl.constexpr,
              EVEN: tl.constexpr, LOOKUP: tl.constexpr, ASM: tl.constexpr, X64: tl.constexpr):
    """acc (BN, NBLK) plus K tile t's products: words (BN, NBLK, WPB), absmax (BN, NBLK)."""
    wcol = t * (NBLK * WPB) + tl.arange(0, NBLK)[:, None] * WPB + tl.arange(0, WPB)[None, :]  # (NBLK, WPB)
    k = wcol * 8  # (NBLK, WPB) input of each word's code 0
    xa, xb = _x_words(x_row, k, K, X64, EVEN)
    p = tl.zeros(words.shape, dtype=tl.float32)
    for j in tl.static_range(0, 8, 2):
        xw = xa if j < 4 else xb
        x0 = _x_f32(x_row, xw, k + j, K, j, X64, EVEN)[None, :, :]
        x1 = _x_f32(x_row, xw, k + j + 1, K, j + 1, X64, EVEN)[None, :, :]
        if LOOKUP == "gather":
            first, second = _code(words, table_ptr, j), _code(words, table_ptr, j + 1)
        else:
            first, second = _pair_f32(words, planes, j, ASM)
        p += first * x0  # two FFMAs (one sum of both products would not fuse)
        p += second * x1
    return acc + absmax * tl.sum(p, axis=2)


@triton.jit
def _fourbit_gemv(x_ptr, w_ptr, absmax_ptr, dq_scale_ptr, dq_mean_ptr, table_ptr, bias_ptr, y_ptr, part_ptr,
                  count_ptr, N, K, WPR, B: tl.constexpr, stride_x, stride_y,
                  K_TILES: tl.constexpr, NBLK: tl.constexpr, WPB: tl.constexpr, BN: tl.constexpr,
                  SPLIT_K: tl.constexpr, DOUBLE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN: tl.constexpr,
                  FIXUP: tl.constexpr, FENCE: tl.constexpr, LOOKUP: tl.constexpr, ASM: tl.constexpr,
                  X64: tl.constexpr, STAGES: tl.constexpr, TILE: tl.constexpr):
    """y[m, offs_n] (or this K slice's fp32 partial) for one row m; grid (N / BN, rows, SPLIT_K).

    LOOKUP "prmt": codes become fp16 table values in registers (_pair_f32), "gather": loads from the table.
    X64: inputs read as int64 words of four (triton_gemv._x_f32), else one by one. STAGES > 0: Triton's
    software pipeliner copies the next STAGES - 1 tiles' words and absmax into shared memory with cp.async
    while this one is computed; STAGES 0: the next tile is loaded ahead into registers."""
    pid_n, m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < N
    dq_mean = 0.0
    if DOUBLE:
        dq_mean = tl.load(dq_mean_ptr).to(tl.float32)
    planes = _table_planes(table_ptr)  # LOOKUP "gather" never reads them: the compiler drops the loads
    x_row = x_ptr + m * stride_x
    acc = tl.zeros([BN, NBLK], dtype=tl.float32)
    if STAGES > 0:
        for t0 in tl.range(0, K_TILES, SPLIT_K, num_stages=STAGES):  # constant bounds (Triton's interpreter)
            t = t0 + pid_k  # the last round may overrun: its loads are masked to zero
            words, absmax = _words(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean, offs_n, mask_n, t, N, K, WPR, B, NBLK,
                                   WPB, DOUBLE, EVEN, TILE)
            acc = _tile_sum(acc, words, absmax, x_row, t, K, table_ptr, planes, NBLK, WPB, EVEN,
                            LOOKUP, ASM, X64)
    else:
        words, absmax = _words(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean, offs_n, mask_n, pid_k, N, K, WPR, B, NBLK,
                               WPB, DOUBLE, EVEN, TILE)
        for t0 in range(0, K_TILES, SPLIT_K):  # constant bounds: Triton 3.6's interpreter needs them
            t = t0 + pid_k  # the last round may overrun: its loads are masked to zero
            t_next = tl.minimum(t + SPLIT_K, K_TILES - 1)  # next tile's words, loaded before this one is used
            nxt, absmax_next = _words(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean, offs_n, mask_n, t_next, N, K, WPR,
                                      B, NBLK, WPB, DOUBLE, EVEN, TILE)
            acc = _tile_sum(acc, words, absmax, x_row, t, K, table_ptr, planes, NBLK, WPB, EVEN,
                            LOOKUP, ASM, X64)
            words, absmax = nxt, absmax_next
    y = tl.sum(acc, axis=1)  # (BN,)
    _store(y_ptr, part_ptr, count_ptr, bias_ptr, y, m * stride_y + offs_n, mask_n, offs_n, mask_n,
           pid_n + m * tl.num_programs(0), pid_k, tl.num_programs(1) * stride_y, SPLIT_K, HAS_BIAS, FIXUP, FENCE)


@triton.jit
def _fourbit_tc(x_ptr, w_ptr, absmax_ptr, dq_scale_ptr, dq_mean_ptr, table_ptr, bias_ptr, y_ptr, part_ptr,
                count_ptr, ROWS, N, K, WPR, B, stride_x, stride_y,
                K_TILES: tl.constexpr, NBLK: tl.constexpr, WPB: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                SPLIT_K: tl.constexpr, DOUBLE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN: tl.constexpr,
                FIXUP: tl.constexpr, FENCE: tl.constexpr, TILE: tl.constexpr, LOOKUP: tl.constexpr,
                ASM: tl.constexpr):
    """Tensor cores: y[offs_m, offs_n] (or a K slice's partial); grid (N / BN, rows / BM, SPLIT_K).

    Each weight tile is looked up once for all BM rows (LOOKUP "gather": loads from the table; "prmt": byte
    permutes in registers, _pair_f32), scaled by its absmax, interleaved back into input order (tl.join of codes j
    and j + 4, then + 2, then + 1) and multiplied by the x tile with tl.dot."""
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < N
    offs_m = pid_m * BM + tl.arange(0, BM)
    mask_m = offs_m < ROWS
    BK: tl.constexpr = NBLK * WPB * 8
    dq_mean = 0.0
    if DOUBLE:
        dq_mean = tl.load(dq_mean_ptr).to(tl.float32)
    planes = _table_planes(table_ptr)  # LOOKUP "gather" never reads them: the compiler drops the loads
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for t0 in range(0, K_TILES, SPLIT_K):
        t = t0 + pid_k
        words, absmax = _words(w_ptr, absmax_ptr, dq_scale_ptr, dq_mean, offs_n, mask_n, t, N, K, WPR, B, NBLK,
                               WPB, DOUBLE, EVEN, TILE)
        if LOOKUP == "gather":
            c0, c1, c2, c3 = (_code(words, table_ptr, 0), _code(words, table_ptr, 1), _code(words, table_ptr, 2),
                              _code(words, table_ptr, 3))
            c4, c5, c6, c7 = (_code(words, table_ptr, 4), _code(words, table_ptr, 5), _code(words, table_ptr, 6),
                              _code(words, table_ptr, 7))
        else:
            c0, c1 = _pair_f32(words, planes, 0, ASM)
            c2, c3 = _pair_f32(words, planes, 2, ASM)
            c4, c5 = _pair_f32(words, planes, 4, ASM)
            c6, c7 = _pair_f32(words, planes, 6, ASM)
        w = _join8_tree(c0, c1, c2, c3, c4, c5, c6, c7)  # (BN, NBLK, WPB, 2, 2, 2): code 4a + 2b + c at [.., a, b, c]
        w = tl.reshape(w * absmax[:, :, None, None, None, None], (BN, BK))  # (BN, BK) in input order
        k = t * BK + tl.arange(0, BK)
        xt = tl.load(x_ptr + offs_m[:, None] * stride_x + k[None, :], mask=mask_m[:, None] & (k < K)[None, :],
                     other=0.0)  # (BM, BK)
        acc += tl.dot(xt, tl.trans(w.to(xt.dtype)))
    _store(y_ptr, part_ptr, count_ptr, bias_ptr, acc, offs_m[:, None] * stride_y + offs_n[None, :],
           mask_m[:, None] & mask_n[None, :], offs_n[None, :], mask_n[None, :], pid_n + pid_m * tl.num_programs(0),
           pid_k, ROWS * stride_y, SPLIT_K, HAS_BIAS, FIXUP, FENCE)


# H100 sweeps (benchmarks/results/sweep-h100-kern6-run2*.json): the matrix-vector kernel with the gather ran
# 0.93-1.10x bf16 over every config tried; the tensor-core one 0.37-0.57x at 16 rows with one stage, 0.16-0.21x
# with two. The default stays that measured kernel (gather, inputs one by one) until the byte-permute lookup has
# run on a GPU: LOOKUP "prmt" with X64 inputs is built and checked under Triton's interpreter only
# (kernel_bench.py at one row times it as nf4_dq_b64_prmt, _prmt_st3, _prmt_bn512, _prmt_w2). sm_90 SASS per
# weight in the K loop (benchmarks/sass_stats.py, 4096 inputs, bf16): gather 7.62 (7.78 with X64), prmt 6.78 (40
# registers), STAGES 3 6.72 (56), BN 512 5.85 (126 registers, no spills; 4 rows a thread halve the input
# conversions).
FOURBIT_CONFIG = {"BN": 256, "BKW": 4, "num_warps": 4, "num_stages": 1, "waves": 4, "LOOKUP": "gather", "STAGES": 0,
                  "X64": False}


def fourbit_tc_config(rows: int) -> dict:
    """_fourbit_tc's tile: 16 rows a program up to 16 rows (the measured kern6 shape); above, one program decodes
    a weight tile for up to 128 rows (BM), as _mm_tc does for int_group codes. A decode costs about 12 SASS a weight
    (sm_90): 16-row programs, decoding every tile once per 16 rows, ran 0.14-0.32x bf16 at 64 rows and 0.07-0.18x
    at 128 (kern19 run 5); these tiles 0.43-0.56x and 0.32-0.44x (run 7). The table is read by byte permutes in
    registers (LOOKUP "prmt": 487 SASS a 128-row K step against the gathers' 781): kern21 run 2 on the five Llama-3-8B
    shapes, x bf16, prmt against gathers: 16 rows 0.82-0.98 / 0.45-0.69, 64 rows 0.59-1.00 / 0.42-0.53, 128 rows
    0.34-0.53 / 0.31-0.43, 512 rows 0.24-0.35 / 0.18-0.28."""
    lookup = {"LOOKUP": "prmt"}
    if rows <= 16:
        return {"BN": 64, "BM": 16, "BKW": 16, "num_warps": 4, "num_stages": 1, "waves": 4} | lookup
    bm = 32 if rows <= 32 else 64 if rows <= 64 else 128
    return {"BN": 128, "BM": bm, "BKW": 16, "num_warps": 8, "num_stages": 1, "waves": 1} | lookup


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
    quantization; qweight (out * in / 2,) uint8 in row order or its tile order (formats.nf4). path "mv": one
    program row per x row (CUDA cores); "tc": BM rows per program (tensor cores)."""
    assert DOUBLE_QUANT_BLOCK == 256  # the kernel's block // 256
    x = x.contiguous()
    rows, cols = x.shape
    base = FOURBIT_CONFIG if path == "mv" else fourbit_tc_config(rows)
    cfg = dict(base | {"ASM": not interpreting()} | (config or {}))  # inline PTX but in the interpreter
    if path == "mv":  # inputs as int64 words of four where rows (in_features a multiple of 8) start 8-aligned
        cfg["X64"] = cfg["X64"] and x.data_ptr() % 8 == 0
    waves, bkw, split = cfg.pop("waves"), cfg.pop("BKW"), cfg.pop("SPLIT_K", None)
    nblk, wpb = _groups(cols, blocksize, bkw)
    words = qweight.view(torch.int32)  # eight codes per word: (out * in / 8,) row order, or tile order (3-D)
    tile = row_shaped(words)[1]  # words of a tile chunk, 0 in row order
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
                 EVEN=even, TILE=tile, **fix, **cfg)
    if path == "mv":
        _fourbit_gemv[(n_tiles, rows, split)](*args, *sizes, **flags)
    else:
        _fourbit_tc[(n_tiles, m_tiles, split)](*args, rows, *sizes, **flags)
    return finish(y, part, bias, split, fix)
