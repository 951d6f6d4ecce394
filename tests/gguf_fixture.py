"""Write stories260k as a small GGUF file (gguf-py's writer, llama.cpp's conventions) for import tests.

Linear weights whose input size is a multiple of 32 are stored in `linear_type` (the down projections,
input 172, and the norms stay F32); the token embedding in `embedding_type`. Query and key rows are
permuted as llama.cpp's converter does, so transformers' GGUF loader undoes it on the way in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}  # fmt: skip


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's q/k row order (interleaved rotary halves)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_stories_gguf(model_dir: Path, out: Path, linear_type: str = "Q4_1", embedding_type: str = "Q8_0") -> Path:
    import json

    from gguf import GGMLQuantizationType, GGUFWriter, quantize
    from gguf.vocab import SentencePieceVocab

    cfg = json.loads((model_dir / "config.json").read_text())
    weights = load_file(model_dir / "model.safetensors")
    writer = GGUFWriter(str(out), "llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_rope_dimension_count(cfg["head_dim"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    vocab = SentencePieceVocab(model_dir)
    tokens, scores, types = zip(*vocab.all_tokens())
    writer.add_tokenizer_model("llama")
    writer.add_token_list(list(tokens))
    writer.add_token_scores(list(scores))
    writer.add_token_types([int(t) for t in types])
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])

    def add(name: str, w: np.ndarray, type_name: str) -> None:
        if type_name == "F32" or w.shape[-1] % 32:
            writer.add_tensor(name, w.astype(np.float32))
            return
        qtype = GGMLQuantizationType[type_name]
        writer.add_tensor(name, quantize(w.astype(np.float32), qtype), raw_dtype=qtype)

    add("token_embd.weight", weights["model.embed_tokens.weight"], embedding_type)
    add("output_norm.weight", weights["model.norm.weight"], "F32")
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in NAMES.items():
            w = weights[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                w = _permute(w, cfg["num_attention_heads"])
            elif gg == "attn_k":
                w = _permute(w, cfg["num_key_value_heads"])
            add(f"blk.{i}.{gg}.weight", w, "F32" if gg.endswith("norm") else linear_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
