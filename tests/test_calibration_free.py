"""Calibration-free methods: hqq, int8 (LLM.int8), nf4/fp4, eetq. Error bounds, formats, outlier path."""

import pytest
import torch

from lowbit.calib.arch import arch_spec, find_targets
from lowbit.core.metrics import relative_error
from lowbit.errors import LowbitError
from lowbit.formats.int_group_meta import IntGroupMetaLayout
from lowbit.methods import make_config
from lowbit.modules import FourBitLinear, HQQLinear, Int8Linear, IntLinear, LLMInt8Linear

from conftest import seeded


def dequantized(module, in_features):
    """The (out, in) weight a quantized module applies (bias-free modules only)."""
    return module(torch.eye(in_features)).t()


@pytest.fixture(scope="module")
def stories_weights(stories):
    targets = find_targets(stories.model, arch_spec("llama"))
    return [m.weight.detach() for m in targets.values()]


def mean_error(weights, config):
    return sum(relative_error(w, dequantized(config.quantize_layer(w, None), w.shape[1])) for w in weights) / len(weights)


@pytest.mark.parametrize(("bits", "group", "bound"), [(4, 32, 0.09), (3, 32, 0.18), (2, 32, 0.38)])
def test_hqq_beats_rtn_on_stories(stories_weights, bits, group, bound):
    hqq = mean_error(stories_weights, make_config("hqq", bits=bits, group_size=group))
    rtn = mean_error(stories_weights, make_config("rtn", bits=bits, group_size=group))
    assert hqq < rtn
    assert hqq < bound


def test_hqq_axis1_emits_the_shared_format():
    w = torch.randn(24, 80, generator=seeded(1))
    module = make_config("hqq", bits=3, group_size=32).quantize_layer(w, None)
    assert type(module) is IntLinear and module.layout.bits == 3 and module.zero.dtype == torch.float16


@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_hqq_any_bits_and_output_axis(bits):
    w = torch.randn(40, 72, generator=seeded(bits))
    for config in (make_config("hqq", bits=bits, group_size=16), make_config("hqq", bits=bits, group_size=16, axis=0)):
        module = config.quantize_layer(w, torch.zeros(40))
        assert module(torch.randn(3, 72)).shape == (3, 40)
        error = relative_error(w, dequantized(config.quantize_layer(w, None), 72))
        assert error < {1: 1.2, 2: 0.45, 5: 0.05, 8: 0.005}[bits]


