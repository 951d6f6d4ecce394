"""Models of PTX instructions from the PTX ISA's definitions, for tests that check a kernel's plan on the CPU."""

from __future__ import annotations

import numpy as np


def prmt(a: int, b: int, c: int) -> int:
    """prmt.b32 without a mode: byte k of d is byte (c >> 4k) & 7 of {b, a}, or its sign replicated where
    (c >> 4k) & 8."""
    tmp64 = (b << 32) | a
    d = 0
    for k in range(4):
        ctl = (c >> (4 * k)) & 0xF
        byte = (tmp64 >> (8 * (ctl & 7))) & 0xFF
        if ctl & 8:
            byte = 0xFF if byte & 0x80 else 0x00
        d |= byte << (8 * k)
    return d


def halves(reg: int, bf16: bool) -> tuple[float, float]:
    """The two 16-bit floats of a 32-bit register (low half first)."""
    def one(bits: int) -> float:
        if bf16:
            return float(np.array([bits << 16], dtype=np.uint32).view(np.float32)[0])
        return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])
    return one(reg & 0xFFFF), one(reg >> 16)


def mma_m16n8k16(a: list[list[int]], b: list[list[int]], c: np.ndarray, bf16: bool) -> np.ndarray:
    """mma.sync.m16n8k16.row.col with fp32 accumulators, in float64. a[lane] holds 4 registers, b[lane] 2,
    c (32 lanes, 4); lane = 4 * groupID + threadID_in_group. Returns d in c's layout: d0, d1 at (g, 2t + i),
    d2, d3 at (g + 8, 2t + i)."""
    A, B = np.zeros((16, 16)), np.zeros((16, 8))
    for lane in range(32):
        g, t = divmod(lane, 4)
        for reg, (row, col) in enumerate([(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]):
            A[row, col], A[row, col + 1] = halves(a[lane][reg], bf16)
        for reg, k in enumerate([2 * t, 2 * t + 8]):
            B[k, g], B[k + 1, g] = halves(b[lane][reg], bf16)
    D = A @ B
    d = c.copy()
    for lane in range(32):
        g, t = divmod(lane, 4)
        d[lane] += [D[g, 2 * t], D[g, 2 * t + 1], D[g + 8, 2 * t], D[g + 8, 2 * t + 1]]
    return d


def lop3(a: int, b: int, c: int, lut: int) -> int:
    """lop3.b32: bit i of d is bit (a_i << 2 | b_i << 1 | c_i) of the 8-bit table `lut` (a = 0xF0, b = 0xCC,
    c = 0xAA in the ISA's notation)."""
    d = 0
    for i in range(32):
        idx = ((a >> i) & 1) << 2 | ((b >> i) & 1) << 1 | ((c >> i) & 1)
        d |= ((lut >> idx) & 1) << i
    return d


def round16(v: float, bf16: bool) -> int:
    """The 16-bit pattern of v rounded once to bf16 or fp16, to nearest even (normal range, no overflow)."""
    if bf16:
        if v == 0.0:
            return 0x8000 if np.signbit(v) else 0
        m, e = np.frexp(v)  # v = m 2^e, 0.5 <= |m| < 1: bf16 keeps 8 significant bits
        f32 = np.float32(np.round(m * 256.0) / 256.0 * 2.0**e)  # np.round: halves to even
        return int(np.array([f32]).view(np.uint32)[0]) >> 16
    return int(np.array([v], dtype=np.float16).view(np.uint16)[0])  # numpy rounds float64 -> fp16 once


def fma_x2(a: int, b: int, c: int, bf16: bool) -> int:
    """fma.rn.{bf16x2, f16x2}: each half a * b + c, exact in float64 for these operands, rounded once."""
    out = [round16(x * y + z, bf16) for x, y, z in zip(halves(a, bf16), halves(b, bf16), halves(c, bf16))]
    return out[0] | out[1] << 16


def mul_x2(a: int, b: int, bf16: bool) -> int:
    """mul.rn.{bf16x2, f16x2}: each half a * b rounded once."""
    return fma_x2(a, b, 0x80008000, bf16)
