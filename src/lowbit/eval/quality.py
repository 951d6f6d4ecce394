"""Perplexity, and KL divergence / top-1 agreement against an unquantized reference, on the same windows.

Protocol (docs: DESIGN.md): the evaluation text is read whole, tokenized once without special tokens, cut
into non-overlapping windows of `seqlen` tokens; the token NLL is averaged over every predicted position
of every window (seqlen - 1 per window) and perplexity is exp of that mean. KL(p_ref || p_quant) of the
next-token distributions is averaged over the same positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.progress import track


@dataclass
class QualityResult:
    ppl: float
    nll: float
    windows: int
    seqlen: int
    tokens: int  # predicted positions
    kl: float | None = None
    top1: float | None = None


class ReferenceMemo(nn.Module):
    """The reference model, remembering its outputs for up to `capacity` distinct inputs (the evaluation
    windows), so that comparing many models against it runs it once per window, not once per model."""

    def __init__(self, model: nn.Module, capacity: int):
        super().__init__()
        self.model, self.capacity = model, capacity
        self.seen: list[tuple[torch.Tensor, object]] = []

    def forward(self, input_ids: torch.Tensor, **kwargs):
        for key, out in self.seen:
            if key.shape == input_ids.shape and torch.equal(key, input_ids):
                return out
        out = self.model(input_ids, **kwargs)
        if self.capacity:
            self.seen = [*self.seen, (input_ids.clone(), out)][-self.capacity :]
        return out


def _log_probs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    logits = model(batch.to(device), use_cache=False).logits[:, :-1]
    return F.log_softmax(logits.float(), dim=-1).cpu()


class _Totals:
    """Running sums over predicted positions: NLL, and KL / top-1 agreement against a reference."""

    def __init__(self) -> None:
        self.nll = self.kl = 0.0
        self.agree = self.count = 0

    def add(self, logp: torch.Tensor, targets: torch.Tensor, ref_logp: torch.Tensor | None) -> None:
        self.nll += float(-logp.gather(-1, targets.unsqueeze(-1)).sum())
        self.count += targets.numel()
        if ref_logp is not None:
            self.kl += float((ref_logp.exp() * (ref_logp - logp)).sum())
            self.agree += int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())

    def result(self, windows: torch.Tensor, with_reference: bool) -> QualityResult:
        nll = self.nll / self.count
        result = QualityResult(math.exp(nll), nll, windows.shape[0], windows.shape[1], self.count)
        if with_reference:
            result.kl, result.top1 = self.kl / self.count, self.agree / self.count
        return result


@torch.no_grad()
def evaluate_many(
    models: dict[str, nn.Module],
    windows: torch.Tensor,
    reference: nn.Module | None = None,
    batch_size: int = 1,
    progress: bool = False,
) -> dict[str, QualityResult]:
    """Evaluate several models on the same windows; the reference runs once per batch for all of them."""
    totals = {name: _Totals() for name in models}
    for batch in track(windows.split(batch_size), "evaluating", progress):
        ref_logp = _log_probs(reference, batch) if reference is not None else None
        for name, model in models.items():
            logp = ref_logp if model is reference else _log_probs(model, batch)
            totals[name].add(logp, batch[:, 1:], ref_logp)
    return {name: t.result(windows, reference is not None) for name, t in totals.items()}


def evaluate(
    model: nn.Module,
    windows: torch.Tensor,
    reference: nn.Module | None = None,
    batch_size: int = 1,
    progress: bool = False,
) -> QualityResult:
    """windows: (k, seqlen) token ids. With a reference model, also KL and top-1 agreement."""
    return evaluate_many({"model": model}, windows, reference, batch_size, progress)["model"]
