"""CPU kernels (kernels.cpu) against the reference path, and the selector's choices and reasons."""

from __future__ import annotations

import logging

import pytest
import torch

from lowbit.core.affine import int8_absmax, rtn_quantize
from lowbit.kernels import cpp_ops, reference
from lowbit.kernels.cpu import int4_kernel_group
from lowbit.kernels.select import CallContext, explain, select
from lowbit.modules import Int8Linear, IntLinear, LLMInt8Linear

ROWS = (1, 2, 3, 7, 16, 33)
CPU = torch.device("cpu")
# bf16 activations inside the CPU kernels: relative error ~2**-9 per element; a wrong scale/zero
# convention gives errors of order 1.
REL_TOL = 1e-2


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def int_layer(out_f: int, in_f: int, bits: int, group: int, symmetric: bool, bias: bool = True) -> IntLinear:
    gen = torch.Generator().manual_seed(bits * 1000 + in_f + out_f)
    w = torch.randn(out_f, in_f, generator=gen) + 0.3  # an offset makes zeros far from the midpoint
    b = torch.randn(out_f, generator=gen) if bias else None
    return IntLinear.from_weights(rtn_quantize(w, bits, group, symmetric), b)


def both_paths(m, x: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
    m.kernel_preference = "reference"
    ref = m(x)
    m.kernel_preference = "auto"
    return m.kernel(x).name, m(x), ref


@pytest.mark.parametrize(
    "bits,group,out_f,in_f,symmetric",
    [
        (4, 64, 48, 172, False),  # 172 = 2 full groups + a partial one
        (4, 32, 33, 100, True),  # out not a multiple of 16, in not of 32
        (4, -1, 16, 576, False),  # one group per row
        (4, 128, 40, 576, False),  # 576 = 4.5 groups of 128
        (2, 64, 7, 172, False),
        (3, 32, 24, 81, False),
        (3, 256, 17, 300, True),
        (5, 64, 19, 172, False),
        (8, 64, 33, 172, False),
        (8, 32, 16, 64, True),
        (4, 32, 1030, 64, False),  # more rows than one repacking chunk (PACK_ROWS)
        (8, 64, 1030, 96, False),
    ],
)
def test_int4_cpu_matches_reference(bits, group, out_f, in_f, symmetric):
    m = int_layer(out_f, in_f, bits, group, symmetric)
    expected = "int4_cpu" if bits <= 4 else "int4x2_cpu"
    for rows in ROWS:
        x = torch.randn(rows, in_f, generator=torch.Generator().manual_seed(rows))
        name, y, ref = both_paths(m, x)
        assert name == expected
        assert y.shape == ref.shape == (rows, out_f) and y.dtype == x.dtype
        assert rel_err(y, ref) < REL_TOL, (rows, rel_err(y, ref))


def test_int4_cpu_bf16_and_3d_inputs():
    m = int_layer(32, 96, 4, 32, False, bias=False)
    x = torch.randn(2, 5, 96).bfloat16()
    name, y, ref = both_paths(m, x)
    assert name == "int4_cpu" and y.shape == (2, 5, 32) and y.dtype == torch.bfloat16
    assert rel_err(y, ref) < 2 * REL_TOL


@pytest.mark.parametrize("out_f,in_f", [(7, 48), (33, 64), (16, 176)])
def test_int8_cpu_matches_reference(out_f, in_f):
    q, s = int8_absmax(torch.randn(out_f, in_f), dim=1)
    m = Int8Linear.from_int8(q, s, torch.randn(out_f))
    for rows in ROWS:
        name, y, ref = both_paths(m, torch.randn(rows, in_f))
        assert name == "int8_cpu"
        assert rel_err(y, ref) < REL_TOL


def needs_cpp(kernel: str) -> None:
    if kernel == "int8_cpp" and cpp_ops.build_failure():
        pytest.skip(f"C++ ops not built: {cpp_ops.build_failure()}")


def llm_int8_layer(out_f: int, in_f: int, threshold: float, bias: bool = True) -> LLMInt8Linear:
    gen = torch.Generator().manual_seed(out_f * in_f)
    q, s = int8_absmax(torch.randn(out_f, in_f, generator=gen), dim=1)
    m = LLMInt8Linear.from_int8(q, s, torch.randn(out_f, generator=gen) if bias else None)
    m.threshold = threshold
    return m


def outlier_input(rows: int, in_f: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.randn(rows, in_f, generator=torch.Generator().manual_seed(rows))  # (rows, in)
    x[:, 3] *= 20  # an outlier column: the float path when threshold is 6.0
    return x.to(dtype)


@pytest.mark.parametrize("kernel", ["int8_cpp", "int8_cpu"])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("out_f,in_f", [(7, 48), (33, 64), (16, 176)])
def test_llm_int8_cpu_matches_reference(out_f, in_f, threshold, kernel):
    needs_cpp(kernel)
    m = llm_int8_layer(out_f, in_f, threshold)
    for rows in ROWS:
        x = outlier_input(rows, in_f)
        m.kernel_preference = "reference"
        ref = m(x)
        m.kernel_preference = kernel
        assert m.kernel(x).name == kernel
        assert rel_err(m(x), ref) < REL_TOL, (rows, rel_err(m(x), ref))


def test_llm_int8_auto_takes_the_cpp_op():
    needs_cpp("int8_cpp")
    assert select("llm_int8_linear", CallContext(CPU, 1, 64, 16)).name == "int8_cpp"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threshold,bias", [(0.0, True), (0.0, False), (6.0, True)])
def test_int8_cpp_equals_eager_int8_cpu(dtype, threshold, bias):
    """The C++ op does the eager path's arithmetic in the same order: equal bit for bit."""
    needs_cpp("int8_cpp")
    m = llm_int8_layer(40, 96, threshold, bias)
    for rows in ROWS:
        x = outlier_input(rows, 96, dtype)
        x[0] = 0  # an all-zero row: the smallest scale
        if rows > 1:
            x[1, 5] = 1e7  # a row whose scale saturates at fp16's max (inf in an fp16 input)
        outputs = []
        for kernel in ("int8_cpp", "int8_cpu"):
            m.kernel_preference = kernel
            outputs.append(m(x))
        assert outputs[0].dtype == dtype
        torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_int8_cpp_falls_back_with_a_reason(monkeypatch):
    monkeypatch.setattr(cpp_ops, "build_failure", lambda: "no C++ compiler (c++) on PATH")
    ctx = CallContext(CPU, 1, 64, 16)
    assert dict(explain("llm_int8_linear", ctx))["int8_cpp"] == "no C++ compiler (c++) on PATH"
    assert select("llm_int8_linear", ctx).name == "int8_cpu"
    m = llm_int8_layer(16, 64, 0.0)
    m.kernel_preference = "int8_cpp"  # named but unable: the selector's auto choice, under its own name
    assert m.kernel(torch.randn(1, 64)).name == "int8_cpu"


@pytest.mark.parametrize("env,reason", [({"CXX": "/nonexistent/c++"}, "no C++ compiler"), ({"LOWBIT_NO_CPP": "1"}, "LOWBIT_NO_CPP")])
def test_cpp_build_failure_is_logged(monkeypatch, caplog, env, reason):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level(logging.WARNING, logger="lowbit.kernels.cpp_ops"):
        assert reason in cpp_ops.build_failure.__wrapped__()
    assert reason in caplog.text and "eager int8_cpu path" in caplog.text


def test_w8a8_int_mm_matches_emulated():
    gen = torch.Generator().manual_seed(0)
    w_q = torch.randint(-127, 128, (33, 100), generator=gen, dtype=torch.int8)
    w_s = torch.rand(33, 1, generator=gen) / 100
    for rows in ROWS:
        x_q = torch.randint(-127, 128, (rows, 100), generator=gen, dtype=torch.int8)
        x_s = torch.tensor([0.02])
        ctx = CallContext(CPU, rows, 100, 33)
        assert select("w8a8_linear", ctx).name == "torch_int_mm"
        fast = reference.w8a8_linear_int_mm(x_q, x_s, w_q, w_s)
        torch.testing.assert_close(fast, reference.w8a8_linear_emulated(x_q, x_s, w_q, w_s))


def test_selector_reports_reasons():
    ctx = CallContext(CPU, 1, 172, 48, bits=4, group_size=16)
    reasons = dict(explain("int_group_linear", ctx))
    assert "not a multiple of 32" in reasons["int4_cpu"]
    assert reasons["reference"] is None
    assert select("int_group_linear", ctx).name == "reference"
    ctx8 = CallContext(CPU, 1, 172, 48, bits=8, group_size=64)
    assert "two planes" in dict(explain("int_group_linear", ctx8))["int4_cpu"]
    assert select("int_group_linear", ctx8).name == "int4x2_cpu"
    meta = CallContext(torch.device("meta"), 1, 64, 16, bits=4, group_size=32)
    assert "input is on meta" in dict(explain("int_group_linear", meta))["int4_cpu"]
    odd = CallContext(CPU, 1, 33, 16)
    assert "not a multiple of 16" in dict(explain("int8_weight_linear", odd))["int8_cpu"]


def test_kernel_group_mapping():
    assert int4_kernel_group(64, 172) == 64
    assert int4_kernel_group(192, 576) == 64  # 192 = 3 kernel groups of 64
    assert int4_kernel_group(576, 576) == 64  # one group per row: 576 is 9 * 64
    assert int4_kernel_group(172, 172) == 64  # one group, padded to 192
    assert int4_kernel_group(48, 172) is None


def test_prepared_layout_is_cached_and_dropped_on_move():
    m = int_layer(32, 128, 4, 64, False)
    x = torch.randn(1, 128)
    m(x)
    assert m.kernel_cache_bytes() > 0
    packed = m._kernel_cache["int4_cpu"][1]
    m(x)
    assert m._kernel_cache["int4_cpu"][1] is packed  # repacked once, not per call
    m.to(torch.float32)
    assert m.kernel_cache_bytes() == 0
    assert "int4_cpu" not in m.state_dict() and set(m.state_dict()) == {"qweight", "scale", "zero", "bias"}