def test_hqq_8bit_qparams_bytes_are_exact():
    w = torch.randn(300, 96, generator=seeded(2))
    module = make_config("hqq", bits=4, group_size=32, quant_qparams=True).quantize_layer(w, None)
    assert isinstance(module, HQQLinear)
    rows, groups, blocks = 300, 3, 3  # ceil(300 / 128) blocks of qparams per group column
    expected = 4 * rows * (96 * 4 // 32) + 2 * (rows * groups + 2 * 2 * groups * blocks)
    assert module.packed_bytes() == expected == sum(b.numel() * b.element_size() for n, b in module.named_buffers() if n != "bias")
    plain = make_config("hqq", bits=4, group_size=32).quantize_layer(w, None)
    assert module.packed_bytes() < plain.packed_bytes()
    assert relative_error(w, dequantized(module, 96)) < 1.02 * relative_error(w, dequantized(plain, 96))
    assert IntGroupMetaLayout(300, 96, 4, 32, 1, False).nbytes() == plain.packed_bytes()


@pytest.mark.parametrize(
    "options",
    [dict(bits=0), dict(bits=9), dict(axis=2), dict(axis=0, quant_qparams=True), dict(lp_norm=1.5), dict(iters=0)],
)
def test_hqq_bad_settings(options):
    with pytest.raises(LowbitError):
        make_config("hqq", **options)


@pytest.mark.parametrize(("method", "bound"), [("nf4", 0.1), ("fp4", 0.13)])
@pytest.mark.parametrize("double_quant", [False, True])
def test_fourbit_error_and_bits(method, bound, double_quant):
    w = torch.randn(96, 172, generator=seeded(3))  # 172: rows do not fill whole blocks of 64
    module = make_config(method, double_quant=double_quant).quantize_layer(w, None)
    assert isinstance(module, FourBitLinear)
    assert relative_error(w, dequantized(module, 172)) < bound
    n_blocks = -(-96 * 172 // 64)
    expected = 96 * 172 // 2 + (n_blocks + 2 * -(-n_blocks // 256) + 4 if double_quant else 4 * n_blocks)
    assert module.packed_bytes() == expected


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", [(64, 128), (33, 172), (7, 5), (172, 64)])
def test_fourbit_codes_and_absmax_equal_bitsandbytes(quant_type, shape):
    bnb_functional = pytest.importorskip("bitsandbytes.functional")
    from lowbit.formats.nf4 import unpack_nibbles

    w = torch.randn(*shape, generator=seeded(shape[0]))
    packed, state = bnb_functional.quantize_4bit(w, quant_type=quant_type, blocksize=64)
    module = make_config(quant_type, double_quant=False).quantize_layer(w, None)
    n = w.numel()
    assert torch.equal(unpack_nibbles(module.qweight, n), unpack_nibbles(packed.view(-1), n))
    assert torch.equal(module.absmax, state.absmax)
    compressed = make_config(quant_type, double_quant=True).quantize_layer(w, None)
    assert torch.equal(compressed.qweight, module.qweight)


def test_fourbit_bad_blocksize():
    with pytest.raises(LowbitError):
        make_config("nf4", blocksize=1)


def test_eetq_is_int8_weight_only():
    w = torch.randn(48, 80, generator=seeded(4))
    module = make_config("eetq").quantize_layer(w, None)
    assert type(module) is Int8Linear and module.qweight.dtype == torch.int8
    assert relative_error(w, dequantized(module, 80)) < 0.01


def test_int8_outlier_column_takes_the_float_path():
    w = torch.randn(32, 64, generator=seeded(5)) * 0.05
    x = torch.randn(9, 64, generator=seeded(6))
    x[:, 10] = 40.0  # a planted outlier column, as in LLM.int8's emergent features
    with_outliers = make_config("int8", threshold=6.0).quantize_layer(w, None)
    plain = make_config("int8", threshold=0.0).quantize_layer(w, None)
    assert isinstance(with_outliers, LLMInt8Linear) and torch.equal(with_outliers.qweight, plain.qweight)
    with_outliers.kernel_preference = plain.kernel_preference = "reference"  # exact maths; CPU kernels: test_cpu_kernels
    w_int8 = with_outliers.qweight.float() * with_outliers.scale.float()  # the int8 weights, dequantized
    exact = x @ w_int8.t()
    err_fp_path = relative_error(exact, with_outliers(x))
    err_plain = relative_error(exact, plain(x))
    assert err_fp_path < 0.01 < err_plain  # the outlier crushes the other columns' int8 steps
    # threshold 6 leaves the outlier column exact: changing it changes the output exactly linearly
    x2 = x.clone()
    x2[:, 10] = 50.0
    delta = with_outliers(x2) - with_outliers(x)
    torch.testing.assert_close(delta, 10.0 * w_int8[:, 10].expand(9, -1), rtol=1e-5, atol=1e-5)


def test_int8_threshold_zero_is_plain_int8():
    w = torch.randn(16, 32, generator=seeded(7))
    x = torch.randn(5, 32, generator=seeded(8))
    module = make_config("int8", threshold=0.0).quantize_layer(w, None)
    module.kernel_preference = "reference"  # exact maths (the CPU kernel's bf16 output: test_cpu_kernels)
    x_scale = (x.abs().amax(dim=1, keepdim=True) / 127).half().float()  # vector-wise, fp16 storage
    x_q = torch.round(x / x_scale).clamp(-127, 127)
    expected = (x_q @ module.qweight.float().t()) * x_scale * module.scale.float().t()
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_int8_kernels_agree(threshold):
    w = torch.randn(40, 96, generator=seeded(10))
    x = torch.randn(33, 96, generator=seeded(11)) * 2
    module = make_config("int8", threshold=threshold).quantize_layer(w, torch.randn(40, generator=seeded(12)))
    module.kernel_preference = "reference"
    expected = module(x)
    module.kernel_preference = "torch_int_mm"
    torch.testing.assert_close(module(x), expected, rtol=1e-6, atol=1e-6)


def test_int8_bad_threshold():
    with pytest.raises(LowbitError):
        make_config("int8", threshold=-1.0)


@pytest.mark.parametrize(
    "method, options",
    [("hqq", {}), ("hqq", {"axis": 0}), ("hqq", {"quant_qparams": True}), ("int8", {}), ("nf4", {}), ("fp4", {}), ("eetq", {})],
)
def test_save_load_round_trip(tmp_path, stories, method, options):
    from lowbit.api import quantize, save
    from lowbit.io.checkpoint import load_quantized
    from tiny_models import tiny_model

    model = quantize(tiny_model("llama"), make_config(method, **options))
    tokens = torch.randint(0, 128, (1, 12), generator=seeded(9))
    expected = model(tokens).logits
    save(model, tmp_path / "q", stories.tokenizer)  # any tokenizer: loading reads one
    loaded = load_quantized(tmp_path / "q").model
    torch.testing.assert_close(loaded(tokens).logits, expected, rtol=0, atol=0)


def test_fourbit_chunking_changes_nothing():
    from lowbit.core.codebook import code_table, codebook_quantize

    w = torch.randn(37, 101, generator=seeded(13))  # 3737 values: 58 full blocks and a partial one
    whole = codebook_quantize(w, code_table("nf4"), 64)
    chunked = codebook_quantize(w, code_table("nf4"), 64, chunk_blocks=5)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


@pytest.mark.parametrize(
    "method, options",
    [("hqq", {"axis": 0}), ("hqq", {"quant_qparams": True}), ("nf4", {}), ("fp4", {"double_quant": False}), ("int8", {})],
)
def test_new_layouts_declare_their_real_buffers(method, options):
    w = torch.randn(130, 72, generator=seeded(14))  # 130 * 72 / 64 is not whole: a partial last block
    module = make_config(method, group_size=16, **options) if method == "hqq" else make_config(method, **options)
    module = module.quantize_layer(w, None)
    real = {n: (tuple(b.shape), b.dtype) for n, b in module.named_buffers() if n != "bias"}
    assert real == {n: (tuple(s), d) for n, (s, d) in module.layout.buffer_shapes().items()}
    assert module.packed_bytes() == sum(b.numel() * b.element_size() for n, b in module.named_buffers() if n != "bias")


def test_nibble_packing_round_trip_and_order():
    from lowbit.formats.nf4 import pack_nibbles, unpack_nibbles

    codes = torch.randint(0, 16, (101,), generator=seeded(15), dtype=torch.uint8)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes), 101), codes)
    assert pack_nibbles(torch.tensor([1, 2], dtype=torch.uint8)).item() == 0x12  # first code in the high nibble
