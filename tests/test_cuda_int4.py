"""The CUDA int4 tensor-core kernel (kernels/cuda_int4_mma.cu) against an fp64 reference, and its selection.

The kernel runs only on a CUDA GPU (NVRTC builds it there): those tests skip elsewhere. The shape checks,
the launch-shape choice and the selector's reasons run everywhere.
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import ptx_models
import pytest
import torch

from lowbit.core.affine import rtn_quantize
from lowbit.kernels import cuda_int4, split_counters, triton_ops
from lowbit.kernels.select import CallContext, select
from lowbit.modules import IntLinear

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="the CUDA int4 kernel needs a CUDA GPU")
DTYPES = (torch.float16, torch.bfloat16)
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _seed() -> int:
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed


def _layer(out: int, cols: int, group: int, symmetric: bool, bias: bool) -> tuple[IntLinear, torch.Tensor]:
    q = rtn_quantize(torch.randn(out, cols), 4, group, symmetric)
    layer = IntLinear.from_weights(q, torch.randn(out) if bias else None).to("cuda")
    return layer, q.dequantize().double().to("cuda")


def _check(layer, ref_w, rows, dtype, seed, config=None) -> None:
    x = torch.randn(rows, layer.in_features, device="cuda", dtype=dtype) * 3
    ref = x.double() @ ref_w.t() + (layer.bias.double() if layer.bias is not None else 0)
    torch.full((rows + 16, layer.out_features), float("nan"), device="cuda")  # unwritten outputs show as NaN
    zero = getattr(layer, "zero", None)  # symmetric layers have none
    y = cuda_int4.int4_mma_matmul(x, layer.qweight, layer.scale, zero, layer.bias, 4, layer.layout.group_size,
                                  config=config)
    assert y.dtype == dtype and y.shape == (rows, layer.out_features)
    assert torch.isfinite(y).all(), f"non-finite output rows={rows} {config} seed={seed}"
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dtype], f"rows={rows} {dtype} {config} err={err:.2e} seed={seed}"


@gpu
@pytest.mark.parametrize("cols,group,symmetric", [(4096, 128, False), (5120, 128, True), (384, 64, False),
                                                  (1056, 32, False), (2048, -1, False)])
def test_mma_kernel_matches_reference(cols, group, symmetric):
    """Every row count up to 16 (one and two 8-row fragments), fp16 and bf16, zero or the symmetric 8, with
    and without bias; K in one block (4096), in two blocks with idle warps and the fix-up (5120), in one
    warp (384), with 2- and 1-word chunks (groups of 64 and 32) and per-channel scales (group = K)."""
    seed = _seed()
    out = 16 * 37  # no multiple of the blocks' 2 or 4 tiles
    for bias in (True, False):
        layer, ref_w = _layer(out, cols, group, symmetric, bias)
        for rows in (1, 2, 3, 7, 8, 9, 16):
            for dtype in DTYPES:
                _check(layer, ref_w, rows, dtype, seed)


@gpu
@pytest.mark.parametrize("config", [{"KS": 256, "WARPS": 2, "TILES": 1}, {"KS": 512, "WARPS": 4, "TILES": 4},
                                    {"KS": 1024, "WARPS": 1, "TILES": 2}, {"KS": 256, "WARPS": 16, "TILES": 2}])
def test_mma_launch_shapes_and_splits_match_reference(config, monkeypatch):
    """Launch shapes with K split over 1 to 11 blocks, fixed up in the launch or summed on the host."""
    seed = _seed()
    layer, ref_w = _layer(16 * 21, 2816, 128, False, True)
    for rows in (1, 5, 12):
        _check(layer, ref_w, rows, torch.bfloat16, seed, config)
    monkeypatch.setattr(cuda_int4, "counters_for", lambda device, tiles: None)
    _check(layer, ref_w, 3, torch.float16, seed, config)


@gpu
def test_mma_auto_choice_opcheck_compile_and_graph_capture():
    layer, _ = _layer(16 * 64, 1024, 128, False, True)
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    assert layer.kernel(x).name == "cuda_mma"
    args = (x, layer.qweight, layer.scale, layer.zero, layer.bias, 4, 128, "mma")
    torch.library.opcheck(triton_ops.int_group_mm, args, test_utils=("test_schema", "test_faketensor"))
    eager = layer(x)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)(x)
    assert torch.allclose(compiled.float(), eager.float(), rtol=1e-2, atol=1e-2)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = layer(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.allclose(captured.float(), layer(x).float(), rtol=1e-2, atol=1e-2)


def _ctx(rows=1, cols=4096, out=4096, bits=4, group=128, dtype=torch.bfloat16, device="cuda"):
    return CallContext(torch.device(device), rows, cols, out, dtype, bits, group)


@pytest.mark.parametrize("change,reason", [
    ({"bits": 3}, "takes 4-bit codes"), ({"rows": 17}, "more than 16 rows"), ({"out": 4100}, "multiple of 16"),
    ({"cols": 4112}, "multiples of 32"), ({"group": 48}, "multiples of 32"), ({"group": 96}, "power of two"),
    ({"dtype": torch.float32}, "fp16/bf16"), ({"device": "cpu"}, "runs on CUDA devices"),
])
def test_mma_kernel_says_why_it_cannot_run(change, reason):
    ctx = _ctx(**change)
    got = cuda_int4.unavailable(ctx.device, ctx.dtype, ctx.bits, ctx.rows, ctx.in_features, ctx.out_features,
                                ctx.group_size)
    assert got is not None and reason in got
    if CUDA or ctx.device.type == "cpu":  # the other candidates ask CUDA devices for their capability
        assert select("int_group_linear", ctx, "auto").name != "cuda_mma"


@pytest.mark.parametrize("rows,cols,out,group", [(1, 4096, 14336, 128), (16, 14336, 4096, 128), (3, 384, 48, 64),
                                                 (9, 2048, 128256, -1), (1, 4096, 1024, 32)])
def test_launch_shape_choice_fits_the_kernel(rows, cols, out, group):
    """The chosen shape compiles (a slice holds whole chunks, chunks lie in one group) and covers K."""
    group = cols if group == -1 else group
    cfg = cuda_int4.choose_config(rows, cols, out, group, sms=132)
    chunk = 32 * cfg["U"]
    assert cfg["KS"] % chunk == 0 and group % chunk == 0 and cols % chunk == 0
    assert cfg["R8"] == (1 if rows <= 8 else 2)
    assert cfg["WARPS"] <= math.ceil(cols / cfg["KS"])  # no warp of the first block starts past K
    assert cfg["TILES"] in (1, 2, 4) and cfg["WARPS"] <= 16
    assert out // 16 <= split_counters.N_COUNTERS * cfg["TILES"]


def _plan_model(qweight, scale, zero, x, group: int, words: int, slice_k: int, bf16: bool) -> np.ndarray:
    """cuda_int4_mma.cu's plan on the CPU, lane by lane: each lane's words of rows g and g + 8, the magic
    pairs (shifts 8h and 8h + 4), the activation pairs (prmt 0x5410 / 0x7632), the all-ones mma for the input
    sums and the per-chunk correction, with mma.sync's fragment layouts from the PTX ISA (ptx_models)."""
    w = qweight.numpy().view(np.uint32)
    xs = x.view(torch.int16).numpy().view(np.uint16).astype(np.uint32)  # (rows, K) 16-bit patterns
    magic, offset = (0x43004300, 128.0) if bf16 else (0x64006400, 1024.0)
    ones = 0x3F803F80 if bf16 else 0x3C003C00
    rows, K = xs.shape
    chunk = 32 * words
    y = np.zeros((rows, w.shape[0]))
    tiles, frags = range(w.shape[0] // 16), range(math.ceil(rows / 8))
    for tile, k0, r in itertools.product(tiles, range(0, K, slice_k), frags):
        for kc in range(k0, min(k0 + slice_k, K), chunk):
            acc, sums = np.zeros((32, 4)), np.zeros((32, 4))
            for j, h in itertools.product(range(words), range(2)):
                a, b = [], []
                for lane in range(32):
                    g, t = divmod(lane, 4)
                    word = kc // 8 + words * t + j
                    wa, wb = int(w[tile * 16 + g, word]), int(w[tile * 16 + g + 8, word])
                    a.append([(v >> s) & 0x000F000F | magic for v, s in ((wa, 8 * h), (wb, 8 * h), (wa, 8 * h + 4),
                                                                        (wb, 8 * h + 4))])
                    m = 8 * r + g
                    k = kc + 8 * words * t + 8 * j
                    v = [0] * 4 if m >= rows else [int(xs[m, k + 2 * i]) | int(xs[m, k + 2 * i + 1]) << 16
                                                   for i in range(4)]
                    pair = (v[0], v[2]) if h == 0 else (v[1], v[3])
                    b.append([ptx_models.prmt(*pair, 0x5410), ptx_models.prmt(*pair, 0x7632)])
                acc = ptx_models.mma_m16n8k16(a, b, acc, bf16)
                sums = ptx_models.mma_m16n8k16([[ones] * 4] * 32, b, sums, bf16)
            for lane in range(32):
                g, t = divmod(lane, 4)
                for e in range(4):
                    n, m = tile * 16 + g + 8 * (e >> 1), 8 * r + 2 * t + (e & 1)
                    s = float(scale[n, kc // group])
                    z = float(zero[n, kc // group]) if zero is not None else 8.0
                    if m < rows:
                        y[m, n] += s * (acc[lane, e] - (offset + z) * sums[lane, e & 1])
    return y


@pytest.mark.parametrize("bf16,words,group,rows,symmetric", [(True, 4, 128, 3, False), (False, 2, 64, 9, True),
                                                             (True, 1, 32, 1, False)])
def test_kernel_plan_reproduces_the_product(bf16, words, group, rows, symmetric):
    """The kernel's data plan (canonical words -> mma fragments -> corrected sums) modelled on the CPU from the
    PTX ISA's definitions gives x @ W^T: the index plan is right before any GPU runs it."""
    seed = _seed()
    cols, slice_k = 256, 128
    q = rtn_quantize(torch.randn(32, cols), 4, group, symmetric)
    layer = IntLinear.from_weights(q, None)
    dtype = torch.bfloat16 if bf16 else torch.float16
    x = torch.randn(rows, cols, dtype=dtype)
    ref = x.double() @ q.dequantize().double().t()
    y = _plan_model(layer.qweight, layer.scale, getattr(layer, "zero", None), x, group, words, slice_k, bf16)
    err = np.linalg.norm(y - ref.numpy()) / np.linalg.norm(ref.numpy())
    assert err < 1e-6, f"err={err:.2e} seed={seed}"
