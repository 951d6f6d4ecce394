"""Row-wise symmetric int8 weights (ptq's W8A8; later eetq and LLM.int8 share it).

    qweight  int8  (out, in)     round(w / scale), in [-127, 127]
    scale    fp16  (out, 1)      absmax of the row / 127

Bytes: out * in + 2 * out.

tile_chunk > 0: qweight holds the same bytes in tile order (formats.word_tiles: (out / 16, in / (4 tile_chunk),
64 tile_chunk), chunks of tile_chunk 4-byte words), the order the GPU kernels read fastest; 0 is the row order above.
Only the weight-only layer (Int8Linear) takes it; the W8A8 and LLM.int8 kernels read rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.affine import QPARAM_DTYPE
from lowbit.formats.word_tiles import check_layout_order, tile_shape


@dataclass(frozen=True)
class Int8RowLayout:
    out_features: int
    in_features: int
    tile_chunk: int = 0  # words of a tile chunk when qweight is in tile order (formats.word_tiles), else 0

    def __post_init__(self):
        cols = self.in_features
        check_layout_order("int8", self.out_features, cols, cols // 4, self.tile_chunk,
                           "in_features is not a multiple of 4" if cols % 4 else None)

    def buffer_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        chunk = self.tile_chunk
        packed = (tile_shape(self.out_features, self.in_features // 4, chunk, 4) if chunk
                  else (self.out_features, self.in_features))
        return {"qweight": (packed, torch.int8), "scale": ((self.out_features, 1), QPARAM_DTYPE)}

    def nbytes(self) -> int:
        return self.out_features * self.in_features + 2 * self.out_features
