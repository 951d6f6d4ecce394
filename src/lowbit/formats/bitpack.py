"""Bit-packing of b-bit codes (1..8) into int32 words along a row, low bits first.

Layout of one row of n codes c0, c1, ... (b bits each), as a little-endian bit stream:

    word 0: bits 0..31 = c0 | c1 << b | c2 << 2b | ...      (b = 4: c0..c7 in nibbles 0..7)
    word 1: continues the stream, ...

For b in {1, 2, 4, 8} no code straddles two words (32 / b codes per word). For other b (3, 5, 6, 7) the
stream runs across word boundaries, as in GPTQ's 3-bit layout: 32 codes fill exactly b words. Each row is
padded with zero codes to a whole number of words: `words_per_row(n, b)` words, 4 bytes each.
"""

from __future__ import annotations

import math

import torch

_ROW_CHUNK = 1024  # rows packed at a time on the straddling path (bounds its bit-tensor memory)


def codes_per_unit(bits: int) -> int:
    """Smallest number of codes that fills whole int32 words."""
    return 32 // math.gcd(bits, 32)


def words_per_row(n: int, bits: int) -> int:
    unit = codes_per_unit(bits)
    return math.ceil(n / unit) * unit * bits // 32


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) -> int32 with the same bit pattern."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(rows, n) uint8 codes < 2**bits -> (rows, words_per_row(n, bits)) int32."""
    rows, n = codes.shape
    padded = words_per_row(n, bits) * 32 // bits
    c = torch.nn.functional.pad(codes.to(torch.int64), (0, padded - n))
    if 32 % bits == 0:
        per_word = 32 // bits
        shifts = torch.arange(per_word, dtype=torch.int64, device=c.device) * bits
        return _to_int32((c.view(rows, -1, per_word) << shifts).sum(dim=2))
    return torch.cat([_pack_stream(chunk, bits) for chunk in c.split(_ROW_CHUNK)], dim=0)


def _pack_stream(c: torch.Tensor, bits: int) -> torch.Tensor:
    rows = c.shape[0]
    bit_idx = torch.arange(bits, dtype=torch.int64, device=c.device)
    stream = ((c.unsqueeze(2) >> bit_idx) & 1).view(rows, -1, 32)  # (rows, words, 32) bits
    weights = torch.arange(32, dtype=torch.int64, device=c.device)
    return _to_int32((stream << weights).sum(dim=2))


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """(rows, words) int32 -> (rows, n) uint8 codes; inverse of pack_bits."""
    rows = packed.shape[0]
    words = packed.to(torch.int64) & 0xFFFFFFFF
    if 32 % bits == 0:
        per_word = 32 // bits
        shifts = torch.arange(per_word, dtype=torch.int64, device=packed.device) * bits
        codes = (words.unsqueeze(2) >> shifts) & (2**bits - 1)
        return codes.view(rows, -1)[:, :n].to(torch.uint8)
    return torch.cat([_unpack_stream(chunk, bits, n) for chunk in words.split(_ROW_CHUNK)], dim=0)


def _unpack_stream(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    rows = words.shape[0]
    bit_pos = torch.arange(32, dtype=torch.int64, device=words.device)
    stream = ((words.unsqueeze(2) >> bit_pos) & 1).view(rows, -1, bits)  # (rows, codes, bits)
    weights = torch.arange(bits, dtype=torch.int64, device=words.device)
    return (stream << weights).sum(dim=2)[:, :n].to(torch.uint8)


def dense_words(n: int, bits: int) -> int:
    """int32 words of a dense stream of n b-bit codes with no whole padding words: ceil(n * b / 32)."""
    return math.ceil(n * bits / 32)


def pack_dense(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(rows, n) codes -> (rows, dense_words(n, bits)) int32: pack_bits' stream cut to its last used word
    (the layout of compressed-tensors' pack_to_int32 and of GPTQ's rows)."""
    return pack_bits(codes, bits)[:, : dense_words(codes.shape[1], bits)]


def unpack_dense(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_dense -> (rows, n) uint8."""
    pad = words_per_row(n, bits) - packed.shape[1]
    return unpack_bits(torch.nn.functional.pad(packed, (0, pad)), bits, n)
