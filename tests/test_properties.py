"""Property-based tests: formats over random shapes/bits/groups, and the config parser over random JSON."""

import json

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.core.affine import rtn_quantize
from lowbit.errors import LowbitError
from lowbit.formats.bitpack import pack_bits, unpack_bits, words_per_row
from lowbit.formats.int_group import IntGroupLayout, pack_int, unpack_int
from lowbit.methods.base import MethodConfig

shapes = st.tuples(st.integers(1, 9), st.integers(1, 300))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, bits=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(shape, bits, seed):
    codes = torch.randint(0, 2**bits, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape == (shape[0], words_per_row(shape[1], bits))
    assert torch.equal(unpack_bits(packed, bits, shape[1]), codes)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, bits=st.integers(2, 8), group=st.one_of(st.just(-1), st.integers(1, 400)),
       symmetric=st.booleans(), seed=st.integers(0, 2**16))
def test_quantize_pack_dequantize(shape, bits, group, symmetric, seed):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    q = rtn_quantize(w, bits, group, symmetric)
    layout = IntGroupLayout(shape[0], shape[1], bits, q.group_size, symmetric)
    packed = pack_int(q)
    assert sum(t.numel() * t.element_size() for t in packed.values()) == layout.nbytes()
    back = unpack_int(packed, layout)
    assert torch.equal(back.dequantize(), q.dequantize())
    step = q.scale.float().repeat_interleave(q.group_size, dim=1)[:, : shape[1]]
    assert ((q.dequantize() - w).abs() <= 0.5 * step * 1.01 + 1e-3).all()  # min-max ranges clip nothing


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
config_like = st.fixed_dictionaries(
    {"method": st.sampled_from(["rtn", "ptq", "nosuch", ""])},
    optional={"bits": json_values, "group_size": json_values, "symmetric": json_values, "version": json_values,
              "observer": json_values, "percentile": json_values, "extra": json_values},
)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(json_values, config_like))
def test_config_parser_never_crashes_with_anything_but_a_clear_error(data):
    data = json.loads(json.dumps(data))  # only what JSON can carry
    try:
        config = MethodConfig.from_dict(data)
    except LowbitError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert MethodConfig.from_dict(config.to_dict()) == config
