"""Linear layer over the shared group-wise integer format (formats.int_group)."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.core.affine import IntWeights, resolve_group_size
from lowbit.formats.int_group import IntGroupLayout, pack_int, unpack_int
from lowbit.kernels.cuda_mma import tile_chunk
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

    def cuda_tile_chunk(self) -> int:
        return cuda_tile_chunk(self.layout)

    def format_context(self) -> dict[str, Any]:
        return {"bits": self.layout.bits, "group_size": self.layout.group_size, "tile_chunk": self.layout.tile_chunk}


def cuda_tile_chunk(layout: IntGroupLayout) -> int:
    """The tile chunk an int_group layer holds on CUDA: cuda_mma's where it reads the shape (its warp loads then read
    consecutive words: docs/kern17.md, kern18.md, kern19.md for 3-bit codes); 0, row order, for shapes it does not
    take."""
    return tile_chunk(layout.bits, layout.in_features, layout.out_features, layout.group_size)
