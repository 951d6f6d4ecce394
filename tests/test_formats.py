"""The format contract every layout meets: declared buffers = real buffers, exact byte counts, round trips."""

import pytest
import torch

from lowbit.core.affine import rtn_quantize
from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.formats.int_group import IntGroupLayout, pack_int, unpack_int
from lowbit.modules import Int8Linear, IntLinear

from conftest import seeded


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize(("cols", "group_size"), [(172, 32), (576, 128), (64, -1)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int_group_round_trip_and_bytes(bits, cols, group_size, symmetric):
    w = torch.randn(12, cols, generator=seeded(bits))
    q = rtn_quantize(w, bits, group_size, symmetric)
    layout = IntGroupLayout(12, cols, bits, q.group_size, symmetric)
    packed = pack_int(q)
    assert {k: (tuple(v.shape), v.dtype) for k, v in packed.items()} == layout.buffer_shapes()
    assert sum(t.numel() * t.element_size() for t in packed.values()) == layout.nbytes()
    back = unpack_int(packed, layout)
    assert torch.equal(back.codes, q.codes)
    assert torch.equal(back.dequantize(), q.dequantize())


def test_four_bit_group_64_is_under_029_of_fp16():
    layout = IntGroupLayout(1536, 576, 4, 64, symmetric=False)
    assert layout.nbytes() / (1536 * 576 * 2) == pytest.approx(0.28125)


def test_modules_report_their_real_buffer_bytes():
    w = torch.randn(24, 100, generator=seeded(3))
    modules = [IntLinear.from_weights(rtn_quantize(w, 3, 32, False), None)]
    modules.append(Int8Linear.from_int8(torch.zeros(24, 100, dtype=torch.int8), torch.ones(24, 1).half(), None))
    for m in modules:
        real = sum(b.numel() * b.element_size() for n, b in m.named_buffers() if n != "bias" and b is not None)
        assert m.packed_bytes() == real
    assert Int8RowLayout(24, 100).nbytes() == 24 * 100 + 48


def test_int_linear_matches_dequantized_float_linear():
    w, b = torch.randn(24, 100, generator=seeded(4)), torch.randn(24, generator=seeded(5))
    q = rtn_quantize(w, 4, 32, False)
    layer = IntLinear.from_weights(q, b)
    layer.kernel_preference = "reference"  # exact semantics; the fast paths are checked against it elsewhere
    x = torch.randn(3, 7, 100, generator=seeded(6))
    expected = torch.nn.functional.linear(x, q.dequantize(), b)
    torch.testing.assert_close(layer(x), expected)
