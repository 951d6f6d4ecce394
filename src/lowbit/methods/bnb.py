"""Calibration-free methods in the style of bitsandbytes.

- `int8`: LLM.int8 (Dettmers et al., 2022). Row-wise absmax int8 weights; at run time activation columns
  with any |x| > threshold (default 6.0) go through a float matmul with the matching weight columns, the
  rest through int8 x int8 with vector-wise scales. threshold 0 is plain int8 x int8.
- `nf4` / `fp4`: 4-bit NormalFloat / float codes with an absmax per block of 64 (QLoRA, Dettmers et al.,
  2023), optionally with double quantization of the absmax values (8-bit, blocks of 256, mean removed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.affine import int8_absmax
from lowbit.errors import LowbitError
from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.formats.nf4 import FourBitLayout
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.fourbit_linear import FourBitLinear
from lowbit.modules.llm_int8_linear import LLMInt8Linear


@register_method("int8")
@dataclass(frozen=True, kw_only=True)
class LLMInt8Config(MethodConfig):
    threshold: float = 6.0  # |activation| above which an input column takes the float path; 0: never

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.threshold >= 0:
            raise LowbitError(f"int8 threshold must be >= 0 (0 disables the outlier path), got {self.threshold}")

    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None) -> LLMInt8Linear:
        qweight, scale = int8_absmax(weight, dim=1)  # (out, in) int8, (out, 1)
        module = LLMInt8Linear.from_int8(qweight, scale, bias)
        module.threshold = float(self.threshold)
        return module

    def empty_layer(self, out_features: int, in_features: int, has_bias: bool = False) -> LLMInt8Linear:
        return LLMInt8Linear(Int8RowLayout(out_features, in_features), has_bias, "meta", float(self.threshold))


@dataclass(frozen=True, kw_only=True)
class FourBitConfig(MethodConfig):
    blocksize: int = 64
    double_quant: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.blocksize, int) or isinstance(self.blocksize, bool) or self.blocksize < 2:
            raise LowbitError(f"{self.name} blocksize must be an integer >= 2, got {self.blocksize!r}")

    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None) -> FourBitLinear:
        out, cols = weight.shape
        layout = FourBitLayout(out, cols, self.name, self.blocksize, self.double_quant)
        return FourBitLinear.from_float(weight, bias, layout)

    def empty_layer(self, out_features: int, in_features: int, has_bias: bool = False) -> FourBitLinear:
        layout = FourBitLayout(out_features, in_features, self.name, self.blocksize, self.double_quant)
        return FourBitLinear(layout, has_bias, device="meta")


@register_method("nf4")
@dataclass(frozen=True, kw_only=True)
class NF4Config(FourBitConfig):
    """4-bit NormalFloat: the code values are quantiles of N(0, 1), suited to normally distributed weights."""


@register_method("fp4")
@dataclass(frozen=True, kw_only=True)
class FP4Config(FourBitConfig):
    """4-bit float (1 sign, 2 exponent, 1 mantissa bits), bitsandbytes' table."""
