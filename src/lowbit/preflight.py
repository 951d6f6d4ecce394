"""Preflight: estimate the memory and disk a quantization needs before any slow work, and refuse early.

Estimates, in bytes: the loaded model in its compute dtype; the quantized copy (measured bits per weight of
the method on a sample layer, times the model's linear weights); calibration activations (every window's
hidden states for one block, in and out, as the sequential engine keeps them); and the output on disk.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from lowbit.errors import LowbitError
from lowbit.methods.base import MethodConfig

GiB = 1024**3


@dataclass
class Estimate:
    model_bytes: int
    quantized_bytes: int
    calibration_bytes: int

    @property
    def memory_bytes(self) -> int:
        return self.model_bytes + self.quantized_bytes + self.calibration_bytes


def estimate(model: torch.nn.Module, config: MethodConfig, nsamples: int = 0, seqlen: int = 0) -> Estimate:
    params = sum(p.numel() for p in model.parameters())
    dtype_bytes = next(model.parameters()).element_size()
    hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", 0)
    calibration = 2 * nsamples * seqlen * hidden * 4 if config.needs_calibration else 0
    return Estimate(params * dtype_bytes, int(params * _bits_per_weight(config) / 8), calibration)


def _bits_per_weight(config: MethodConfig) -> float:
    """Measured on a random 256 x 512 layer (qparams included)."""
    weight = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    try:
        layer = config.quantize_layer(weight, None, _UniformStats())
    except Exception:  # methods whose layers need real statistics: assume 8 bits, the safe side
        return 8.0
    return 8 * layer.packed_bytes() / weight.numel()


class _UniformStats:
    """Stand-in calibration statistics (ranges for observers) for the sample layer."""

    def range(self) -> float:
        return 4.0


def check_fits(est: Estimate, out: Path) -> None:
    """Refuse with the numbers when memory or disk cannot hold the job."""
    available = psutil.virtual_memory().available
    if est.memory_bytes > available:
        raise LowbitError(
            f"not enough memory: about {est.memory_bytes / GiB:.1f} GiB needed "
            f"(model {est.model_bytes / GiB:.1f}, quantized {est.quantized_bytes / GiB:.1f}, calibration "
            f"{est.calibration_bytes / GiB:.1f}), {available / GiB:.1f} GiB available: use fewer --nsamples, "
            "a shorter --calib-seqlen or a larger machine"
        )
    parent = out.parent if out.parent.exists() else Path.cwd()
    free = shutil.disk_usage(parent).free
    if est.quantized_bytes * 1.1 > free:
        raise LowbitError(
            f"not enough disk for {out}: about {est.quantized_bytes / GiB:.2f} GiB needed, {free / GiB:.2f} GiB free"
        )
