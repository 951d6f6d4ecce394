"""Tiny random models of every architecture in lowbit's table, and the real stories260k, for calibration tests."""

from __future__ import annotations

import torch

from lowbit.assets import assets_dir

# model_type -> config overrides giving a 2-block model small enough to quantize in a second
TINY = {
    "llama": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4),
    "mistral": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "gemma": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4, head_dim=16),
    "gemma2": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "gemma3_text": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "phi3": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4),
    "gpt_neox": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4),
    "gpt2": dict(n_embd=64, n_head=4, n_layer=2),
    "opt": dict(hidden_size=64, ffn_dim=96, num_attention_heads=4, word_embed_proj_dim=64),
}


def tiny_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = AutoConfig.for_model(model_type, vocab_size=128, num_hidden_layers=2, **ids, **TINY[model_type])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # non-trivial norms, so scaling them is really tested
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.mul_(1 + 0.2 * torch.rand_like(p))
    return model


def tiny_model_and_logits(model_type: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny model, 4 random windows of 16 tokens (4, 16), and the float model's logits on them."""
    model = tiny_model(model_type)
    windows = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model, windows, model(windows).logits


def stories():
    from lowbit.io.sources import load_model

    return load_model(str(assets_dir() / "models" / "stories260k"))
