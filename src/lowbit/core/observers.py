"""Activation range observers for static quantization (scales fixed ahead of inference from data)."""

from __future__ import annotations

import math

import torch


class MinMaxObserver:
    """Tracks the largest |x| seen: the scale covers every calibration value (outliers included)."""

    def __init__(self) -> None:
        self.absmax = 0.0

    def update(self, x: torch.Tensor) -> None:
        self.absmax = max(self.absmax, float(x.detach().abs().max()))

    def range(self) -> float:
        return self.absmax


class PercentileObserver:
    """Averages the p-th percentile of |x| over calibration batches, clipping rare outliers."""

    def __init__(self, percentile: float) -> None:
        self.percentile = percentile
        self.values: list[float] = []

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().abs().flatten().float()
        k = max(1, min(flat.numel(), math.ceil(self.percentile / 100 * flat.numel())))
        self.values.append(float(flat.kthvalue(k).values))

    def range(self) -> float:
        return sum(self.values) / len(self.values) if self.values else 0.0


def int8_scale(observed_range: float) -> float:
    """Symmetric int8 scale for a range (never 0, so an all-zero input still quantizes)."""
    return max(observed_range, 1e-8) / 127
