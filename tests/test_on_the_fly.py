"""On-the-fly quantization while loading: identical to quantizing after a normal load, and its errors."""

import json

import pytest
import torch

import lowbit
from lowbit.errors import LowbitError
from lowbit.io.sources import load_model
from lowbit.methods import make_config

from tiny_models import tiny_model


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize(
    "method, options", [("hqq", {"bits": 3, "group_size": 32}), ("nf4", {}), ("int8", {}), ("eetq", {})]
)
def test_stories_equals_quantize_after_load(stories_path, method, options):
    config = make_config(method, **options)
    on_the_fly = lowbit.load(stories_path, quantize=config).model
    after = lowbit.quantize(load_model(str(stories_path)).model, config)
    assert_same_state(on_the_fly, after)
    tokens = torch.randint(0, 512, (1, 16))
    assert torch.equal(on_the_fly(tokens).logits, after(tokens).logits)


@pytest.fixture
def sharded_bf16(tmp_path, stories):
    """A tiny qwen2 (biased q/k/v) saved as several bf16 safetensors shards with an index."""
    model = tiny_model("qwen2").to(torch.bfloat16)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_()  # initialised to zeros: make them worth checking
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="20KB")
    stories.tokenizer.save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


def test_sharded_bf16_equals_quantize_after_load(sharded_bf16):
    config = make_config("hqq", bits=4, group_size=16)
    on_the_fly = lowbit.load(sharded_bf16, quantize=config).model
    after = lowbit.quantize(load_model(str(sharded_bf16)).model, config)
    assert_same_state(on_the_fly, after)
    assert on_the_fly.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0  # biases arrived


def test_missing_shard_is_named(sharded_bf16):
    index = json.loads((sharded_bf16 / "model.safetensors.index.json").read_text())
    (sharded_bf16 / sorted(set(index["weight_map"].values()))[-1]).unlink()
    with pytest.raises(LowbitError, match="missing"):
        lowbit.load(sharded_bf16, quantize=make_config("nf4"))


def test_calibration_methods_and_non_models_are_refused(stories_path, tmp_path):
    with pytest.raises(LowbitError, match="calibration"):
        lowbit.load(stories_path, quantize=make_config("ptq"))
    with pytest.raises(LowbitError, match="config.json"):
        lowbit.load(tmp_path, quantize=make_config("nf4"))


def test_cli_load_saves_a_loadable_model(run_cli, stories_path, tmp_path):
    code, out, err = run_cli("load", stories_path, "--quantize", "nf4", "-o", "double_quant=false", "--out", tmp_path / "q")
    assert code == 0, err
    assert "peak RSS" in out and "4.500 bits" in out
    loaded = load_model(str(tmp_path / "q")).model
    assert_same_state(loaded, lowbit.load(stories_path, quantize=make_config("nf4", double_quant=False)).model)
    code, _, err = run_cli("load", stories_path, "--quantize", "nf4", "--bits", "3")
    assert code == 2 and "does not take bits" in err
