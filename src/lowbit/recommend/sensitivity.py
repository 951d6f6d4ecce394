"""Per-layer sensitivity: the loss increase predicted when only that layer is quantized, at each width.

One forward and one backward pass of the float model over a few windows of calibration text record, for
every target linear, its input X and the gradient G of the mean token NLL with respect to its output
(no weight gradients are computed). Quantizing that layer alone changes its output by dY = X (W - Q(W))^T;
to second order, with the empirical Fisher standing in for the Hessian, the mean NLL rises by about

    dL = N/2 * sum_t (g_t . dY_t)^2          (N tokens, g_t = dL/dY_t)

-- the layer's output error, weighted by how much the loss cares about each output direction (the
Fisher-weighted error of HAWQ (Dong et al., 2019) and SqueezeLLM (Kim et al., 2023), here on layer
outputs). Summed over layers it estimates the change of log perplexity, so the allocation (recommend.
allocate) can trade layers against each other. Q is the base method itself, run on the layer alone;
for GPTQ the Hessian comes from the same recorded inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.calib.arch import linear_weight
from lowbit.core.checks import check_choice
from lowbit.core.hessian import accumulate_hessian
from lowbit.methods.base import MethodConfig
from lowbit.progress import track
from lowbit.recommend.predict import targets as find_layers


@dataclass
class Sensitivity:
    loss: dict[str, dict[int, float]]  # layer -> bits -> predicted mean-NLL increase (nats per token)
    error: dict[str, dict[int, float]]  # layer -> bits -> relative output error |dY|^2 / |Y|^2
    tokens: int


def layer_sensitivity(
    model: nn.Module, windows: torch.Tensor, base: MethodConfig, bits: tuple[int, ...], progress: bool = False,
    labels: str = "text", seed: int = 0,
) -> Sensitivity:
    """windows: (n, seqlen) token ids of calibration text (never the evaluation split).

    labels: "text" uses the text's next tokens (the empirical Fisher: what benchmarks/mixed_precision.py
    measured); "sampled" draws each from the model's own prediction, so the squared gradients estimate the
    true Fisher and the loss the KL divergence from the float model (Kunstner et al., 2019).
    """
    check_choice(labels, ("text", "sampled"), "sensitivity labels")
    layers = find_layers(model, base)
    result = Sensitivity({}, {}, windows.shape[0] * (windows.shape[1] - 1))
    inputs: dict[str, torch.Tensor] = {}
    bar = track(range(len(layers)), "sensitivity", progress)

    def forward_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs[name] = args[0].detach()
            output.register_hook(lambda grad: _score(name, module, inputs.pop(name), grad))

        return hook

    def _score(name: str, module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
        result.loss[name], result.error[name] = layer_scores(module, x, grad, base, bits, result.tokens)
        next(bar, None)

    handles = [m.register_forward_hook(forward_hook(name)) for name, m in layers.items()]
    handles.append(model.get_input_embeddings().register_forward_hook(lambda _m, _a, out: out.requires_grad_()))
    frozen = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.enable_grad():
            logits = model(windows, use_cache=False).logits[:, :-1].float()  # (n, seqlen - 1, vocab)
            logits = logits.reshape(-1, logits.shape[-1])  # (n * (seqlen - 1), vocab)
            F.cross_entropy(logits, _labels(logits, windows, labels, seed)).backward()
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        next(bar, None)
    return result


@torch.no_grad()
def _labels(logits: torch.Tensor, windows: torch.Tensor, labels: str, seed: int) -> torch.Tensor:
    if labels == "text":
        return windows[:, 1:].reshape(-1)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)  # (tokens,)


@torch.no_grad()
def layer_scores(
    module: nn.Module, x: torch.Tensor, grad: torch.Tensor, base: MethodConfig, bits: tuple[int, ...], tokens: int
) -> tuple[dict[int, float], dict[int, float]]:
    """({bits: predicted loss increase}, {bits: relative output error}) of one layer quantized alone."""
    weight, _ = linear_weight(module)
    x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
    g = grad.reshape(-1, grad.shape[-1]).float()  # (tokens, out)
    y = x @ weight.float().t()  # (tokens, out); the bias cancels in dY
    stats = accumulate_hessian(x, None, 0)[0] if base.needs_calibration else None
    loss, error = {}, {}
    for b in bits:
        layer = dataclasses.replace(base, bits=b).quantize_layer(weight.float(), None, stats)
        layer.kernel_preference = "reference"  # exact dequantized product, no bf16 kernel rounding
        dy = y - layer(x)
        loss[b] = float(tokens / 2 * ((g * dy).sum(-1) ** 2).sum())
        error[b] = float(dy.pow(2).sum() / y.pow(2).sum().clamp_min(1e-30))
    return loss, error
