"""Which kernel each quantized layer of a model runs, and why the faster ones were skipped.

The comparison report reads `layer_kernels` to name the kernel behind each speed figure;
`prepare_kernels` repacks every layer into its kernel's layout ahead of the first call (at load time), its words in
its device's order first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.kernels.select import explain, select
from lowbit.modules.base import QuantizedLinear


@dataclass(frozen=True)
class KernelChoice:
    op: str
    kernel: str  # the candidate that runs
    skipped: dict[str, str] = field(default_factory=dict)  # faster candidate -> why it cannot run


def layer_kernels(
    model: nn.Module, rows: int = 1, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> dict[str, KernelChoice]:
    """Layer name -> the kernel it runs for calls of `rows` activation rows of `dtype` on `device`; `dtype`
    None means the model's own dtype (what its layers receive), as the Triton kernels check it."""
    dtype = dtype or getattr(model, "dtype", None)
    choices, seen = {}, {}
    for name, m in _quantized(model):
        ctx = m.call_context(rows, torch.device(device), dtype)
        key = (m.op, ctx, m.kernel_preference)  # layers of one shape and format choose alike
        if key not in seen:
            seen[key] = _choice(m.op, ctx, m.kernel_preference)
        choices[name] = seen[key]
    return choices


def _choice(op: str, ctx, preference: str) -> KernelChoice:
    chosen = select(op, ctx, preference).name
    skipped = {}
    for cand, reason in explain(op, ctx):
        if cand == chosen:
            break
        skipped[cand] = reason or f"not preferred ({preference})"
    return KernelChoice(op, chosen, skipped)


def kernel_summary(
    model: nn.Module, rows: int = 1, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> dict[str, int]:
    """Kernel name -> number of layers running it (one line of a report)."""
    counts: dict[str, int] = {}
    for choice in layer_kernels(model, rows, device, dtype).values():
        counts[choice.kernel] = counts.get(choice.kernel, 0) + 1
    return counts


@torch.no_grad()
def prepare_kernels(model: nn.Module, rows: int = 1) -> int:
    """Repack every quantized layer for the kernel it will run on its own device (its words first in that device's
    order, order_words_for); returns layers repacked."""
    done = 0
    for _, m in _quantized(model):
        device = next(m.buffers()).device
        if device.type == "meta":
            continue
        done += m.order_words_for(device)
        candidate = select(m.op, m.call_context(rows, device), m.kernel_preference)
        if candidate.prepare is not None:
            m.prepared(candidate.name, candidate.prepare, device)
            done += 1
    return done


def _quantized(model: nn.Module):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QuantizedLinear)]
