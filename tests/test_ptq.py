"""W8A8 ptq: observers, the integer matmul paths, and calibration requirements."""

import pytest
import torch

import lowbit
from lowbit.core.observers import MinMaxObserver, PercentileObserver
from lowbit.errors import LowbitError
from lowbit.kernels import reference
from lowbit.methods import make_config
from lowbit.modules import W8A8Linear

from conftest import seeded


def test_observers():
    x = torch.cat([torch.linspace(-1, 1, 9999), torch.tensor([50.0])])
    minmax, pct = MinMaxObserver(), PercentileObserver(99.9)
    minmax.update(x)
    pct.update(x)
    assert minmax.range() == 50.0
    assert pct.range() == pytest.approx(1.0, abs=0.01)  # the single outlier is clipped


@pytest.mark.parametrize("rows", [1, 3, 17])
def test_int_mm_and_emulation_agree_exactly(rows):
    x_q = torch.randint(-127, 128, (rows, 172), generator=seeded(rows), dtype=torch.int8)
    w_q = torch.randint(-127, 128, (64, 172), generator=seeded(rows + 1), dtype=torch.int8)
    x_s, w_s = torch.tensor([0.02]), torch.rand(64, 1, generator=seeded(2)).half()
    fast = reference.w8a8_linear_int_mm(x_q, x_s, w_q, w_s)
    emulated = reference.w8a8_linear_emulated(x_q, x_s, w_q, w_s)
    torch.testing.assert_close(fast, emulated, rtol=1e-6, atol=1e-5)


def test_w8a8_layer_is_close_to_float():
    w, x = torch.randn(48, 80, generator=seeded(3)), torch.randn(5, 80, generator=seeded(4))
    from lowbit.core.affine import int8_absmax

    q, s = int8_absmax(w, dim=1)
    layer = W8A8Linear.from_calibrated(q, s, float(x.abs().max()) / 127, None)
    ref = x @ w.t()
    assert (layer(x) - ref).norm() / ref.norm() < 0.02


def test_ptq_needs_calibration_data(stories_copy):
    with pytest.raises(LowbitError, match="ptq needs calibration data"):
        lowbit.quantize(stories_copy, make_config("ptq"))


@pytest.mark.parametrize("bad", [dict(bits=4), dict(observer="mean"), dict(percentile=10.0), dict(group_size=64)])
def test_ptq_rejects_bad_settings(bad):
    with pytest.raises(LowbitError):
        make_config("ptq", **bad)
