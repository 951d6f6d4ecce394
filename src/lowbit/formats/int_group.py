"""The shared group-wise integer format (rtn, gptq, awq, hqq and qat all emit it).

Buffers of one (out, in) layer quantized to b bits with groups of g input columns, n_groups = ceil(in / g):

    qweight  int32 (out, words_per_row(in, b))   codes packed along the input dim, low bits first
                                                 (formats.bitpack draws the words)
    scale    fp16  (out, n_groups)
    zero     fp16  (out, n_groups)               asymmetric only; symmetric uses 2**(b-1)

    w[o, i] = scale[o, i // g] * (code[o, i] - zero[o, i // g])

Bytes: 4 * out * words_per_row(in, b) + 2 * out * n_groups * (2 if asymmetric else 1).

tile_chunk > 0: qweight holds the same words in tile order (formats.word_tiles: (out / 16, words_per_row /
tile_chunk, 16 tile_chunk)), the order the GPU kernels read fastest; 0 is the row order above. 3-bit chunks hold
whole units of 3 words (cuda_mma's: 4 units, 12 words).

The offset variant (IntGroupOffsetLayout, GGUF's Q4_1/Q5_1 "min" form) stores the same qweight and scale
and, instead of `zero`, an additive offset, so that weights imported from GGUF keep their exact values:

    offset   fp16  (out, n_groups)               w[o, i] = scale[o, i // g] * code[o, i] + offset[o, i // g]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.affine import QPARAM_DTYPE, IntWeights, n_groups
from lowbit.formats.bitpack import pack_bits, unpack_bits, words_per_row
from lowbit.formats.word_tiles import check_layout_order, row_order, tile_shape


@dataclass(frozen=True)
class IntGroupLayout:
    out_features: int
    in_features: int
    bits: int
    group_size: int  # resolved (never -1)
    symmetric: bool
    tile_chunk: int = 0  # words of a tile chunk when qweight is in tile order (formats.word_tiles), else 0

    def __post_init__(self):
        split = self.bits == 3 and self.tile_chunk % 3
        check_layout_order("int_group", self.out_features, self.in_features, words_per_row(self.in_features, self.bits),
                           self.tile_chunk, f"a chunk of {self.tile_chunk} words splits 3-bit units" if split else None)

    @property
    def n_groups(self) -> int:
        return n_groups(self.in_features, self.group_size)

    def buffer_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        per_row, chunk = words_per_row(self.in_features, self.bits), self.tile_chunk
        words = tile_shape(self.out_features, per_row, chunk) if chunk else (self.out_features, per_row)
        shapes = {
            "qweight": (words, torch.int32),
            "scale": ((self.out_features, self.n_groups), QPARAM_DTYPE),
        }
        if not self.symmetric:
            shapes["zero"] = ((self.out_features, self.n_groups), QPARAM_DTYPE)
        return shapes

    def nbytes(self) -> int:
        return sum(_numel(shape) * dtype.itemsize for shape, dtype in self.buffer_shapes().values())


@dataclass(frozen=True)
class IntGroupOffsetLayout:
    out_features: int
    in_features: int
    bits: int
    group_size: int

    def base(self) -> IntGroupLayout:
        return IntGroupLayout(self.out_features, self.in_features, self.bits, self.group_size, symmetric=False)

    def buffer_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        shapes = self.base().buffer_shapes()
        shapes["offset"] = shapes.pop("zero")
        return shapes

    def nbytes(self) -> int:
        return self.base().nbytes()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def pack_int(w: IntWeights) -> dict[str, torch.Tensor]:
    packed = {"qweight": pack_bits(w.codes, w.bits), "scale": w.scale.to(QPARAM_DTYPE).contiguous()}
    if w.zero is not None:
        packed["zero"] = w.zero.to(QPARAM_DTYPE).contiguous()
    return packed


def unpack_int(packed: dict[str, torch.Tensor], layout: IntGroupLayout) -> IntWeights:
    codes = unpack_bits(row_order(packed["qweight"]), layout.bits, layout.in_features)
    return IntWeights(codes, packed["scale"], packed.get("zero"), layout.bits, layout.group_size)
