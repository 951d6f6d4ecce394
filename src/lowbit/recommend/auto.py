"""Mixed precision under a memory budget (`lowbit quantize --method auto`): sensitivity, then allocation.

1. Exact bytes of every target layer at each candidate width with the base method, and of everything
   else the model holds (recommend.predict), so the budget covers the whole model as memory_report
   counts it.
2. Per-layer sensitivity on a few windows of calibration text (recommend.sensitivity).
3. The widths that minimise the summed predicted loss within the budget (recommend.allocate).
The result is a `mixed` config (methods.mixed) that api.quantize applies like any other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.methods.base import MethodConfig
from lowbit.methods.mixed import MixedConfig
from lowbit.recommend.allocate import allocate
from lowbit.recommend.units import fmt_bytes
from lowbit.recommend.predict import layer_sizes
from lowbit.recommend.sensitivity import Sensitivity, layer_sensitivity

MIXED_BITS = (2, 3, 4, 8)


@dataclass
class AutoResult:
    config: MixedConfig
    predicted_bytes: int  # the whole model's weight bytes, as memory_report will count them
    budget_bytes: int
    predicted_loss: float  # summed sensitivity of the chosen widths: estimated rise of the mean NLL (nats)
    sensitivity: Sensitivity

    def describe(self) -> str:
        return (f"mixed precision {self.config.summary()}: {fmt_bytes(self.predicted_bytes)} of the "
                f"{fmt_bytes(self.budget_bytes)} budget, estimated log-perplexity rise {self.predicted_loss:.3f}")


def check_base(base: MethodConfig, bits: tuple[int, ...]) -> None:
    """Refuse a base mixed precision cannot use, before any slow work (MixedConfig's own checks)."""
    MixedConfig(base=base.to_dict(), layer_bits={"any": b for b in bits[:1]})
    for b in bits:
        dataclasses.replace(base, bits=b)


def auto_config(
    model: nn.Module, windows: torch.Tensor, base: MethodConfig, budget_bytes: int,
    bits: tuple[int, ...] = MIXED_BITS, progress: bool = False, labels: str = "text",
) -> AutoResult:
    """The per-layer widths of `base` for `model` that fit `budget_bytes` with the least predicted loss."""
    check_base(base, bits)
    fixed, sizes = layer_sizes(model, base, bits)
    smallest = fixed + sum(min(s.values()) for s in sizes.values())
    if budget_bytes < smallest:
        raise LowbitError(f"a budget of {fmt_bytes(budget_bytes)} is below the smallest mixed setting: "
                          f"{fmt_bytes(smallest)} with every layer at {min(bits)} bits")
    sensitivity = layer_sensitivity(model, windows, base, bits, progress, labels)
    widths = allocate(sensitivity.loss, sizes, budget_bytes - fixed)
    config = MixedConfig(base=base.to_dict(), layer_bits=widths, include=base.include, exclude=base.exclude)
    return AutoResult(
        config,
        fixed + sum(sizes[n][b] for n, b in widths.items()),
        budget_bytes,
        sum(sensitivity.loss[n][b] for n, b in widths.items()),
        sensitivity,
    )
