"""Linear layer with int8 weights, one scale per output channel, and 16/32-bit activations (W8A16)."""

from __future__ import annotations


import torch

from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.modules.base import QuantizedLinear


class Int8Linear(QuantizedLinear):
    """y = x @ (qweight * scale)^T + bias; weight-only, so activations are never rounded."""

    layout_type = Int8RowLayout
    op = "int8_weight_linear"

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
