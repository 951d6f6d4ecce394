"""GPTQ: Hessian maths, layer error vs RTN, every bit width / group size, act-order reload, engine on every architecture."""

from __future__ import annotations

import warnings

import pytest
import torch

from lowbit.api import load, quantize, save
from lowbit.calib.arch import ARCHITECTURES
from lowbit.calib.data import calibration_windows
from lowbit.core.affine import affine_qparams, dequantize_affine, mse_qparams, quantize_affine, rtn_quantize
from lowbit.core.gptq import gptq_quantize, inverse_hessian_factor
from lowbit.core.hessian import accumulate_hessian
from lowbit.errors import LowbitError
from lowbit.methods import make_config
from lowbit.modules.int_linear import IntLinear
from tiny_models import TINY, stories, tiny_model_and_logits


@pytest.fixture(scope="module")
def story():
    return stories()


@pytest.fixture(scope="module")
def down_proj_inputs(story):
    """Real inputs (tokens, 172) of block 0's down_proj on calibration text, and its (64, 172) weight."""
    windows = calibration_windows(story.tokenizer, "wikitext2", 8, 128, seed=0)
    layer = story.model.model.layers[0].mlp.down_proj
    seen = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, 172)))
    with torch.no_grad():
        story.model(windows)
    handle.remove()
    return torch.cat(seen), layer.weight.detach()


def test_accumulate_hessian_equals_full_product():
    x = torch.randn(3, 50, 16)
    H, n = None, 0
    for part in x:
        H, n = accumulate_hessian(part, H, n)
    flat = x.reshape(-1, 16)
    assert n == 150
    torch.testing.assert_close(H, 2 * flat.t() @ flat / 150, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,group_size,symmetric", [(2, 32, False), (3, 32, False), (4, 64, True), (4, -1, False), (8, 32, True)])
def test_gptq_layer_error_below_rtn(down_proj_inputs, bits, group_size, symmetric):
    x, w = down_proj_inputs  # 172 inputs: group 32 and 64 do not divide it
    H, _ = accumulate_hessian(x, None, 0)
    gptq = gptq_quantize(w, H, bits, group_size, symmetric)
    rtn = rtn_quantize(w, bits, group_size, symmetric, integer_zero=True)
    err_gptq = (x @ (w - gptq.dequantize()).t()).pow(2).mean()
    err_rtn = (x @ (w - rtn.dequantize()).t()).pow(2).mean()
    assert gptq.codes.max() <= 2**bits - 1 and gptq.scale.shape == rtn.scale.shape
    assert err_gptq < err_rtn, (float(err_gptq), float(err_rtn))


def test_act_order_static_groups_also_beats_rtn(down_proj_inputs):
    x, w = down_proj_inputs
    H, _ = accumulate_hessian(x, None, 0)
    gptq = gptq_quantize(w, H, 3, 32, False, desc_act=True, static_groups=True)
    rtn = rtn_quantize(w, 3, 32, False, integer_zero=True)
    torch.testing.assert_close(gptq.scale, rtn.scale)  # static groups: qparams of the unquantized weight
    assert (x @ (w - gptq.dequantize()).t()).pow(2).mean() < (x @ (w - rtn.dequantize()).t()).pow(2).mean()


def test_static_groups_match_llmcompressor_gptq_exactly(down_proj_inputs):
    """With the same group qparams, lowbit's column loop is llm-compressor 0.14's quantize_weight, bit for bit."""
    pytest.importorskip("llmcompressor")
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    x, w = down_proj_inputs
    w = w[:, :128]  # llm-compressor needs groups that divide the layer
    H, _ = accumulate_hessian(x[:, :128], None, 0)
    ours = gptq_quantize(w, H, 4, 32, False, static_groups=True)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32)
    zero = (ours.zero.float() - 8).to(torch.int8)  # llm-compressor's signed zero point
    theirs, *_ = quantize_weight(w[None].clone(), H[None].clone(), ours.scale.float()[None], zero[None], None, args, 128, 0.01)
    assert torch.equal(ours.dequantize(), theirs[0])


