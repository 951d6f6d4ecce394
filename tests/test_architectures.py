"""Every architecture in the table: its linears are found, quantized, saved and reloaded with equal logits."""

import pytest
import torch

import lowbit
from lowbit.calib.arch import ARCHITECTURES, arch_spec, find_targets
from lowbit.errors import LowbitError
from lowbit.methods import make_config
from lowbit.modules import IntLinear

from tiny_models import TINY as TINY_CONFIGS
from tiny_models import tiny_model

TOKENS = torch.arange(20).view(2, 10) % 128


def test_every_table_entry_except_multimodal_has_a_tiny_model():
    assert set(ARCHITECTURES) - set(TINY_CONFIGS) == {"gemma3"}  # the multimodal wrapper: same linears


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_quantize_save_load(model_type, tmp_path):
    model = tiny_model(model_type)
    spec = arch_spec(model.config.model_type)
    targets = find_targets(model, spec)
    assert len(targets) == 2 * len(spec.linears)
    with torch.no_grad():
        before = model(TOKENS).logits
    lowbit.quantize(model, make_config("rtn", bits=8, group_size=32))
    assert sum(isinstance(m, IntLinear) for m in model.modules()) == len(targets)
    with torch.no_grad():
        after = model(TOKENS).logits
    assert (after - before).abs().max() < 0.05 * before.abs().max()  # 8-bit barely moves random models
    lowbit.save(model, tmp_path / "q")
    reloaded = lowbit.load(tmp_path / "q").model
    with torch.no_grad():
        assert torch.equal(reloaded(TOKENS).logits, after)


def test_gpt2_conv1d_weights_are_transposed():
    model = tiny_model("gpt2")
    conv = model.transformer.h[0].mlp.c_fc  # Conv1D, weight stored (in, out)
    x = torch.randn(3, conv.weight.shape[0])
    expected = conv(x)
    lowbit.quantize(model, make_config("rtn", bits=8, group_size=-1))
    torch.testing.assert_close(model.transformer.h[0].mlp.c_fc(x), expected, atol=0.02, rtol=0.05)


def test_include_and_exclude_patterns():
    model = tiny_model("llama")
    spec = arch_spec("llama")
    names = find_targets(model, spec, include="lm_head", exclude=r"\.mlp\.")
    assert "lm_head" in names
    assert not any(".mlp." in n for n in names)
    assert len(names) == 2 * 4 + 1


def test_unsupported_architecture_lists_the_supported_ones():
    with pytest.raises(LowbitError, match="unsupported architecture 'bert': lowbit supports .*llama.*opt"):
        arch_spec("bert")
