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
    """Averages the p-th percentile of |x| over calibration batches, clipping rare outliers.

    Batches larger than `max_samples` values are estimated from a seeded uniform sample of that many
    values (deterministic from run to run; 2**20 samples put ~100 values above the 99.99th percentile).
    """

    def __init__(self, percentile: float, max_samples: int = 2**20) -> None:
        self.percentile = percentile
        self.max_samples = max_samples
        self.values: list[float] = []
        self.generator = torch.Generator().manual_seed(0)

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().flatten()
        if flat.numel() > self.max_samples:
            idx = torch.randint(0, flat.numel(), (self.max_samples,), generator=self.generator)
            flat = flat[idx.to(flat.device)]
        flat = flat.abs()
        rank = max(1, min(flat.numel(), math.ceil(self.percentile / 100 * flat.numel())))
        from_top = flat.numel() - rank + 1  # the rank-th smallest is the from_top-th largest: a short top-k
        self.values.append(float(flat.topk(from_top, sorted=True).values[-1]))

    def range(self) -> float:
        return sum(self.values) / len(self.values) if self.values else 0.0


def int8_scale(observed_range: float) -> float:
    """Symmetric int8 scale for a range (never 0, so an all-zero input still quantizes)."""
    return max(observed_range, 1e-8) / 127
