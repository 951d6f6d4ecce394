"""Tiny random models of every supported architecture, built from configs (no hub needed)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

# Sizes chosen so that some inputs (48, 80) are not multiples of common group sizes.
_COMMON = dict(vocab_size=128, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4)

TINY_CONFIGS = {
    "llama": dict(_COMMON, num_key_value_heads=2),
    "mistral": dict(_COMMON, num_key_value_heads=2),
    "qwen2": dict(_COMMON, num_key_value_heads=2),
    "qwen3": dict(_COMMON, num_key_value_heads=2, head_dim=12),
    "gemma": dict(_COMMON, num_key_value_heads=2, head_dim=12),
    "gemma2": dict(_COMMON, num_key_value_heads=2, head_dim=12),
    "gemma3_text": dict(_COMMON, num_key_value_heads=2, head_dim=12),
    "phi3": dict(_COMMON, num_key_value_heads=4, pad_token_id=0),
    "gpt_neox": dict(vocab_size=128, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4),
    "gpt2": dict(vocab_size=128, n_embd=48, n_layer=2, n_head=4, n_inner=80),
    "opt": dict(vocab_size=128, hidden_size=48, ffn_dim=80, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=48),
}


def tiny_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **TINY_CONFIGS[model_type])
    return AutoModelForCausalLM.from_config(config).eval()
