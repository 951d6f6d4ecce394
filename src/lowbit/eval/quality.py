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


def _log_probs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    logits = model(batch.to(device), use_cache=False).logits[:, :-1]
    return F.log_softmax(logits.float(), dim=-1).cpu()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: torch.Tensor,
    reference: nn.Module | None = None,
    batch_size: int = 1,
    progress: bool = False,
) -> QualityResult:
    """windows: (k, seqlen) token ids. With a reference model, also KL and top-1 agreement."""
    nll_sum, kl_sum, agree, count = 0.0, 0.0, 0, 0
    for batch in track(windows.split(batch_size), "evaluating", progress):
        logp = _log_probs(model, batch)  # (b, seqlen - 1, vocab)
        targets = batch[:, 1:]
        nll_sum += float(-logp.gather(-1, targets.unsqueeze(-1)).sum())
        count += targets.numel()
        if reference is not None:
            ref_logp = _log_probs(reference, batch)
            kl_sum += float((ref_logp.exp() * (ref_logp - logp)).sum())
            agree += int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())
    nll = nll_sum / count
    result = QualityResult(math.exp(nll), nll, windows.shape[0], windows.shape[1], count)
    if reference is not None:
        result.kl, result.top1 = kl_sum / count, agree / count
    return result
