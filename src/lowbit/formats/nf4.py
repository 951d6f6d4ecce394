"""The bitsandbytes-style 4-bit format (NF4 or FP4 codes, absmax per block), optionally double-quantized.

One (out, in) layer, N = out * in weights flattened row-major, B = blocksize (64 by default),
n_blocks = ceil(N / B), blocks of the absmax values n2 = ceil(n_blocks / 256):

    qweight       uint8 (ceil(N / 2),)   two codes per byte, the first in the high nibble (bitsandbytes'
                                         order): byte k = code[2k] << 4 | code[2k + 1]
    absmax        fp32  (n_blocks,)      plain; or with double quantization instead:
    absmax_q      int8  (n_blocks,)      round((absmax - mean) / absmax_scale[block of 256])
    absmax_scale  fp16  (n2,)
    absmax_mean   fp32  (1,)

    w[i] = code_table[code[i]] * absmax[i // B]

Bytes: ceil(N / 2) + 4 * n_blocks, or ceil(N / 2) + n_blocks + 2 * n2 + 4 with double quantization
(4.5 and about 4.127 bits per weight at B = 64).

tile_chunk > 0: qweight holds the same bytes in tile order (formats.word_tiles: (out / 16, in / (8 tile_chunk),
64 tile_chunk), chunks of tile_chunk 4-byte words), the order the GPU kernels read fastest; 0 is the row order above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.core.affine import QPARAM_DTYPE
from lowbit.core.codebook import DOUBLE_QUANT_BLOCK
from lowbit.formats.word_tiles import check_layout_order, tile_shape


@dataclass(frozen=True)
class FourBitLayout:
    out_features: int
    in_features: int
    quant_type: str  # "nf4" or "fp4"
    blocksize: int
    double_quant: bool
    tile_chunk: int = 0  # words of a tile chunk when qweight is in tile order (formats.word_tiles), else 0

    def __post_init__(self):
        cols = self.in_features
        check_layout_order("NF4/FP4", self.out_features, cols, cols // 8, self.tile_chunk,
                           "in_features is not a multiple of 8" if cols % 8 else None)

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.out_features * self.in_features / self.blocksize)

    def buffer_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        chunk = self.tile_chunk
        packed = (tile_shape(self.out_features, self.in_features // 8, chunk, 4) if chunk
                  else (math.ceil(self.out_features * self.in_features / 2),))
        shapes = {"qweight": (packed, torch.uint8)}
        if not self.double_quant:
            return shapes | {"absmax": ((self.n_blocks,), torch.float32)}
        return shapes | {
            "absmax_q": ((self.n_blocks,), torch.int8),
            "absmax_scale": ((math.ceil(self.n_blocks / DOUBLE_QUANT_BLOCK),), QPARAM_DTYPE),
            "absmax_mean": ((1,), torch.float32),
        }

    def nbytes(self) -> int:
        return sum(math.prod(shape) * dtype.itemsize for shape, dtype in self.buffer_shapes().values())


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(n,) uint8 codes < 16 -> (ceil(n / 2),) uint8, first code of each pair in the high nibble."""
    c = torch.nn.functional.pad(codes.reshape(-1), (0, codes.numel() % 2))
    return (c[0::2] << 4) | c[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of pack_nibbles -> (n,) uint8."""
    return torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:n]
