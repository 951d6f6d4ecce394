"""Block-wise reconstruction: train a quantized block so that it reproduces the float block's outputs.

AQLM fine-tunes each block's codebooks, scales and norms this way (Egiazarian et al., 2024, section 3.4)
and QAT's block-wise mode trains weights, scales and zero points (Block-AP of EfficientQAT, Chen et al.,
2024). The loss is the mean squared error between the block's outputs and `targets` (the float block's
outputs on the same recorded inputs), over micro-batches of the recorded windows in a seeded random order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lowbit.calib.engine import Batch, BlockRun, first_output
from lowbit.calib.train import Schedule, Trainer


def micro_batches(inputs: list[Batch], targets: list[torch.Tensor], size: int) -> list[tuple[Batch, torch.Tensor]]:
    """The recorded batches cut into batches of at most `size` windows, each with its slice of the targets.

    Keyword tensors whose leading size is the batch's (attention masks) are cut alike; others are shared.
    """
    parts = []
    for (hidden, kwargs), target in zip(inputs, targets):
        rows = hidden.shape[0]
        for start in range(0, rows, size):
            cut = slice(start, min(start + size, rows))
            parts.append(((hidden[cut], {k: _cut(v, rows, cut) for k, v in kwargs.items()}), target[cut]))
    return parts


def _cut(value: Any, rows: int, cut: slice) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
        return value[cut]
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(v, rows, cut) for v in value)
    return value


def block_loss(run: BlockRun, batch: Batch, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the block's output on one batch against `target`."""
    hidden, kwargs = batch
    return F.mse_loss(first_output(run.block(hidden, **kwargs)).float(), target.float())


@torch.no_grad()
def mean_loss(run: BlockRun, batches: list[tuple[Batch, torch.Tensor]]) -> float:
    return sum(float(block_loss(run, batch, target)) for batch, target in batches) / len(batches)


def reconstruct_block(
    run: BlockRun,
    batches: list[tuple[Batch, torch.Tensor]],
    groups: list[dict[str, Any]],
    schedule: Schedule,
    seed: int = 0,
    probe: int = 4,
) -> torch.Tensor:
    """Train the parameters in `groups` (AdamW param groups) for schedule.steps steps, cycling through
    `batches` ((input, target) pairs) in a new seeded order each pass; every other parameter of the block
    stays frozen. Returns (mean loss before, mean loss after) on the first `probe` batches."""
    before = mean_loss(run, batches[:probe])
    trainable = {id(p) for g in groups for p in g["params"]}
    flags = {p: p.requires_grad for p in run.block.parameters()}
    for p in run.block.parameters():
        p.requires_grad_(id(p) in trainable)
    generator = torch.Generator().manual_seed(seed)
    trainer, order = Trainer(groups, schedule), []
    try:
        with torch.enable_grad():
            for _ in range(schedule.steps):
                if not order:
                    order = torch.randperm(len(batches), generator=generator).tolist()
                batch, target = batches[order.pop()]
                trainer.step(block_loss(run, batch, target))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return torch.tensor([before, mean_loss(run, batches[:probe])])
