"""AWQ: scaling keeps the float model's function, beats RTN, the search saves and re-applies, bad options fail."""

from __future__ import annotations

import copy

import pytest
import torch

from lowbit.api import quantize, save
from lowbit.calib.arch import arch_spec, find_targets
from lowbit.calib.data import calibration_windows
from lowbit.calib.engine import run_sequential
from lowbit.errors import LowbitError
from lowbit.io.checkpoint import ARTIFACTS_FILE
from lowbit.methods import make_config
from lowbit.methods.awq import inspected_module
from tiny_models import TINY, stories, tiny_model, tiny_model_and_logits


class ScaleOnly:
    """AWQ's scale search and scaling, without clipping or quantizing: the block must stay the same function."""

    name = "awq-scale-only"

    def __init__(self, search_scope="block"):
        self.config = make_config("awq", bits=3, group_size=16, clip=False, n_grid=5, search_scope=search_scope)

    def calibrate_block(self, run):
        return self.config.awq_block(run)


@pytest.fixture(scope="module")
def story():
    return stories()


@pytest.mark.parametrize("model_type", sorted(TINY))
@pytest.mark.parametrize("scope", ["block", "module"])
def test_awq_scaling_leaves_the_float_model_unchanged(model_type, scope):
    model, windows, ref = tiny_model_and_logits(model_type)
    targets = find_targets(model, arch_spec(model.config.model_type))
    scales = run_sequential(model, targets, windows, ScaleOnly(scope))
    assert scales and any((s - 1).abs().max() > 0.05 for s in scales.values())  # something really moved
    with torch.no_grad():
        torch.testing.assert_close(model(windows).logits, ref, rtol=1e-4, atol=1e-4)


def test_v_to_o_is_skipped_under_gqa_and_used_without(story):
    windows = calibration_windows(story.tokenizer, "wikitext2", 2, 32, seed=0)
    gqa = run_sequential(copy.deepcopy(story.model), find_targets(story.model, arch_spec("llama")), windows, ScaleOnly())
    assert not any("v_proj" in k for k in gqa)  # stories260k: 8 query heads, 4 kv heads
    mha = tiny_model("llama")
    scales = run_sequential(mha, find_targets(mha, arch_spec("llama")), torch.randint(3, 128, (2, 16)), ScaleOnly())
    assert any("v_proj" in k for k in scales)


def test_awq_and_awq_gptq_beat_rtn_and_the_search_reapplies(story, tmp_path):
    windows = calibration_windows(story.tokenizer, "wikitext2", 16, 128, seed=0)
    held_out = calibration_windows(story.tokenizer, "ptb", 4, 128, seed=1)
    settings = [("rtn", dict(integer_zero=True)), ("awq", {}), ("awq+gptq", {}), ("awq", dict(search_scope="module"))]
    with torch.no_grad():
        ref = story.model(held_out).logits
        errors, models = {}, {}
        for method, options in settings:
            config = make_config(method, bits=3, group_size=32, **options)
            name = method + "".join(f" {v}" for v in options.values())
            models[name] = quantize(copy.deepcopy(story.model), config, windows)
            errors[name] = float((models[name](held_out).logits - ref).pow(2).mean())
    assert errors["awq"] < errors["rtn True"] and errors["awq+gptq"] < errors["rtn True"], errors
    assert errors["awq module"] < errors["rtn True"], errors
    save(models["awq"], tmp_path / "awq", story.tokenizer)
    search = tmp_path / "awq" / ARTIFACTS_FILE
    assert search.is_file()
    config = make_config("awq", bits=3, group_size=32, load_search=str(search))
    again = quantize(copy.deepcopy(story.model), config, windows[:1])  # no search: other data, same result
    with torch.no_grad():
        assert torch.equal(again(held_out).logits, models["awq"](held_out).logits)


@pytest.mark.parametrize("options,message", [
    (dict(n_grid=0), "n_grid"),
    (dict(max_shrink=1.0), "max_shrink"),
    (dict(search_samples=-1), "search_samples"),
    (dict(search_scope="layer"), "search_scope"),
    (dict(bits=9), "2..8 bits"),
])
def test_bad_awq_options_are_one_line_errors(options, message):
    with pytest.raises(LowbitError, match=message):
        make_config("awq", **options)


def test_module_scope_inspects_the_smallest_module_holding_the_pair():
    spec = arch_spec("llama")
    assert [inspected_module(p) for p in spec.scale_pairs] == ["self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj"]


def test_awq_gptq_takes_both_methods_options():
    config = make_config("awq+gptq", bits=3, n_grid=10, desc_act=True, static_groups=True)
    assert config.n_grid == 10 and config.desc_act and config.to_dict()["method"] == "awq+gptq"


def test_unreadable_or_foreign_search_file_is_an_error(story, tmp_path):
    windows = calibration_windows(story.tokenizer, "wikitext2", 2, 32, seed=0)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(LowbitError, match="cannot read the AWQ search file"):
        quantize(copy.deepcopy(story.model), make_config("awq", load_search=str(bad)), windows)
    from safetensors.torch import save_file

    save_file({"other": torch.ones(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LowbitError, match="no model.layers.0.input_layernorm.awq_scale"):
        quantize(copy.deepcopy(story.model), make_config("awq", load_search=str(tmp_path / "other.safetensors")), windows)
