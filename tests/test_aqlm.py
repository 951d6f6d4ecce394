"""AQLM: layer error vs GPTQ, the maths' contracts, the packed format, and the method through the engine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.api import load, quantize, save
from lowbit.calib.data import calibration_windows
from lowbit.core.aqlm import (
    AQLMSearch,
    AQLMWeights,
    aqlm_decode,
    aqlm_quantize,
    beam_search,
    output_error,
    update_codebooks,
    update_scales,
)
from lowbit.core.gptq import gptq_quantize
from lowbit.core.hessian import accumulate_hessian
from lowbit.errors import LowbitError
from lowbit.formats.aqlm import AQLMLayout, pack_aqlm, unpack_aqlm
from lowbit.methods import make_config
from lowbit.modules.aqlm_linear import AQLMLinear
from tiny_models import stories

FAST = AQLMSearch(rounds=2, kmeans_iters=10, kmeans_points=64, cg_iters=10)


@pytest.fixture(scope="module")
def correlated_layer():
    """A random (256, 512) weight and 4096 correlated calibration inputs with uneven channel scales."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(512, 512, generator=g) / 512**0.5 + torch.eye(512)
    x = (torch.randn(4096, 512, generator=g) @ mix) * torch.linspace(0.2, 3, 512)
    w = torch.randn(256, 512, generator=g) * 0.02
    return w, x, accumulate_hessian(x, None, 0)[0]


def relative_output_error(x, w, w_hat):
    return float((x @ (w - w_hat).t()).pow(2).sum() / (x @ w.t()).pow(2).sum())


def test_aqlm_2x8_layer_error_below_gptq_2bit_g32(correlated_layer):
    w, x, H = correlated_layer
    aqlm = aqlm_quantize(w, H, 2, 8, 8, FAST)
    gptq = gptq_quantize(w, H, 2, 32, symmetric=False)
    err_aqlm, err_gptq = relative_output_error(x, w, aqlm.dequantize()), relative_output_error(x, w, gptq.dequantize())
    assert err_aqlm < err_gptq, (err_aqlm, err_gptq)


