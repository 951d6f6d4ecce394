"""Group-wise affine quantization: error bounds, partial groups, symmetric and integer-zero variants."""

import pytest
import torch

from lowbit.core.affine import affine_qparams, int8_absmax, n_groups, rtn_quantize
from lowbit.errors import LowbitError
from lowbit.core.metrics import relative_error, sqnr_db

from conftest import seeded


def _weight(out=16, cols=172):
    return torch.randn(out, cols, generator=seeded(1))


@pytest.mark.parametrize("group_size", [32, 64, 128, -1, 1000])
@pytest.mark.parametrize("symmetric", [False, True])
def test_error_is_at_most_half_a_step(group_size, symmetric):
    w = _weight()
    q = rtn_quantize(w, 4, group_size, symmetric)
    assert q.scale.shape == (16, n_groups(172, q.group_size))
    step = q.scale.float().repeat_interleave(q.group_size, dim=1)[:, :172]
    err = (q.dequantize() - w).abs()
    # Half a step plus the fp16 rounding of scale and zero (symmetric clips nothing: absmax is on the grid).
    assert (err <= 0.5 * step * 1.01 + 1e-4).all()


def test_last_partial_group_has_its_own_range():
    w = torch.zeros(1, 40)
    w[0, 32:] = torch.linspace(-100, 100, 8)  # only the partial second group (cols 32..39) is large
    q = rtn_quantize(w, 4, 32, symmetric=False)
    assert q.scale.shape == (1, 2)
    assert q.scale[0, 0] < 1e-3 < q.scale[0, 1]
    assert torch.equal(q.dequantize()[0, :32], torch.zeros(32))


def test_integer_zero_points_are_integers_in_range():
    scale, zero = affine_qparams(_weight(), 3, 32, symmetric=False, integer_zero=True)
    assert torch.equal(zero, zero.round())
    assert zero.min() >= 0 and zero.max() <= 7


@pytest.mark.parametrize(("bits", "floor_db"), [(8, 40.0), (4, 17.0), (3, 11.0), (2, 5.0)])
def test_sqnr_floor_per_bit_width(bits, floor_db):
    w = _weight(64, 256)
    assert sqnr_db(w, rtn_quantize(w, bits, 64, symmetric=False).dequantize()) > floor_db


def test_constant_groups_do_not_divide_by_zero():
    w = torch.full((2, 64), 0.25)
    q = rtn_quantize(w, 4, 32, symmetric=False)
    assert torch.isfinite(q.dequantize()).all()
    assert relative_error(w, q.dequantize()) < 1e-3


def test_int8_absmax_rows():
    w = _weight()
    q, scale = int8_absmax(w, dim=1)
    assert q.dtype == torch.int8 and scale.shape == (16, 1)
    assert q.abs().max() == 127
    assert relative_error(w, q.float() * scale.float()) < 0.01


def test_int8_absmax_saturate_matches_checked_path_and_clamps_overflow():
    w = _weight()
    q, scale = int8_absmax(w, dim=1)
    q_sat, scale_sat = int8_absmax(w, dim=1, saturate=True)
    assert torch.equal(q, q_sat) and torch.equal(scale, scale_sat)
    huge = torch.tensor([[1e9, -1e9, 1.0]])
    with pytest.raises(LowbitError, match="too large for fp16"):
        int8_absmax(huge, dim=1)
    q_huge, scale_huge = int8_absmax(huge, dim=1, saturate=True)  # run-time activations: saturate, no sync
    assert torch.isfinite(scale_huge.float()).all() and q_huge.tolist() == [[127, -127, 0]]
