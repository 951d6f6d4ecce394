"""eetq: int8 weight-only, per output channel, symmetric absmax; activations stay 16/32-bit (W8A16).

In the style of EETQ (NetEase, 2023). Runs through `Int8Linear`'s kernel op; its fast GPU kernel
comes with the kernels work, the reference path runs everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.affine import int8_absmax
from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.int8_linear import Int8Linear


@register_method("eetq")
@dataclass(frozen=True, kw_only=True)
class EETQConfig(MethodConfig):
    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None) -> Int8Linear:
        qweight, scale = int8_absmax(weight, dim=1)  # (out, in) int8, (out, 1)
        return Int8Linear.from_int8(qweight, scale, bias)

    def empty_layer(self, out_features: int, in_features: int, has_bias: bool = False) -> Int8Linear:
        return Int8Linear(Int8RowLayout(out_features, in_features), has_bias, device="meta")
