"""Per-architecture knowledge as data: where the decoder blocks are and which linears each block holds.

Keyed by `config.model_type`. Linears are listed in forward order. GPT-2's projections are transformers'
`Conv1D` modules, whose weight is stored (in, out); `linear_weight` hands every method the (out, in) view.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import LowbitError


@dataclass(frozen=True)
class ArchSpec:
    blocks: str  # dotted path of the ModuleList of decoder blocks
    linears: tuple[str, ...]  # linear layers inside one block, in forward order


_LLAMA_LIKE = ArchSpec(
    "model.layers",
    (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ),
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "gemma3": ArchSpec("model.language_model.layers", _LLAMA_LIKE.linears),
    "phi3": ArchSpec(
        "model.layers", ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    ),
    "gpt_neox": ArchSpec(
        "gpt_neox.layers",
        ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    ),
    "gpt2": ArchSpec("transformer.h", ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")),
    "opt": ArchSpec(
        "model.decoder.layers",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"),
    ),
}


def arch_spec(model_type: str) -> ArchSpec:
    if model_type not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise LowbitError(f"unsupported architecture {model_type!r}: lowbit supports {supported}")
    return ARCHITECTURES[model_type]


def decoder_blocks(model: nn.Module, spec: ArchSpec) -> nn.ModuleList:
    try:
        return model.get_submodule(spec.blocks)
    except AttributeError:
        raise LowbitError(f"model has no decoder blocks at {spec.blocks!r}: its layout does not match its model_type")


def find_targets(
    model: nn.Module, spec: ArchSpec, include: str | None = None, exclude: str | None = None
) -> dict[str, nn.Module]:
    """Full name -> module of the layers to quantize, in forward order.

    The block linears of `spec`, plus any other linear whose full name matches `include` (e.g.
    'lm_head'), minus those matching `exclude`.
    """
    targets: dict[str, nn.Module] = {}
    for i, block in enumerate(decoder_blocks(model, spec)):
        for name in spec.linears:
            try:
                targets[f"{spec.blocks}.{i}.{name}"] = block.get_submodule(name)
            except AttributeError:
                raise LowbitError(f"block {i} has no {name!r}: the model does not match its model_type's layout")
    if include:
        for name, module in model.named_modules():
            if is_linear(module) and re.search(include, name) and name not in targets:
                targets[name] = module
    if exclude:
        targets = {name: m for name, m in targets.items() if not re.search(exclude, name)}
    return targets


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out, in) weight and bias of a Linear, or of a Conv1D stored (in, out)."""
    weight = module.weight.detach()
    return (weight.t() if type(module).__name__ == "Conv1D" else weight), module.bias
