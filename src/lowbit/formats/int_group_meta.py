"""The group-wise integer format with two HQQ options: grouping along the output axis, 8-bit qparams.

Badri & Shaji (2023) group either along the input axis (axis 1, the shared `int_group` format, which
`IntLinear` runs) or along the output axis (axis 0), and can quantize their scales and zeros to 8 bits.

    axis 1: qweight int32 (out, words_per_row(in, b))   codes of W, rows = out, groups of g inputs
    axis 0: qweight int32 (in, words_per_row(out, b))   codes of W^T, rows = in, groups of g outputs

with rows x n_groups qparams (n_groups = ceil(cols / g)). Stored as fp16 `scale`, `zero` (rows, n_groups),
or, with 8-bit qparams (axis 1 only), for p in (scale, zero), transposed so blocks run along rows:

    {p}_codes  uint8 (n_groups, rows)                    round-to-nearest, asymmetric, 8 bits
    {p}_scale  fp16  (n_groups, ceil(rows / 128))        one per block of 128 rows
    {p}_zero   fp16  (n_groups, ceil(rows / 128))

Bytes: 4 * rows * words_per_row(cols, b) + qparams, where qparams are 2 * 2 * rows * n_groups in fp16
or 2 * (rows * n_groups + 2 * 2 * n_groups * ceil(rows / 128)) with 8-bit qparams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.core.affine import QPARAM_DTYPE, IntWeights, n_groups, rtn_quantize
from lowbit.formats.int_group import IntGroupLayout

QPARAM_BLOCK = 128  # rows per (scale, zero) pair of the 8-bit qparams
QPARAM_NAMES = ("scale", "zero")


@dataclass(frozen=True)
class IntGroupMetaLayout:
    out_features: int
    in_features: int
    bits: int
    group_size: int  # resolved (never -1), along `axis`
    axis: int  # 1: groups of inputs; 0: groups of outputs
    quant_qparams: bool

    def base(self) -> IntGroupLayout:
        """The plain layout of the stored matrix (W for axis 1, W^T for axis 0)."""
        rows, cols = (self.out_features, self.in_features) if self.axis == 1 else (self.in_features, self.out_features)
        return IntGroupLayout(rows, cols, self.bits, self.group_size, symmetric=False)

    def buffer_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        base = self.base()
        shapes = base.buffer_shapes()
        if self.quant_qparams:
            rows, groups = base.out_features, base.n_groups
            blocks = n_groups(rows, QPARAM_BLOCK)
            for p in QPARAM_NAMES:
                del shapes[p]
                shapes[f"{p}_codes"] = ((groups, rows), torch.uint8)
                shapes[f"{p}_scale"] = ((groups, blocks), QPARAM_DTYPE)
                shapes[f"{p}_zero"] = ((groups, blocks), QPARAM_DTYPE)
        return shapes

    def nbytes(self) -> int:
        return sum(math.prod(shape) * dtype.itemsize for shape, dtype in self.buffer_shapes().values())


def quantize_qparam(values: torch.Tensor) -> dict[str, torch.Tensor]:
    """(rows, n_groups) fp16 qparams -> 8-bit codes (n_groups, rows) + fp16 scale/zero per 128 rows."""
    q = rtn_quantize(values.t().float(), 8, QPARAM_BLOCK, symmetric=False)
    return {"codes": q.codes, "scale": q.scale, "zero": q.zero}


def dequantize_qparam(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Inverse of quantize_qparam -> (rows, n_groups) fp16, the values the forward uses."""
    return IntWeights(codes, scale, zero, 8, QPARAM_BLOCK).dequantize().t().to(QPARAM_DTYPE).contiguous()
