"""Feed calibration windows through the (unquantized) model and let observers watch each layer's input."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from lowbit.core.checks import check_finite
from lowbit.progress import track


@torch.no_grad()
def observe_inputs(
    model: nn.Module,
    layers: dict[str, nn.Module],
    windows: torch.Tensor,
    make_observer: Callable[[], Any],
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Layer name -> observer that has seen the layer's inputs on every calibration window."""
    observers = {name: make_observer() for name in layers}

    def hook_for(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            check_finite(args[0], f"calibration activations entering {name}")
            observers[name].update(args[0])

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in layers.items()]
    try:
        device = next(model.parameters()).device
        for batch in track(windows.split(batch_size), "calibrating", progress):
            model(batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return observers
