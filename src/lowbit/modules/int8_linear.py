"""Linear layer with int8 weights, one scale per output channel, and 16/32-bit activations (W8A16)."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.kernels.cuda_mma import tile_chunk
from lowbit.modules.base import QuantizedLinear


class Int8Linear(QuantizedLinear):
    """y = x @ (qweight * scale)^T + bias; weight-only, so activations are never rounded."""

    layout_type = Int8RowLayout
    op = "int8_weight_linear"
    # The weight-only kernels read tile order, faster at one row on an H100 (docs/kern19.md); the W8A8 and LLM.int8
    # subclasses' integer kernels read rows and set this False.
    tiles_on_cuda = True

    @classmethod
    def from_int8(cls, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> "Int8Linear":
        out, cols = qweight.shape
        module = cls(Int8RowLayout(out, cols), has_bias=bias is not None, device=qweight.device)
        module.qweight, module.scale = qweight, scale
        if bias is not None:
            module.bias = bias.detach().clone()
        return module

    def weight_args(self) -> tuple:
        return (self.qweight, self.scale)

    def format_context(self) -> dict[str, Any]:
        return {"bits": 8, "tile_chunk": self.layout.tile_chunk}

    def cuda_tile_chunk(self) -> int:
        """cuda_tile_chunk(layout) for the weight-only layer; 0 for the row-reading subclasses."""
        return cuda_tile_chunk(self.layout) if self.tiles_on_cuda else 0


def cuda_tile_chunk(layout: Int8RowLayout) -> int:
    """The tile chunk an int8 weight-only layer holds on CUDA: cuda_mma's where it reads the shape (one group a row;
    faster at one row on an H100, docs/kern19.md), else 0."""
    return tile_chunk(8, layout.in_features, layout.out_features, layout.in_features)
