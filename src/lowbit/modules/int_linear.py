"""Linear layer over the shared group-wise integer format (formats.int_group)."""

from __future__ import annotations


import torch

from lowbit.core.affine import IntWeights, resolve_group_size
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

    @classmethod
    def empty(cls, out: int, cols: int, bits: int, group_size: int, symmetric: bool, has_bias: bool) -> "IntLinear":
        """The module from_weights makes for an (out, cols) weight, empty on the meta device."""
        layout = IntGroupLayout(out, cols, bits, resolve_group_size(group_size, cols), symmetric)
        return cls(layout, has_bias, device="meta")

    def int_weights(self) -> IntWeights:
        return unpack_int(dict(self.named_buffers(recurse=False)), self.layout)

    def weight_args(self) -> tuple:
        lay = self.layout
        return (self.qweight, self.scale, getattr(self, "zero", None), lay.bits, lay.group_size)

    def order_words_for(self, device: torch.device) -> bool:
        """Row order on every device for now: the tile order's Triton paths have run only under the interpreter
        (docs/kern17.md, Next). Returns whether the order changed."""
        return self.order_words(0)

    def format_context(self) -> dict[str, Any]:
        return {"bits": self.layout.bits, "group_size": self.layout.group_size, "tile_chunk": self.layout.tile_chunk}
