"""Moving per-channel scale between layers (AWQ, Lin et al., 2023; SmoothQuant, Xiao et al., 2022).

For a scaling pair (arch.ScalePair), dividing `prev`'s output channels by s and multiplying the matching
input columns of every `next` by s leaves the float block's function unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.calib.arch import ScalePair, is_linear, linear_weight


def out_channels(module: nn.Module) -> int:
    """Output channels of a linear (or Conv1D), or the width of a norm."""
    return linear_weight(module)[0].shape[0] if is_linear(module) else module.weight.numel()


def pair_fits(block: nn.Module, pair: ScalePair) -> bool:
    """False where shapes disagree, e.g. v -> o under grouped-query attention (fewer v channels than o inputs)."""
    width = out_channels(block.get_submodule(pair.prev))
    return all(linear_weight(block.get_submodule(n))[0].shape[1] == width for n in pair.nexts)


@torch.no_grad()
def scale_pair(block: nn.Module, pair: ScalePair, s: torch.Tensor, norm_offset: float = 0.0) -> None:
    """prev's output channels /= s, nexts' input columns *= s (in place). s: (channels,) positive."""
    prev = block.get_submodule(pair.prev)
    if is_linear(prev):
        weight, bias = linear_weight(prev)
        weight.div_(s.to(weight.dtype).unsqueeze(1))
    else:  # a norm computing x_hat * (norm_offset + weight) (+ bias)
        weight, bias = prev.weight, getattr(prev, "bias", None)
        weight.copy_((weight + norm_offset) / s.to(weight.dtype) - norm_offset)
    if bias is not None:
        bias.div_(s.to(bias.dtype))
    for name in pair.nexts:
        weight, _ = linear_weight(block.get_submodule(name))
        weight.mul_(s.to(weight.dtype).unsqueeze(0))
