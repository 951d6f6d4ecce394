"""Linear layer over the offset variant of the group-wise integer format (formats.int_group): w = s * q + m.

GGUF's Q4_1 and Q5_1 blocks (llama.cpp) store a scale and a minimum per block of 32 inputs; `zero`
(w = s * (q - z)) could only approximate z = -m / s in fp16, so imported weights keep the offset as is.
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.core.affine import dequantize_offset
from lowbit.formats.bitpack import pack_bits, unpack_bits
from lowbit.formats.int_group import IntGroupOffsetLayout
from lowbit.modules.base import QuantizedLinear


class IntOffsetLinear(QuantizedLinear):
    """y = x @ (scale * code + offset)^T + bias, computed by the kernel the selector picks."""

    layout_type = IntGroupOffsetLayout
    op = "int_group_offset_linear"

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        offset: torch.Tensor,
        bits: int,
        group_size: int,
        bias: torch.Tensor | None = None,
    ) -> "IntOffsetLinear":
        """codes (out, in) uint8, scale and offset (out, n_groups) fp16 (stored as given, never rounded)."""
        out, cols = codes.shape
        module = cls(IntGroupOffsetLayout(out, cols, bits, group_size), has_bias=bias is not None, device=codes.device)
        module.qweight = pack_bits(codes, bits)
        module.scale, module.offset = scale.contiguous(), offset.contiguous()
        if bias is not None:
            module.bias = bias.detach().clone()
        return module

    def dequantize(self) -> torch.Tensor:
        """(out, in) float32 weights."""
        lay = self.layout
        return dequantize_offset(unpack_bits(self.qweight, lay.bits, lay.in_features), self.scale, self.offset, lay.group_size)

    def weight_args(self) -> tuple:
        return (self.qweight, self.scale, self.offset, self.layout.bits, self.layout.group_size)

    def format_context(self) -> dict[str, Any]:
        return {"bits": self.layout.bits, "group_size": self.layout.group_size}
