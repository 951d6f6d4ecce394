"""awq and awq+gptq: activation-aware weight quantization (Lin et al., 2023), alone or followed by GPTQ.

Per block, in float: for each scaling pair of the architecture table (input norm -> q/k/v, v -> o where
GQA allows, post-attention norm -> gate/up, up -> down), grid-search the exponent of the activation-aware
scale on the output error (each candidate fake-quantizes that pair's linears) of the whole block
(search_scope="block") or of the smallest module holding the pair's linears, as AutoAWQ does
(search_scope="module": self_attn for q/k/v, o_proj, mlp for gate/up, down_proj; about 3x cheaper), then
move the best scale between the layers; then search per-group clipping thresholds on each linear's own output error.
The scaled, clipped weights are quantized group-wise by round-to-nearest (awq) or GPTQ (awq+gptq) into the
shared integer format. The searched scales and clips are returned as artifacts (saved beside the
checkpoint as calibration.safetensors) and `load_search` re-applies them without searching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lowbit.calib.arch import ScalePair, linear_weight
from lowbit.calib.engine import BlockRun, first_output
from lowbit.calib.scaling import pair_fits, scale_pair
from lowbit.core.affine import rtn_quantize
from lowbit.core.awq import apply_clip, awq_scale, clip_search, fake_quantize, weight_group_mean
from lowbit.core.checks import check_bits, check_choice, check_group_size
from lowbit.errors import LowbitError
from lowbit.methods.base import MethodConfig, register_method
from lowbit.methods.gptq import GPTQSettings
from lowbit.modules.int_linear import IntLinear

SEARCH_SCOPES = ("block", "module")


@register_method("awq")
@dataclass(frozen=True, kw_only=True)
class AWQConfig(MethodConfig):
    needs_calibration = True
    calibrates_blocks = True

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    n_grid: int = 20  # exponents 0, 1/n_grid, ..., (n_grid-1)/n_grid
    duo_scaling: bool = True  # s = x_mean^a / w_mean^(1-a) (AutoAWQ, llm-compressor); False: x_mean^a
    clip: bool = True
    max_shrink: float = 0.5  # clipping tries max|w| * (1 - k/n_grid) down to (1 - max_shrink)
    clip_tokens: int = 512  # input tokens sampled per linear for the clipping search
    search_samples: int = 0  # calibration windows used by the searches (0: all)
    search_scope: str = "block"  # whose output error the scale search measures: "block" or "module"
    load_search: str | None = None  # calibration.safetensors of an earlier run: re-apply, do not search

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits, 2, 8, self.name)
        check_group_size(self.group_size)
        for field in ("n_grid", "clip_tokens"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                raise LowbitError(f"{field} must be a positive integer, got {getattr(self, field)!r}")
        if not 0 <= self.max_shrink < 1:
            raise LowbitError(f"max_shrink must be in [0, 1), got {self.max_shrink}")
        if not isinstance(self.search_samples, int) or self.search_samples < 0:
            raise LowbitError(f"search_samples must be 0 (all) or a positive integer, got {self.search_samples!r}")
        check_choice(self.search_scope, SEARCH_SCOPES, "search_scope")

    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None) -> IntLinear:
        """Round-to-nearest with integer zeros, applied to weights already scaled and clipped by the search."""
        return IntLinear.from_weights(rtn_quantize(weight, self.bits, self.group_size, self.symmetric, True), bias)

    def empty_layer(self, out_features: int, in_features: int, has_bias: bool = False) -> IntLinear:
        return IntLinear.empty(out_features, in_features, self.bits, self.group_size, self.symmetric, has_bias)

    def calibrate_block(self, run: BlockRun) -> dict[str, torch.Tensor]:
        artifacts = self.awq_block(run)
        for name, module in list(run.linears.items()):
            run.replace(name, self.quantize_layer(*linear_weight(module)))
        return artifacts

    @torch.no_grad()
    def awq_block(self, run: BlockRun) -> dict[str, torch.Tensor]:
        """Search (or load) and apply the block's scales, then its clips; the block stays in float."""
        saved = _load_search(self.load_search) if self.load_search else None
        batches = _search_batches(run, self.search_samples)
        pairs = [p for p in run.spec.scale_pairs if all(n in run.linears for n in p.nexts) and pair_fits(run.block, p)]
        x_means = _input_abs_means(run, pairs, batches) if saved is None else {}
        block_target = run.forward(batches=batches) if saved is None and self.search_scope == "block" else []
        artifacts = {}
        for pair in pairs:
            key = f"{run.full_name(pair.prev)}.awq_scale"
            s = _saved(saved, key) if saved is not None else self._search_scale(run, pair, x_means[pair.prev], block_target, batches)
            scale_pair(run.block, pair, s, run.spec.norm_offset)
            artifacts[key] = s.cpu()
        if self.clip:
            artifacts |= self._clip(run, saved, batches)
        return artifacts

    def _search_scale(self, run: BlockRun, pair: ScalePair, x_mean, block_target, batches) -> torch.Tensor:
        if self.search_scope == "block":
            outputs, target = (lambda: run.forward(batches=batches)), block_target
        else:
            outputs = _module_outputs(run, inspected_module(pair), batches)
            target = outputs()
        weights = {n: linear_weight(run.linears[n])[0] for n in pair.nexts}
        originals = {n: w.clone() for n, w in weights.items()}
        w_mean = weight_group_mean(list(originals.values()), self.group_size) if self.duo_scaling else None
        best, best_loss = None, math.inf
        for step in range(self.n_grid):
            s = awq_scale(x_mean, w_mean, step / self.n_grid)  # (in,)
            for n, w in weights.items():
                w.copy_(fake_quantize(originals[n] * s, self.bits, self.group_size, self.symmetric) / s)
            loss = sum(float((o - t).float().pow(2).sum()) for o, t in zip(outputs(), target))
            if loss < best_loss:
                best, best_loss = s, loss
        for n, w in weights.items():
            w.copy_(originals[n])
        return best

    def _clip(self, run: BlockRun, saved, batches) -> dict[str, torch.Tensor]:
        names = [n for n in run.linears if n not in run.spec.no_clip]
        inputs = _sampled_inputs(run, names, batches, self.clip_tokens) if saved is None else {}
        clips = {}
        for name in names:
            key = f"{run.full_name(name)}.awq_clip"
            weight, _ = linear_weight(run.linears[name])
            if saved is not None:
                max_val = _saved(saved, key)
            else:
                max_val = clip_search(weight, inputs[name], self.bits, self.group_size, self.symmetric, self.n_grid, self.max_shrink)
            weight.copy_(apply_clip(weight, max_val.to(weight.device), self.group_size))
            clips[key] = max_val.cpu()
        return clips


