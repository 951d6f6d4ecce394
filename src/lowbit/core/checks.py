"""Validation of quantization settings and tensors, shared by every method and format."""

from __future__ import annotations

import torch

from lowbit.errors import LowbitError


def check_bits(bits: int, low: int, high: int, method: str) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not low <= bits <= high:
        raise LowbitError(f"{method} supports {low}..{high} bits, got {bits!r}: pick a bit width in that range")


def check_group_size(group_size: int) -> None:
    """A group size is a positive number of input columns, or -1 for one group per output channel."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or (group_size < 1 and group_size != -1):
        raise LowbitError(f"group size must be a positive integer or -1 (per channel), got {group_size!r}")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise LowbitError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")


def check_finite(t: torch.Tensor, name: str) -> None:
    """Refuse NaN/Inf, naming the tensor (a NaN weight poisons every scale it touches)."""
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise LowbitError(f"{name} has {bad} NaN/Inf values: fix or re-export the checkpoint before quantizing")