def test_search_steps_never_raise_the_output_error(correlated_layer):
    w, _, H = correlated_layer
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(16, (256, 64, 2), generator=g)
    books, scales = torch.randn(2, 16, 8, generator=g), torch.full((256, 1), 0.01)
    errors = [float(output_error(w, aqlm_decode(codes, books, scales), H).sum())]
    books = update_codebooks(w, H, codes, books, scales, 30)
    errors.append(float(output_error(w, aqlm_decode(codes, books, scales), H).sum()))
    scales = update_scales(w, H, codes, books)
    errors.append(float(output_error(w, aqlm_decode(codes, books, scales), H).sum()))
    for beam in (1, 3):
        codes = beam_search(w, H, codes, books, scales, beam)
        errors.append(float(output_error(w, aqlm_decode(codes, books, scales), H).sum()))
    assert all(b <= a * (1 + 1e-5) for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.6 * errors[0]


def test_codebook_update_is_the_least_squares_solution():
    """On a problem small enough to solve directly, conjugate gradient reaches the normal equations' solution."""
    g = torch.Generator().manual_seed(2)
    w, x = torch.randn(6, 4, generator=g), torch.randn(50, 4, generator=g)
    H = x.t() @ x
    codes, scales = torch.randint(3, (6, 2, 2), generator=g), torch.rand(6, 1, generator=g) + 0.5
    books = update_codebooks(w, H, codes, torch.zeros(2, 3, 2), scales, 100)
    basis = torch.eye(12).view(12, 2, 3, 2)  # every codebook entry as a unit vector
    A = torch.stack([(aqlm_decode(codes, b, scales) @ torch.linalg.cholesky(H)).reshape(-1) for b in basis], 1)
    target = (w @ torch.linalg.cholesky(H)).reshape(-1, 1)  # A is rank-deficient (unused codewords): SVD driver
    direct = torch.linalg.lstsq(A, target, driver="gelsd").solution.view(2, 3, 2)
    error = lambda b: float(output_error(w, aqlm_decode(codes, b, scales), H).sum())
    assert error(books) == pytest.approx(error(direct), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("m,bits,cols", [(2, 8, 64), (1, 16, 20), (1, 4, 13)])
def test_format_round_trip_bytes_and_forward(m, bits, cols):
    g = torch.Generator().manual_seed(3)
    groups = -(-cols // 8)
    codes = torch.randint(2**bits, (32, groups, m), generator=g)
    codes[0, 0, 0] = 2**bits - 1  # int16 storage of codes >= 2**15
    w = AQLMWeights(codes, torch.randn(m, 2**bits, 8, generator=g).half().float(), torch.rand(32, 1).half().float(), cols)
    layer = AQLMLinear.from_weights(w, torch.randn(32))
    back = layer.aqlm_weights()
    assert torch.equal(back.codes, codes) and torch.equal(back.codebooks, w.codebooks)
    lay = layer.layout
    assert layer.codes.dtype == (torch.uint8 if bits <= 8 else torch.int16)
    assert lay.nbytes() == sum(b.numel() * b.element_size() for n, b in layer.named_buffers() if n != "bias")
    assert lay.nbytes() == 32 * groups * m * (1 if bits <= 8 else 2) + 2 * m * 2**bits * 8 + 2 * 32
    x = torch.randn(3, 5, cols)
    torch.testing.assert_close(layer(x), F.linear(x, w.dequantize(), layer.bias))
    assert unpack_aqlm(pack_aqlm(w, lay), lay).dequantize().shape == (32, cols)


def test_exact_bits_per_parameter():
    assert 8 * AQLMLayout(4096, 4096, 2, 8, 8).nbytes() / 4096**2 == pytest.approx(2 + 2 * 256 * 8 * 16 / 4096**2 + 16 / 4096)
    assert 8 * AQLMLayout(4096, 4096, 1, 16, 8).nbytes() / 4096**2 == pytest.approx(2.5 + 16 / 4096)


def test_product_search_gives_1x16_codes_at_least_as_good_as_2x8(correlated_layer):
    w, x, H = correlated_layer
    two = aqlm_quantize(w, H, 2, 8, 8, FAST)
    one = aqlm_quantize(w, H, 1, 16, 8, AQLMSearch(**{**FAST.__dict__, "product_search": True}))
    assert one.codes.shape == (256, 64, 1) and one.codebooks.shape == (1, 65536, 8)
    assert relative_output_error(x, w, one.dequantize()) <= relative_output_error(x, w, two.dequantize())


def test_method_through_engine_finetunes_and_reloads(tmp_path):
    story = stories()
    model = story.model
    calib = calibration_windows(story.tokenizer, "wikitext2", 8, 64, seed=0)
    config = make_config("aqlm", codebooks=2, codebook_bits=4, preset="fast", finetune_samples=8, finetune_epochs=2,
                         finetune_lr=1e-3)  # fmt: skip
    quantize(model, config, calib)
    layers = [m for m in model.modules() if isinstance(m, AQLMLinear)]
    assert len(layers) == 35 and layers[0].layout.n_groups == 8
    losses = [v for k, v in model.lowbit_artifacts.items() if k.endswith("aqlm_finetune_loss")]
    assert len(losses) == 5 and sum(float(v[1]) < float(v[0]) for v in losses) >= 4  # fine-tuning lowers the loss
    tokens = calib[:2]
    with torch.no_grad():
        before = model(tokens).logits
    out = save(model, tmp_path / "aqlm", story.tokenizer)
    with torch.no_grad():
        assert torch.equal(load(out).model(tokens).logits, before)


@pytest.mark.parametrize("options,message", [
    (dict(preset="slow"), "unknown aqlm preset"),
    (dict(codebooks=0), "1..8 codebooks"),
    (dict(codebook_bits=17), "1..8 codebooks of 1..16 bits"),
    (dict(group_size=0), "group_size must be a positive"),
    (dict(beam=-1), "beam must be >= 0"),
    (dict(finetune_lr=0.0), "finetune_lr > 0"),
    (dict(bits=2), "aqlm does not take bits"),
])  # fmt: skip
def test_bad_settings_are_one_line_errors(options, message):
    with pytest.raises(LowbitError, match=message):
        make_config("aqlm", **options)


def test_needs_calibration_data():
    with pytest.raises(LowbitError, match="needs calibration data"):
        make_config("aqlm").quantize_layer(torch.randn(8, 16), None)
