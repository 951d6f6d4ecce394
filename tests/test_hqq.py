"""hqq's round_zero start (the hqq package's 4-bit default), and lowbit vs the hqq package where it is installed."""

import pytest
import torch

from lowbit.core.affine import affine_qparams
from lowbit.core.hqq import HQQSchedule, hqq_quantize
from lowbit.core.metrics import relative_error
from lowbit.errors import LowbitError
from lowbit.methods import make_config
from lowbit.methods.base import MethodConfig

from conftest import seeded


@pytest.mark.parametrize("round_zero", [False, True])
def test_start_zero_is_min_max_or_its_rounding(round_zero):
    w = torch.randn(48, 96, generator=seeded(11))
    _, zero = affine_qparams(w, 4, 32, symmetric=False)  # (48, 3)
    start = hqq_quantize(w, 4, 32, HQQSchedule(iters=1), round_zero=round_zero)  # one step: the start is kept
    assert torch.equal(start.zero, zero.round() if round_zero else zero)
    assert not torch.equal(zero.round(), zero)  # the two starts differ


def test_round_zero_is_the_default_and_round_trips():
    assert make_config("hqq").round_zero is True
    config = make_config("hqq", bits=3, round_zero=False)
    assert MethodConfig.from_dict(config.to_dict()) == config


def test_round_zero_needs_a_bool():
    with pytest.raises(LowbitError, match="round_zero"):
        make_config("hqq", round_zero="yes")


@pytest.mark.parametrize("round_zero", [False, True])
def test_both_starts_end_below_their_start_error(round_zero):
    w = torch.randn(64, 256, generator=seeded(12))
    start = hqq_quantize(w, 4, 64, HQQSchedule(iters=1), round_zero=round_zero)
    done = hqq_quantize(w, 4, 64, round_zero=round_zero)
    assert (w - done.dequantize()).abs().mean() < (w - start.dequantize()).abs().mean()


@pytest.mark.parametrize(("bits", "group"), [(4, 64), (3, 64), (2, 32)])
@pytest.mark.parametrize("round_zero", [False, True])
def test_weight_error_matches_the_hqq_package(bits, group, round_zero):
    """Same start, same grouping (axis=1, contiguous runs of a row): relative errors within 1%."""
    quantize = pytest.importorskip("hqq.core.quantize")
    w = torch.randn(128, 512, generator=seeded(13)) * 0.02
    codes, meta = quantize.Quantizer.quantize(w, nbits=bits, group_size=group, axis=1, round_zero=round_zero,
                                              optimize=True, bitpack=False, device="cpu")
    theirs = ((codes - meta["zero"]) * meta["scale"]).view(w.shape)
    ours = hqq_quantize(w, bits, group, round_zero=round_zero).dequantize()
    assert relative_error(w, ours) == pytest.approx(relative_error(w, theirs), rel=0.01)


def test_tol_stops_at_the_first_step_that_gains_less():
    """A step that lowers the error by less than tol of it ends the loop with that step's qparams kept."""
    w = torch.randn(64, 256, generator=seeded(14))
    two_steps = hqq_quantize(w, 3, 64, HQQSchedule(iters=2, tol=0.0), round_zero=True)
    coarse = hqq_quantize(w, 3, 64, HQQSchedule(tol=0.5), round_zero=True)  # step 2 gains < 50%: stop there
    assert torch.equal(coarse.zero, two_steps.zero)
    full = hqq_quantize(w, 3, 64, HQQSchedule(tol=0.0), round_zero=True)
    assert not torch.equal(full.zero, coarse.zero)
    err = lambda q: (w - q.dequantize()).abs().mean()  # noqa: E731
    assert err(full) <= err(hqq_quantize(w, 3, 64, round_zero=True)) <= err(coarse)


@pytest.mark.parametrize("tol", [-0.1, 1.0])
def test_bad_tol_is_a_one_line_error(tol):
    with pytest.raises(LowbitError, match="tol"):
        make_config("hqq", tol=tol)