@register_method("awq+gptq")
@dataclass(frozen=True, kw_only=True)
class AWQGPTQConfig(AWQConfig, GPTQSettings):
    """AWQ's scaling and clipping, then GPTQ on the scaled weights: the two compose."""

    quantize_layer = GPTQSettings.quantize_layer

    def calibrate_block(self, run: BlockRun) -> dict[str, torch.Tensor]:
        artifacts = self.awq_block(run)
        self.gptq_block(run)
        return artifacts


def inspected_module(pair: ScalePair) -> str:
    """The smallest module holding all of the pair's linears: their common dotted prefix, or the linear itself."""
    parts = [n.split(".") for n in pair.nexts]
    common = [p[0] for p in zip(*parts) if len(set(p)) == 1] if len(parts) > 1 else parts[0]
    return ".".join(common)


def _module_outputs(run: BlockRun, name: str, batches) -> Callable[[], list[torch.Tensor]]:
    """A function feeding `name` (or the block, if name is "") its recorded inputs -> its outputs per batch."""
    if not name:
        return lambda: run.forward(batches=batches)
    module, inputs = run.block.get_submodule(name), run.module_inputs(name, batches)
    return lambda: [first_output(module(*args, **kwargs)) for args, kwargs in inputs]


def _search_batches(run: BlockRun, samples: int) -> int | None:
    return None if samples == 0 else max(1, math.ceil(samples / run.inputs[0][0].shape[0]))


def _input_abs_means(run: BlockRun, pairs: list[ScalePair], batches) -> dict[str, torch.Tensor]:
    """prev name -> (channels,) mean |x| of the input shared by the pair's linears."""
    sums: dict[str, list] = {p.prev: [0.0, 0] for p in pairs}

    def hook_for(prev: str):
        def hook(x: torch.Tensor) -> None:
            flat = x.reshape(-1, x.shape[-1]).float()
            sums[prev][0] = sums[prev][0] + flat.abs().sum(dim=0)
            sums[prev][1] += flat.shape[0]

        return hook

    run.forward(hooks={p.nexts[0]: hook_for(p.prev) for p in pairs}, batches=batches, outputs=False)
    return {prev: total / count for prev, (total, count) in sums.items()}


def _sampled_inputs(run: BlockRun, names: list[str], batches, tokens: int) -> dict[str, torch.Tensor]:
    """name -> (~tokens, in) evenly spaced input rows of that linear."""
    total = sum(h.shape[0] * h.shape[1] for h, _ in run.inputs[:batches])
    stride = max(1, total // tokens)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    run.forward(hooks={n: (lambda x, n=n: seen[n].append(x.reshape(-1, x.shape[-1])[::stride])) for n in names}, batches=batches, outputs=False)
    return {n: torch.cat(parts)[:tokens] for n, parts in seen.items()}


def _load_search(path: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, FileNotFoundError) as err:
        raise LowbitError(f"cannot read the AWQ search file {path} ({err}): give a calibration.safetensors lowbit wrote")


def _saved(saved: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in saved:
        raise LowbitError(f"the AWQ search file has no {key}: it was made for another model or settings")
    return saved[key].float()