@pytest.mark.parametrize("bits", [3, 4])
def test_default_gptq_beats_the_reference_choice_on_a_real_layer(down_proj_inputs, bits):
    """The default (act-order + static groups + mse qparams) against desc_act/static_groups off, min-max qparams."""
    x, w = down_proj_inputs
    H, _ = accumulate_hessian(x, None, 0)
    default = make_config("gptq", bits=bits, group_size=32)
    reference = make_config("gptq", bits=bits, group_size=32, desc_act=False, static_groups=False, qparams="minmax")
    assert (default.desc_act, default.static_groups, default.qparams) == (True, True, "mse")
    with torch.no_grad():
        errors = [float((c.quantize_layer(w, None, H)(x) - x @ w.t()).pow(2).mean()) for c in (default, reference)]
    assert errors[0] < errors[1], errors


def test_mse_qparams_never_worse_than_minmax_in_their_norm():
    w = torch.randn(16, 100) * torch.rand(16, 1)
    w[3, 7] = 8.0  # an outlier the search can clip
    for symmetric in (False, True):
        errors = []
        for choose in (affine_qparams, mse_qparams):
            scale, zero = choose(w, 3, 32, symmetric, integer_zero=True)  # 100 = 3 x 32 + 4: padded last group
            assert scale.shape == (16, 4) and (zero is None) == symmetric
            q = dequantize_affine(quantize_affine(w, scale, zero, 3, 32), scale, zero, 3, 32)
            errors.append((q - w).abs().pow(2.4).sum())
        assert errors[1] < errors[0], errors


def test_dampening_is_raised_with_a_warning_when_cholesky_fails():
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    H = q @ torch.diag(torch.cat([torch.full((15,), 1.0), torch.tensor([-0.5])])) @ q.t()  # indefinite
    with pytest.warns(UserWarning, match="Cholesky failed"):
        U = inverse_hessian_factor(H, 0.01)
    assert torch.isfinite(U).all()


@pytest.mark.parametrize("options,message", [
    (dict(static_groups=False), "desc_act=true needs static_groups=true"),
    (dict(bits=1), "2..8 bits"),
    (dict(damp=0.0), "damp"),
    (dict(block_size=0), "block_size"),
    (dict(qparams="percentile"), "qparams must be one of minmax, mse"),
])
def test_bad_gptq_options_are_one_line_errors(options, message):
    with pytest.raises(LowbitError, match=message):
        make_config("gptq", **options)


def test_gptq_model_closer_to_fp_than_rtn(story):
    import copy

    windows = calibration_windows(story.tokenizer, "wikitext2", 16, 128, seed=0)
    held_out = calibration_windows(story.tokenizer, "ptb", 4, 128, seed=1)
    with torch.no_grad():
        ref = story.model(held_out).logits
        errors = {}
        for method, options in [("rtn", dict(integer_zero=True)), ("gptq", {})]:
            model = quantize(copy.deepcopy(story.model), make_config(method, bits=3, group_size=32, **options), windows)
            errors[method] = float((model(held_out).logits - ref).pow(2).mean())
    assert errors["gptq"] < errors["rtn"], errors


def test_act_order_checkpoint_reloads_with_identical_logits(story, tmp_path):
    import copy

    windows = calibration_windows(story.tokenizer, "wikitext2", 8, 64, seed=0)
    config = make_config("gptq", bits=4, group_size=32, desc_act=True, static_groups=True)
    model = quantize(copy.deepcopy(story.model), config, windows)
    assert isinstance(model.model.layers[0].mlp.down_proj, IntLinear)
    save(model, tmp_path / "q", story.tokenizer)
    reloaded = load(tmp_path / "q")
    assert reloaded.model.lowbit_config == config
    x = windows[:2]
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded.model(x).logits)


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_engine_runs_gptq_on_every_architecture(model_type):
    model, windows, ref = tiny_model_and_logits(model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random tiny layers may need a raised damp
        quantize(model, make_config("gptq", bits=8, group_size=16), windows)
    quantized = [m for m in model.modules() if isinstance(m, IntLinear)]
    assert len(quantized) == 2 * len(ARCHITECTURES[model_type].linears)
    with torch.no_grad():
        out = model(windows).logits
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()  # 8-bit: close to the float model


def test_gptq_without_calibration_data_is_an_error(story):
    with pytest.raises(LowbitError, match="calibration data"):
        quantize(story.model, make_config("gptq"), None)


def test_gptq_refuses_layers_outside_the_blocks(story):
    import copy

    windows = calibration_windows(story.tokenizer, "wikitext2", 2, 32, seed=0)
    with pytest.raises(LowbitError, match="decoder-block linears only"):
        quantize(copy.deepcopy(story.model), make_config("gptq", include="lm_head"), windows)
