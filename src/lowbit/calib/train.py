"""The optimisation loop shared by AQLM's block fine-tuning and QAT: AdamW, cosine schedule, clipping, seeds.

`Trainer` owns the optimizer and the learning-rate schedule (linear warm-up, then cosine decay to
`final_lr_fraction` of the peak, Loshchilov & Hutter 2017) and does one clipped step per `step(loss)`.
Its `state_dict` holds everything a resumed run needs (optimizer moments, schedule position, step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from lowbit.errors import LowbitError


@dataclass(frozen=True)
class Schedule:
    lr: float
    steps: int
    weight_decay: float = 0.0
    warmup: float = 0.0  # fraction of the steps spent warming up linearly from 0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    final_lr_fraction: float = 0.0  # the cosine ends at lr * this

    def __post_init__(self) -> None:
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise LowbitError(f"learning rate must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0 or not 0 <= self.warmup < 1:
            raise LowbitError("weight_decay and grad_clip must be >= 0 and warmup in [0, 1)")

    def factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at `step` (0-based)."""
        warm = int(self.warmup * self.steps)
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, self.steps - warm))
        return self.final_lr_fraction + (1 - self.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """AdamW over `groups` (param groups; a group may carry its own "lr" multiplier as "lr_scale")."""

    def __init__(self, groups: Iterable[dict[str, Any]], schedule: Schedule):
        self.groups = [dict(g) for g in groups if g["params"]]
        for g in self.groups:
            g["lr"] = schedule.lr * g.pop("lr_scale", 1.0)
        self.params = [p for g in self.groups for p in g["params"]]
        if not self.params:
            raise LowbitError("nothing to train: every trainable tensor is frozen")
        self.optimizer = torch.optim.AdamW(self.groups, lr=schedule.lr, weight_decay=schedule.weight_decay)
        self.peak = [g["lr"] for g in self.optimizer.param_groups]
        self.schedule, self.done = schedule, 0
        self._set_lr()

    def _set_lr(self) -> None:
        factor = self.schedule.factor(self.done)
        for group, peak in zip(self.optimizer.param_groups, self.peak):
            group["lr"] = peak * factor

    def step(self, loss: torch.Tensor) -> float:
        """Backpropagate `loss`, clip, step and advance the schedule; returns the loss as a float."""
        value = float(loss.detach())
        if not math.isfinite(value):
            raise LowbitError(f"training loss became {value} at step {self.done}: lower the learning rate")
        loss.backward()
        if self.schedule.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.schedule.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.done += 1
        self._set_lr()
        return value

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.done = int(state["done"])
        self._set_lr()
