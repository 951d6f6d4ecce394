"""Exact memory predictions from a model's layer shapes, and the kernels its quantized layers would run.

A prediction swaps each target linear of the model (a meta-device skeleton or a loaded model) for the
empty module the method would make (`MethodConfig.empty_layer`, on the meta device), runs
`eval.memory.memory_report` -- the accounting `lowbit eval` and `compare` use on quantized models -- and
puts the original layers back. The predicted bytes therefore equal the measured ones exactly; no rule of
thumb is involved. Float tensors are counted in the dtype the model is held in.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from lowbit.calib.arch import arch_spec, find_targets, linear_weight
from lowbit.errors import LowbitError
from lowbit.eval.memory import MemoryReport, memory_report
from lowbit.methods.base import MethodConfig
from lowbit.modules.base import QuantizedLinear
from lowbit.modules.plan import kernel_summary


def targets(model: nn.Module, config: MethodConfig) -> dict[str, nn.Module]:
    """The linears `config` quantizes in `model` (full name -> module)."""
    return find_targets(model, arch_spec(model.config.model_type), config.include, config.exclude)


def empty_layers(model: nn.Module, config: MethodConfig) -> dict[str, QuantizedLinear]:
    """Full name -> the empty quantized module `config` would put there; LowbitError if it cannot say."""
    if config.embedding_bits or config.head_bits:
        raise LowbitError("memory predictions cover the linear layers only: drop embedding_bits/head_bits")
    layers = {}
    for name, module in targets(model, config).items():
        weight, bias = linear_weight(module)
        layer = config.layer_config(name).empty_layer(weight.shape[0], weight.shape[1], bias is not None)
        if layer is None:
            raise LowbitError(f"{config.name} does not describe its layout: lowbit cannot predict its memory")
        if bias is not None:
            layer.bias = torch.empty_like(bias, device="meta")  # the bias keeps the model's dtype
        layers[name] = layer
    return layers


@contextmanager
def swapped(model: nn.Module, layers: dict[str, nn.Module]) -> Iterator[nn.Module]:
    """The model with `layers` in place of its own, restored on exit."""
    originals = {name: model.get_submodule(name) for name in layers}
    try:
        for name, layer in layers.items():
            model.set_submodule(name, layer)
        yield model
    finally:
        for name, layer in originals.items():
            model.set_submodule(name, layer)


def predict_memory(model: nn.Module, config: MethodConfig) -> MemoryReport:
    """What memory_report would say about `model` quantized with `config`, without quantizing it."""
    with swapped(model, empty_layers(model, config)):
        return memory_report(model)


def unquantized_memory(model: nn.Module) -> MemoryReport:
    return memory_report(model)


def layer_sizes(model: nn.Module, base: MethodConfig, bits: tuple[int, ...]) -> tuple[int, dict[str, dict[int, int]]]:
    """(bytes outside the target layers, full name -> {bits: packed bytes}) for `base` at each width.

    The first number is everything memory_report counts besides the packed layers (float tensors,
    biases), so `fixed + sum of the chosen layers' bytes` is the model's predicted weight bytes.
    """
    import dataclasses

    sizes: dict[str, dict[int, int]] = {}
    fixed = None
    for b in bits:
        config = dataclasses.replace(base, bits=b)
        layers = empty_layers(model, config)
        with swapped(model, layers):
            report = memory_report(model)
        fixed = report.weight_bytes - report.quantized_bytes if fixed is None else fixed
        for name, layer in layers.items():
            sizes.setdefault(name, {})[b] = layer.packed_bytes()
    return int(fixed), sizes


def decode_kernels(model: nn.Module, config: MethodConfig, device: str) -> dict[str, int]:
    """Kernel name -> number of layers running it for one decode row on `device`, by this machine's
    kernel selector (so only for a device this machine has)."""
    with swapped(model, empty_layers(model, config)):
        return kernel_summary(model, rows=1, device=device)


def device_present(device: str) -> bool:
    return device == "cpu" or (device == "cuda" and torch.cuda.is_available())
