"""Error metrics between a tensor and its quantized approximation."""

from __future__ import annotations

import torch


def relative_error(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """||ref - approx|| / ||ref|| in float64."""
    ref64, approx64 = ref.double(), approx.double()
    return float((ref64 - approx64).norm() / ref64.norm().clamp(min=1e-30))


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 20 log10(||ref|| / ||ref - approx||)."""
    return float(-20 * torch.log10(torch.tensor(relative_error(ref, approx)).clamp(min=1e-30)))
