"""GGML's simple block types (llama.cpp's GGUF files), read into lowbit's group-wise integer formats exactly.

Every row of an (out, in) tensor is a run of blocks of 32 consecutive inputs; a block's bytes are

    Q8_0  d fp16 | 32 x int8 q                          w = d * q             -> 8-bit, code q + 128
    Q4_0  d fp16 | 16 bytes qs                          w = d * (q - 8)       -> 4-bit, code q
    Q5_0  d fp16 | qh uint32 | 16 bytes qs              w = d * (q - 16)      -> 5-bit, code q
    Q4_1  d fp16 | m fp16 | 16 bytes qs                 w = d * q + m         -> 4-bit offset variant
    Q5_1  d fp16 | m fp16 | qh uint32 | 16 bytes qs     w = d * q + m         -> 5-bit offset variant

with the low nibble of qs[j] holding element j and the high nibble element j + 16, and bit i of the
little-endian qh the fifth bit of element i. The first three are lowbit's symmetric format (implicit
zero 2**(b-1)) with scale d; the last two its offset variant with scale d and offset m. The fp16 d and m
are kept as they are, so the dequantized weights equal llama.cpp's bit for bit.

Not mapped (they stay float when imported): the k-quants (Q2_K..Q6_K: a 6- or 8-bit sub-block scale times
an fp16 super-block scale is not an fp16 number), the i-quants (lattice codebooks) and Q8_1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32  # inputs per block, the lowbit group size of every mapped type


@dataclass(frozen=True)
class BlockType:
    bits: int
    has_min: bool  # offset variant (w = d * q + m)
    has_high_bits: bool  # a qh word holds each code's fifth bit

    @property
    def nbytes(self) -> int:
        return 2 + 2 * self.has_min + 4 * self.has_high_bits + (BLOCK if self.bits == 8 else BLOCK // 2)


BLOCK_TYPES = {
    "Q8_0": BlockType(8, False, False),
    "Q4_0": BlockType(4, False, False),
    "Q5_0": BlockType(5, False, True),
    "Q4_1": BlockType(4, True, False),
    "Q5_1": BlockType(5, True, True),
}


@dataclass
class BlockCodes:
    """codes (out, in) uint8; scale (out, in / 32) fp16; offset (out, in / 32) fp16 or None (symmetric)."""

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor | None
    bits: int


def decode_blocks(raw: np.ndarray, type_name: str) -> BlockCodes:
    """raw (out, n_blocks * block bytes) uint8, as GGUFReader maps a tensor -> codes and qparams."""
    kind = BLOCK_TYPES[type_name]
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(rows, -1, kind.nbytes)  # (out, n_blocks, bytes)
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0]  # (out, n_blocks)
    pos = 2
    offset = None
    if kind.has_min:
        offset = blocks[..., 2:4].copy().view(np.float16)[..., 0]
        pos = 4
    if kind.bits == 8:
        codes = (blocks[..., pos:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)  # (out, n_blocks, 32)
    else:
        high = None
        if kind.has_high_bits:
            high = np.unpackbits(blocks[..., pos : pos + 4], axis=-1, bitorder="little")  # (out, n_blocks, 32)
            pos += 4
        qs = blocks[..., pos:]  # (out, n_blocks, 16)
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # (out, n_blocks, 32)
        if high is not None:
            codes = codes | (high << 4)
    to_torch = torch.from_numpy
    return BlockCodes(
        to_torch(codes.reshape(rows, -1)),
        to_torch(np.ascontiguousarray(scale)),
        None if offset is None else to_torch(np.ascontiguousarray(offset)),
        kind.bits,
    )
