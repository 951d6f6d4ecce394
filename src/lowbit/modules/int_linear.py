"""Linear layer over the shared group-wise integer format (formats.int_group)."""

from __future__ import annotations


import torch

from lowbit.core.affine import IntWeights
from lowbit.formats.int_group import IntGroupLayout, pack_int, unpack_int
from lowbit.modules.base import QuantizedLinear


class IntLinear(QuantizedLinear):
    """y = x @ dequant(qweight, scale, zero)^T + bias, computed by the kernel the selector picks."""

    layout_type = IntGroupLayout
    op = "int_group_linear"

    @classmethod
    def from_weights(cls, w: IntWeights, bias: torch.Tensor | None) -> "IntLinear":
        out, cols = w.codes.shape
        layout = IntGroupLayout(out, cols, w.bits, w.group_size, symmetric=w.zero is None)
        module = cls(layout, has_bias=bias is not None, device=w.codes.device)
        for name, tensor in pack_int(w).items():
            setattr(module, name, tensor)
        if bias is not None:
            module.bias = bias.detach().clone()
        return module

    def int_weights(self) -> IntWeights:
        return unpack_int(dict(self.named_buffers(recurse=False)), self.layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        zero = getattr(self, "zero", None)
        flat = x.reshape(-1, lay.in_features)
        y = self.kernel(x).fn(flat, self.qweight, self.scale, zero, lay.bits, lay.group_size, self.bias)
        return y.reshape(*x.shape[:-1], lay.out_features)
