"""The selector: preferences, families, capability vs speed reasons, and the one-line errors."""

from __future__ import annotations

import pytest
import torch

from lowbit.core.affine import rtn_quantize
from lowbit.errors import LowbitError
from lowbit.kernels.select import CallContext, check_preference, select
from lowbit.modules import IntLinear, set_kernel_preference

CPU = torch.device("cpu")


def test_cpu_without_interpreter_takes_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ctx = CallContext(CPU, 1, 64, 32, torch.float16, 4)
    assert select("int_group_linear", ctx, "auto").name == "reference"
    assert select("int_group_linear", ctx, "triton").name == "reference"  # falls back, logged


def test_unsupported_bits_and_dtypes_fall_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    assert select("int_group_linear", CallContext(CPU, 1, 64, 32, torch.float16, 5), "triton").name == "reference"
    assert select("int_group_linear", CallContext(CPU, 1, 64, 32, torch.float32, 4), "triton").name == "reference"
    assert select("int8_weight_linear", CallContext(CPU, 1, 66, 32, torch.float16), "triton").name == "reference"
    assert select("int_group_linear", CallContext(CPU, 1, 64, 32, torch.float16, 4), "triton").name == "triton_tc"
    assert select("int_group_linear", CallContext(CPU, 9, 64, 32, torch.float16, 4), "triton_tc").name == "triton_tc"


def test_unknown_preference_is_one_line_error():
    with pytest.raises(LowbitError, match="unknown kernel preference"):
        check_preference("cuda")
    with pytest.raises(LowbitError, match="no kernel"):
        select("w8a8_linear", CallContext(CPU, 1, 8, 8), "triton_tc")


def test_set_kernel_preference_reaches_every_layer():
    layer = IntLinear.from_weights(rtn_quantize(torch.randn(8, 16), 4, 8, False), None)
    model = torch.nn.Sequential(layer, torch.nn.ReLU())
    assert set_kernel_preference(model, "reference") == 1 and layer.kernel_preference == "reference"
    with pytest.raises(LowbitError):
        set_kernel_preference(model, "fast")


def test_reported_kernel_is_the_one_a_call_selects(monkeypatch):
    """kernel_summary without a dtype reports for the model's own activation dtype (bf16 here: a Triton kernel
    under the interpreter), the kernel a real call of that dtype selects, not the float32-only reference."""
    from lowbit.modules.plan import kernel_summary

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    layer = IntLinear.from_weights(rtn_quantize(torch.randn(32, 64), 4, 32, False), None)

    class Model(torch.nn.Sequential):
        dtype = torch.bfloat16  # as transformers' PreTrainedModel.dtype

    model = Model(layer.to(torch.bfloat16))
    chosen = layer.kernel(torch.randn(1, 64, dtype=torch.bfloat16)).name
    assert chosen.startswith("triton")
    assert kernel_summary(model, rows=1) == {chosen: 1}


def test_auto_does_not_probe_a_kernel_it_would_not_take(monkeypatch):
    """Auto checks the cheap "another kernel is faster" reasons before a kernel's availability, whose probe
    may build it (cuda_mma compiles a specialization); naming the kernel still probes it."""
    from lowbit.kernels import select as select_module

    def probe(_ctx):
        raise AssertionError("availability probed")

    slow = select_module.Candidate("slow_kernel", None, probe, lambda ctx: "another kernel is faster")
    reference = select_module.Candidate("reference", None, select_module.always)
    monkeypatch.setitem(select_module._CANDIDATES, "probe_op", (slow, reference))
    ctx = CallContext(CPU, 1, 64, 32, torch.float16, 4)
    assert select("probe_op", ctx, "auto").name == "reference"
    with pytest.raises(AssertionError, match="probed"):
        select("probe_op", ctx, "slow_kernel")
