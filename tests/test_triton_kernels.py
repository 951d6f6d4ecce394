"""Triton kernels vs an fp64 reference over awkward shapes, fresh random inputs each run.

On a CUDA machine they run compiled at larger sizes; elsewhere under Triton's interpreter
(TRITON_INTERPRET=1) at small sizes. Skipped when Triton is not importable.
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:  # Triton decorates its own language helpers at import: the interpreter must be on by then
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")
if not CUDA:  # back off again, so that other test modules keep the reference path on the CPU
    os.environ.pop("TRITON_INTERPRET") if _saved is None else os.environ.update(TRITON_INTERPRET=_saved)

from lowbit.core.affine import int8_absmax, rtn_quantize  # noqa: E402
from lowbit.kernels import reference, triton_ops  # noqa: E402
from lowbit.modules import Int8Linear, IntLinear, W8A8Linear  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
IN, OUT = (2100, 333) if CUDA else (200, 37)  # not multiples of any block or of the group size
ROWS = (1, 2, 3, 7, 16, 33, 128)
DTYPES = (torch.float16, torch.bfloat16) if CUDA else (torch.float16,)  # the interpreter's bf16 dot is wrong
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _seed() -> int:
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(y).all(), "non-finite output (unwritten or wrong)"
    return ((y.double() - ref).norm() / ref.norm()).item()


def _poison(rows: int, cols: int) -> None:
    """Leave NaNs in the block the caching allocator hands out next, so unwritten outputs show."""
    if CUDA:
        torch.full((rows, cols), float("nan"), device=DEVICE, dtype=torch.float32)


def _int_layer(bits: int, group: int, symmetric: bool, bias: bool = True) -> tuple[IntLinear, torch.Tensor]:
    w = torch.randn(OUT, IN)
    q = rtn_quantize(w, bits, group, symmetric)
    b = torch.randn(OUT) if bias else None
    layer = IntLinear.from_weights(q, b).to(DEVICE)
    ref_w = q.dequantize().double().to(DEVICE)  # (out, in)
    return layer, ref_w


def _check_int(layer: IntLinear, ref_w: torch.Tensor, rows: int, dtype: torch.dtype, seed: int) -> str:
    x = torch.randn(rows, IN, device=DEVICE, dtype=dtype)
    ref = x.double() @ ref_w.t() + (layer.bias.double() if layer.bias is not None else 0)
    _poison(rows, OUT)
    kernel = layer.kernel(x).name
    y = layer(x)
    assert y.dtype == dtype and y.shape == (rows, OUT)
    err = _rel_err(y, ref)
    assert err < TOL[dtype], f"{kernel} rows={rows} err={err:.2e} seed={seed}"
    return kernel


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group,symmetric", [(64, False), (50, False), (-1, True)])
def test_int_group_kernels_match_reference(bits, group, symmetric):
    seed = _seed()
    layer, ref_w = _int_layer(bits, group, symmetric)
    mv_fits = group != 50  # the matrix-vector kernel needs K tiles inside one group
    for kernel in ("triton_mv", "triton_tc"):
        layer.kernel_preference = kernel
        for rows in (1, 7, 33):
            for dtype in DTYPES:
                ran = _check_int(layer, ref_w, rows, dtype, seed)
                assert ran == (kernel if mv_fits else "triton_tc")


@pytest.mark.parametrize("rows", ROWS)
def test_int4_every_row_count_with_auto_choice(rows):
    seed = _seed()
    layer, ref_w = _int_layer(4, 128, False, bias=rows % 2 == 0)
    layer.kernel_preference = "triton"
    for dtype in DTYPES:
        kernel = _check_int(layer, ref_w, rows, dtype, seed)
        assert kernel == ("triton_mv" if rows <= triton_ops.GEMV_MAX_ROWS else "triton_tc")


@pytest.mark.parametrize("rows", [1, 3, 16, 33])
def test_int8_weight_only_matches_reference(rows):
    seed = _seed()
    w = torch.randn(OUT, IN + 4 - IN % 4)  # whole int32 words per row
    q, s = int8_absmax(w)
    layer = Int8Linear.from_int8(q, s, torch.randn(OUT)).to(DEVICE)
    layer.kernel_preference = "triton"
    for dtype in DTYPES:
        x = torch.randn(rows, w.shape[1], device=DEVICE, dtype=dtype)
        ref = reference.int8_weight_linear(x.double(), layer.qweight, layer.scale, layer.bias.double())
        _poison(rows, OUT)
        assert layer.kernel(x).name == ("triton_mv" if rows <= triton_ops.GEMV_MAX_ROWS else "triton_tc")
        err = _rel_err(layer(x), ref)
        assert err < TOL[dtype], f"rows={rows} err={err:.2e} seed={seed}"


@pytest.mark.parametrize("rows", [1, 7, 33])
def test_w8a8_kernel_matches_emulation_exactly(rows):
    seed = _seed()
    w = torch.randn(OUT, IN)
    q, s = int8_absmax(w)
    layer = W8A8Linear.from_calibrated(q, s, 0.03, None).to(DEVICE)
    x = torch.randn(rows, IN, device=DEVICE, dtype=torch.float16)
    layer.kernel_preference = "reference"
    ref = layer(x)
    layer.kernel_preference = "triton"
    assert layer.kernel(x).name == "triton"
    y = layer(x)
    assert torch.isfinite(y).all()
    err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
    assert err < 1e-3, f"rows={rows} err={err:.2e} seed={seed}"  # the same integers: fp16 output rounding only


def test_custom_ops_pass_opcheck():
    """The fake implementations agree with the real ones (what torch.compile and CUDA graphs rely on)."""
    w = torch.randn(OUT, IN)
    q = rtn_quantize(w, 4, 64, False)
    layer = IntLinear.from_weights(q, None).to(DEVICE)
    x = torch.randn(3, IN, device=DEVICE, dtype=torch.float16)
    args = (x, layer.qweight, layer.scale, layer.zero, None, 4, 64)
    torch.library.opcheck(triton_ops.int_group_mm, args, test_utils=("test_schema", "test_faketensor"))
    q8, s8 = int8_absmax(w[:, :196])
    args8 = (x[:, :196].contiguous(), q8.to(DEVICE), s8.to(DEVICE), None)
    for op, op_args in ((triton_ops.int8_weight_mm, args8), (triton_ops.int8_weight_mm, (*args8, "mv")),
                        (triton_ops.int_group_mm, (*args, "mv"))):
        torch.library.opcheck(op, op_args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(not CUDA, reason="torch.compile and CUDA graphs of the kernels need a CUDA GPU")
def test_torch_compile_and_cuda_graph_capture():
    layer, ref_w = _int_layer(4, 128, False)
    layer.kernel_preference = "triton"
    for rows in (3, 16):  # the matrix-vector and the tensor-core kernel
        _compile_and_capture(layer, torch.randn(rows, IN, device=DEVICE, dtype=torch.bfloat16))


def _compile_and_capture(layer, x):
    eager = layer(x)
    compiled = torch.compile(layer)(x)
    assert torch.allclose(compiled.float(), eager.float(), rtol=1e-2, atol=1e-2)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = layer(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.allclose(captured.float(), layer(x).float(), rtol=1e-2, atol=1e-2)
