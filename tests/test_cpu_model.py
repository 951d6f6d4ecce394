"""Quantized models on the CPU kernels: kernel report, memory accounting, canonical checkpoints, and the
optional embedding/head quantization (methods.vocab), on the real tiny Llama stories260k."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import lowbit
from lowbit.assets import assets_dir
from lowbit.errors import LowbitError
from lowbit.eval.memory import memory_report
from lowbit.methods import make_config
from lowbit.modules import IntLinear, QuantizedEmbedding
from lowbit.modules.plan import kernel_summary, layer_kernels


@pytest.fixture(scope="module")
def stories():
    return lowbit.load(assets_dir() / "models" / "stories260k")


def fresh(stories):
    import copy

    return copy.deepcopy(stories.model)


IDS = torch.tensor([[1, 403, 407, 261, 378, 10, 280, 344, 0, 7, 99, 262]])  # (1, 12)


def test_layer_kernels_name_kernel_and_reasons(stories):
    model = lowbit.quantize(fresh(stories), make_config("rtn", bits=4, group_size=16))
    choices = layer_kernels(model, rows=1)
    assert len(choices) == 35 and {c.kernel for c in choices.values()} == {"reference"}
    assert "not a multiple of 32" in choices["model.layers.0.mlp.down_proj"].skipped["int4_cpu"]
    model = lowbit.quantize(fresh(stories), make_config("rtn", bits=4, group_size=32))
    assert kernel_summary(model, rows=7) == {"int4_cpu": 35}
    assert layer_kernels(model, rows=1, device="meta")["model.layers.0.self_attn.q_proj"].kernel == "reference"


def test_cpu_model_matches_reference_and_counts_cache(stories, tmp_path):
    model = lowbit.quantize(fresh(stories), make_config("rtn", bits=4, group_size=32))
    before = memory_report(model)
    assert before.kernel_cache_bytes == 0
    logits = model(IDS).logits
    for m in model.modules():
        if isinstance(m, IntLinear):
            m.kernel_preference = "reference"
    ref = model(IDS).logits
    assert ((logits - ref).norm() / ref.norm()).item() < 1e-2
    after = memory_report(model)
    assert after.weight_bytes == before.weight_bytes and after.kernel_cache_bytes > 0
    assert after.held_bytes == after.weight_bytes + after.kernel_cache_bytes
    lowbit.save(model, tmp_path / "q", stories.tokenizer)
    saved = load_file(str(tmp_path / "q" / "model.safetensors"))
    q = saved["model.layers.0.mlp.down_proj.qweight"]
    assert q.dtype == torch.int32 and q.shape == (64, 22)  # canonical int_group words: ceil(172 / 8)
    loaded = lowbit.load(tmp_path / "q").model
    assert memory_report(loaded).kernel_cache_bytes == after.kernel_cache_bytes  # repacked at load
    torch.testing.assert_close(loaded(IDS).logits, logits)


@pytest.mark.parametrize("embedding_bits,head_bits", [(8, 0), (4, 4), (0, 8)])
def test_vocab_quantization_round_trip(stories, tmp_path, embedding_bits, head_bits):
    ref = stories.model(IDS).logits
    config = make_config("rtn", bits=8, group_size=32, embedding_bits=embedding_bits, head_bits=head_bits)
    model = lowbit.quantize(fresh(stories), config)
    assert isinstance(model.get_input_embeddings(), QuantizedEmbedding) == bool(embedding_bits)
    assert isinstance(model.get_output_embeddings(), IntLinear) == bool(head_bits)
    logits = model(IDS).logits
    err = ((logits - ref).norm() / ref.norm()).item()
    assert err < (0.08 if 4 in (embedding_bits, head_bits) else 0.01)  # 4-bit tables: rtn error, measured 0.054
    mem = memory_report(model)
    block_params = sum(m.in_features * m.out_features for m in stories.model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    vocab_params = 512 * 64 * ((embedding_bits > 0) + (head_bits > 0))
    assert mem.quantized_params == block_params + vocab_params  # embedding and head counted when quantized
    lowbit.save(model, tmp_path / "q", stories.tokenizer)
    loaded = lowbit.load(tmp_path / "q").model
    assert memory_report(loaded).weight_bytes == mem.weight_bytes
    torch.testing.assert_close(loaded(IDS).logits, logits)


def test_quantized_embedding_reads_only_asked_rows(stories):
    model = lowbit.quantize(fresh(stories), make_config("rtn", embedding_bits=8, group_size=32))
    emb = model.get_input_embeddings()
    dense = stories.model.get_input_embeddings().weight
    rows = emb(IDS)
    assert rows.shape == (1, 12, 64) and rows.dtype == torch.float32
    assert ((rows[0] - dense[IDS[0]]).abs().max() / dense.abs().max()).item() < 0.01


def test_vocab_bits_are_checked(stories):
    with pytest.raises(LowbitError, match="embedding_bits must be one of 0, 4, 8"):
        make_config("rtn", embedding_bits=3)
    with pytest.raises(LowbitError, match="head_bits must be one of"):
        make_config("rtn", head_bits=2)
    with pytest.raises(LowbitError, match="already quantized"):
        lowbit.quantize(fresh(stories), make_config("rtn", include="lm_head", head_bits=8))
