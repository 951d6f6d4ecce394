"""ptq: classic static post-training quantization, W8A8 (Jacob et al., 2018; Wu et al., 2020).

Weights: int8, symmetric, one scale per output channel. Activations: int8, symmetric, one scale per
layer input fixed ahead of time from calibration data by a min-max or percentile observer. The forward
runs an int8 x int8 matmul (torch._int_mm where the selector finds it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.affine import int8_absmax
from lowbit.core.checks import check_bits, check_choice
from lowbit.core.observers import MinMaxObserver, PercentileObserver, int8_scale
from lowbit.errors import LowbitError
from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.w8a8_linear import W8A8Linear

OBSERVERS = ("minmax", "percentile")


@register_method("ptq")
@dataclass(frozen=True, kw_only=True)
class PTQConfig(MethodConfig):
    needs_calibration = True

    bits: int = 8
    observer: str = "percentile"
    percentile: float = 99.99

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits, 8, 8, "ptq (W8A8)")
        check_choice(self.observer, OBSERVERS, "observer")
        if not 50 < self.percentile <= 100:
            raise LowbitError(f"percentile must be in (50, 100], got {self.percentile}")

    def make_observer(self) -> MinMaxObserver | PercentileObserver:
        return MinMaxObserver() if self.observer == "minmax" else PercentileObserver(self.percentile)

    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None) -> W8A8Linear:
        if stats is None:
            raise LowbitError("ptq needs calibrated activation ranges: pass calibration data (--calib)")
        qweight, scale = int8_absmax(weight, dim=1)  # (out, in) int8, (out, 1)
        return W8A8Linear.from_calibrated(qweight, scale, int8_scale(stats.range()), bias)

    def empty_layer(self, out_features: int, in_features: int, has_bias: bool = False) -> W8A8Linear:
        return W8A8Linear(Int8RowLayout(out_features, in_features), has_bias, device="meta")
