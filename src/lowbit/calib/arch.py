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
class ScalePair:
    """AWQ scaling pair (Lin et al., 2023): `prev`'s output channels feed `nexts`' inputs directly (or through
    a positively homogeneous op), so dividing them by s and multiplying the inputs of `nexts` by s leaves the
    float block unchanged. `prev` is a norm or a linear; a pair whose shapes disagree (v -> o under GQA) is skipped.
    """

    prev: str
    nexts: tuple[str, ...]


@dataclass(frozen=True)
class ArchSpec:
    blocks: str  # dotted path of the ModuleList of decoder blocks
    linears: tuple[str, ...]  # linear layers inside one block, in forward order
    inputs: tuple[tuple[str, ...], ...] = ()  # linears grouped by shared input, in forward order (true-sequential)
    scale_pairs: tuple[ScalePair, ...] = ()  # AWQ's scaling pairs, in forward order
    no_clip: tuple[str, ...] = ()  # linears AWQ does not clip (query/key: attention scores are sensitive)
    norm_offset: float = 0.0  # 1.0 where the norm computes x * (1 + weight) (Gemma)

    def input_groups(self) -> tuple[tuple[str, ...], ...]:
        return self.inputs or tuple((name,) for name in self.linears)


_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj")
_LLAMA_LINEARS = (*_ATTN, "self_attn.o_proj", *_MLP, "mlp.down_proj")
_LLAMA_INPUTS = (_ATTN, ("self_attn.o_proj",), _MLP, ("mlp.down_proj",))
_ATTN_PAIRS = (ScalePair("input_layernorm", _ATTN), ScalePair("self_attn.v_proj", ("self_attn.o_proj",)))
_DOWN_PAIR = ScalePair("mlp.up_proj", ("mlp.down_proj",))
_QK = ("self_attn.q_proj", "self_attn.k_proj")
_LLAMA_LIKE = ArchSpec(
    "model.layers",
    _LLAMA_LINEARS,
    _LLAMA_INPUTS,
    (*_ATTN_PAIRS, ScalePair("post_attention_layernorm", _MLP), _DOWN_PAIR),
    _QK,
)
_GEMMA = ArchSpec(**{**_LLAMA_LIKE.__dict__, "norm_offset": 1.0})
# Gemma 2/3 normalise the attention output with post_attention_layernorm; the MLP input norm is pre_feedforward.
_GEMMA2 = ArchSpec(
    "model.layers",
    _LLAMA_LINEARS,
    _LLAMA_INPUTS,
    (*_ATTN_PAIRS, ScalePair("pre_feedforward_layernorm", _MLP), _DOWN_PAIR),
    _QK,
    norm_offset=1.0,
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _GEMMA,
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "gemma3": ArchSpec(**{**_GEMMA2.__dict__, "blocks": "model.language_model.layers"}),
    # fused qkv / gate_up: v -> o and up -> down would scale a slice of a fused layer, so they are not paired
    "phi3": ArchSpec(
        "model.layers",
        ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"),
        scale_pairs=(
            ScalePair("input_layernorm", ("self_attn.qkv_proj",)),
            ScalePair("post_attention_layernorm", ("mlp.gate_up_proj",)),
        ),
        no_clip=("self_attn.qkv_proj",),
    ),
    "gpt_neox": ArchSpec(
        "gpt_neox.layers",
        ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
        scale_pairs=(
            ScalePair("input_layernorm", ("attention.query_key_value",)),
            ScalePair("post_attention_layernorm", ("mlp.dense_h_to_4h",)),
        ),
        no_clip=("attention.query_key_value",),
    ),
    "gpt2": ArchSpec(
        "transformer.h",
        ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
        scale_pairs=(ScalePair("ln_1", ("attn.c_attn",)), ScalePair("ln_2", ("mlp.c_fc",))),
        no_clip=("attn.c_attn",),
    ),
    # OPT's fc1 -> ReLU -> fc2: ReLU commutes with a positive per-channel scale
    "opt": ArchSpec(
        "model.decoder.layers",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"),
        (_ATTN, ("self_attn.out_proj",), ("fc1",), ("fc2",)),
        (
            ScalePair("self_attn_layer_norm", _ATTN),
            ScalePair("self_attn.v_proj", ("self_attn.out_proj",)),
            ScalePair("final_layer_norm", ("fc1",)),
            ScalePair("fc1", ("fc2",)),
        ),
        _QK,
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
