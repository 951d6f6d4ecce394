"""rtn: weight-only round-to-nearest with min-max qparams per group (the baseline; no data needed).

Symmetric or asymmetric; asymmetric zero points are fractional by default (the group's min and max land
on the grid exactly, as in bitsandbytes-style asymmetric and HQQ) or integers with `integer_zero`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.affine import rtn_quantize
from lowbit.core.checks import check_bits, check_group_size
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.int_linear import IntLinear


@register_method("rtn")
@dataclass(frozen=True, kw_only=True)
class RTNConfig(MethodConfig):
    bits: int = 4
    group_size: int = 128  # -1: one group per output channel; need not divide the input size
    symmetric: bool = False
    integer_zero: bool = False  # True: GPTQ-style integer zero points (exportable to GPTQ/AWQ formats)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits, 2, 8, "rtn")
        check_group_size(self.group_size)

    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None) -> IntLinear:
        w = rtn_quantize(weight, self.bits, self.group_size, self.symmetric, self.integer_zero)
        return IntLinear.from_weights(w, bias)

    def empty_layer(self, out_features: int, in_features: int, has_bias: bool = False) -> IntLinear:
        return IntLinear.empty(out_features, in_features, self.bits, self.group_size, self.symmetric, has_bias)
