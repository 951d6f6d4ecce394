"""The CUDA tensor-core kernels (kernels/cuda_mma.cu) against an fp64 reference, and their selection.

The kernels run only on a CUDA GPU (NVRTC builds them there): those tests skip elsewhere. The kernels' plan
(modelled from the PTX ISA), the shape checks, the launch-shape choice and the selector's reasons run
everywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import math
import re

import numpy as np
import ptx_models
import pytest
import torch
from kernel_checks import compile_and_capture, fresh_seed, sm90_usage

from lowbit.core.affine import int8_absmax, rtn_quantize
from lowbit.formats.nf4 import FourBitLayout
from lowbit.formats.word_tiles import row_order
from lowbit.kernels import cuda_mma, nvrtc, reference, split_counters, triton_ops
from lowbit.kernels.select import CallContext, select
from lowbit.modules import FourBitLinear, Int8Linear, IntLinear

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="the CUDA tensor-core kernels need a CUDA GPU")
DTYPES = (torch.float16, torch.bfloat16)
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _layer(out: int, cols: int, group: int, symmetric: bool, bias: bool, bits: int = 4):
    """(layer on the GPU, its fp64 weights, call(x, config)): int_group (bits 4, 8) or int8 weight-only
    (bits "int8")."""
    b = torch.randn(out) if bias else None
    if bits == "int8":
        q, s = int8_absmax(torch.randn(out, cols))
        layer = Int8Linear.from_int8(q, s, b).to("cuda")
        ref_w = (q.double() * s.double()).to("cuda")
        return layer, ref_w, lambda x, cfg: cuda_mma.int8_weight_mma(x, layer.qweight, layer.scale, layer.bias, cfg)
    q = rtn_quantize(torch.randn(out, cols), bits, group, symmetric)
    layer = IntLinear.from_weights(q, b).to("cuda")
    zero = getattr(layer, "zero", None)  # symmetric layers have none
    call = (lambda x, cfg: cuda_mma.mma_matmul(x, layer.qweight, layer.scale, zero, layer.bias, bits,
                                               layer.layout.group_size, config=cfg))
    return layer, q.dequantize().double().to("cuda"), call


def _check(layer, ref_w, call, rows, dtype, seed, config=None) -> None:
    x = torch.randn(rows, layer.in_features, device="cuda", dtype=dtype) * 3
    ref = x.double() @ ref_w.t() + (layer.bias.double() if layer.bias is not None else 0)
    torch.full((rows + 16, layer.out_features), float("nan"), device="cuda")  # unwritten outputs show as NaN
    y = call(x, config)
    assert y.dtype == dtype and y.shape == (rows, layer.out_features)
    assert torch.isfinite(y).all(), f"non-finite output rows={rows} {config} seed={seed}"
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dtype], f"rows={rows} {dtype} {config} err={err:.2e} seed={seed}"


@gpu
@pytest.mark.parametrize("bits,cols,group,symmetric", [
    (4, 4096, 128, False), (4, 5120, 128, True), (4, 384, 64, False), (4, 1056, 32, False), (4, 2048, -1, False),
    (8, 4096, 128, False), (8, 2048, -1, True), ("int8", 4096, -1, True), ("int8", 1008, -1, True),
    (2, 4096, 128, False), (2, 1088, 64, True), (3, 4096, 128, False), (3, 1152, 128, True), (3, 2048, -1, False),
])
@pytest.mark.parametrize("smem_x", [0, 1])
def test_mma_kernel_matches_reference(bits, cols, group, symmetric, smem_x):
    """Every row count up to 16 (one and two 8-row fragments), fp16 and bf16, zero or the symmetric 8 / 128,
    with and without bias; int4 with K in one block (4096), in two blocks with idle warps and the fix-up
    (5120), in one warp (384), with 2- and 1-word chunks (groups of 64 and 32) and per-channel scales; 8-bit
    group-wise codes and int8 weight-only (signed codes, one scale a row; 1008 inputs: 1-word chunks); 2-bit
    codes (1088 inputs: 1-word chunks); 3-bit codes (GPTQ's stream, PLAN3; 1152 inputs: K in 9 chunks).
    Activation fragments in registers and in shared memory (SMEM_X)."""
    seed = fresh_seed()
    out = 16 * 37  # no multiple of the blocks' 2 or 4 tiles
    for bias in (True, False):
        layer, ref_w, call = _layer(out, cols, group, symmetric, bias, bits)
        for rows in (1, 2, 3, 7, 8, 9, 16):
            for dtype in DTYPES:
                _check(layer, ref_w, call, rows, dtype, seed, {"SMEM_X": smem_x})


@gpu
@pytest.mark.parametrize("config", [{"KS": 256, "WARPS": 2, "TILES": 1}, {"KS": 512, "WARPS": 4, "TILES": 4},
                                    {"KS": 1024, "WARPS": 1, "TILES": 2}, {"KS": 256, "WARPS": 16, "TILES": 2},
                                    {"KS": 512, "WARPS": 8, "TILES": 1, "SMEM_X": 1},
                                    {"KS": 256, "WARPS": 4, "TILES": 8, "DEPTH": 0, "SMEM_X": 1, "MIN_BLOCKS": 4},
                                    {"KS": 512, "WARPS": 4, "TILES": 4, "DEPTH": 1, "EARLY": 1},
                                    {"KS": 256, "WARPS": 8, "TILES": 2, "DEPTH": 0, "SMEM_X": 1, "EARLY": 1},
                                    {"KS": 256, "WARPS": 8, "TILES": 4, "SMEM_X": 1, "ASYNC": 2},
                                    {"KS": 512, "WARPS": 4, "TILES": 5, "ASYNC": 3},
                                    {"KS": 256, "WARPS": 8, "TILES": 1, "SMEM_X": 1, "ASYNC": 3}])
@pytest.mark.parametrize("bits", [2, 3, 4, "int8"])
def test_mma_launch_shapes_and_splits_match_reference(config, bits, monkeypatch):
    """Launch shapes with K split over 1 to 11 blocks, fixed up in the launch or summed on the host; the first
    tiles loaded before the activations (EARLY) with and without tiles in flight; the words through shared-memory
    rings (ASYNC) of 2 and 3 tiles, over 4 and 5 tiles a block and past a block's one tile."""
    seed = fresh_seed()
    layer, ref_w, call = _layer(16 * 21, 2816, 128, False, True, bits)
    for rows in (1, 5, 12):
        _check(layer, ref_w, call, rows, torch.bfloat16, seed, config)
    monkeypatch.setattr(cuda_mma, "counters_for", lambda device, tiles: None)
    _check(layer, ref_w, call, 3, torch.float16, seed, config)


@gpu
@pytest.mark.parametrize("config", [{"KS": 256, "WARPS": 6, "TILES": 4, "DEPTH": 0, "SMEM_X": 1, "CLUSTER": 2},
                                    {"KS": 256, "WARPS": 3, "TILES": 1, "CLUSTER": 4},
                                    {"KS": 256, "WARPS": 2, "TILES": 8, "DEPTH": 0, "SMEM_X": 1, "CLUSTER": 6},
                                    {"KS": 256, "WARPS": 8, "TILES": 4, "DEPTH": 1, "CLUSTER": 2}])
@pytest.mark.parametrize("bits", [2, 3, 4, "int8"])
@pytest.mark.parametrize("programmatic", [True, False])
def test_cluster_fixup_matches_reference(config, bits, programmatic):
    """K split over 2 to 6 blocks that add up their sums in one thread-block cluster (CLUSTER; K = 2816 in 11
    slices of 256, so the last block has idle warps; 8-tile blocks past the layer's 21 tiles), up to 16 rows, with
    programmatic launches and in line."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("thread-block clusters need compute capability 9.0")
    seed = fresh_seed()
    layer, ref_w, call = _layer(16 * 21, 2816, 128, False, True, bits)
    with contextlib.nullcontext() if programmatic else nvrtc.serialized_launches():
        for rows in (1, 5, 12, 16):
            _check(layer, ref_w, call, rows, torch.bfloat16, seed, config)


@pytest.mark.parametrize("cluster,k_blocks,fix", [(2, 3, "must equal"), (9, 9, "at most 8")])
def test_cluster_must_be_the_launchs_k_blocks(cluster, k_blocks, fix):
    with pytest.raises(ValueError, match=fix):
        cuda_mma._check_cluster(0, cluster, k_blocks)


def test_cluster_build_keeps_partials_in_shared_memory():
    """A CLUSTER build (sm_90 PTX) is launched as clusters of the K blocks and adds them up through DSMEM: no
    global partials, no arrival counter."""
    spec = cuda_mma.specialization(4, 1, 14336, 4096, 128, 132) | {"TILED": 1, "CLUSTER": 2}
    try:
        ptx = cuda_mma.ptx_offline(spec)
    except ImportError as err:
        pytest.skip(str(err))
    assert ".reqnctapercluster 1, 2, 1" in ptx
    assert "ld.shared::cluster.f32" in ptx and ptx.count("barrier.cluster.wait") == 2
    assert "atom.global" not in ptx and "ld.global.cg" not in ptx


def test_tile_words_puts_a_warps_chunk_words_in_a_row():
    """tile_words' order against the kernel's TILED addressing: with u = U x UNIT_WORDS words a lane and row,
    lane 4 g + t of row half h reads, for chunk c, words 4 u c + u t .. of row 16 tile + 8 h + g at
    64 u c + 32 u h + u (4 g + t) of its tile's block (3-bit codes: one unit of 3 words, chunks of 12)."""
    for bits, cols, group in [(4, 4096, 128), (2, 2816, 128), (8, 1024, 1024), (4, 1056, 32), (3, 1152, 128)]:
        out, words = 48, cols * bits // 32
        q = torch.randint(-2**31, 2**31 - 1, (out, words), dtype=torch.int32)
        u = cuda_mma.words_per_thread(bits, cols, group) * cuda_mma.unit_words(bits)
        tiled = cuda_mma.tile_words(q, bits, group).flatten()
        tile, c, h, g, t, j = np.meshgrid(*map(np.arange, (out // 16, words // (4 * u), 2, 8, 4, u)), indexing="ij")
        at = torch.from_numpy((tile * 16 * words + c * 64 * u + h * 32 * u + (4 * g + t) * u + j).ravel())
        row, word = torch.from_numpy((16 * tile + 8 * h + g).ravel()), torch.from_numpy((4 * u * c + u * t + j).ravel())
        assert torch.equal(tiled[at], q[row, word]), (bits, cols, group)
        assert torch.equal(tiled.sort().values, q.flatten().sort().values)


@gpu
@pytest.mark.parametrize("config", [{}, {"TILED": 1, "ASYNC": 2}, {"KS": 512, "WARPS": 4, "TILES": 5, "DEPTH": 1},
                                    {"KS": 256, "WARPS": 16, "TILES": 4, "DEPTH": 0, "SMEM_X": 1}])
@pytest.mark.parametrize("bits", [2, 3, 4, "int8"])
def test_tiled_words_match_reference(config, bits):
    """TILED launches over tile_words' order (K in one block and split, tiles past the layer, two fragments); an
    int_group or int8 weight-only layer moved to CUDA already holds that order."""
    seed = fresh_seed()
    layer, ref_w, _ = _layer(16 * 21, 2816, 128, False, True, bits)
    width, group = (8, 2816) if bits == "int8" else (bits, 128)
    words = cuda_mma.tile_words(row_order(layer.qweight).view(torch.int32), width, group)
    assert torch.equal(layer.qweight.view(torch.int32), words)
    zero = getattr(layer, "zero", None)
    call = (lambda x, cfg: cuda_mma.mma_matmul(x, words, layer.scale, zero, layer.bias, width, group,
                                               signed8=bits == "int8", config=cfg | {"TILED": 1}))
    for rows in (1, 5, 12):
        _check(layer, ref_w, call, rows, torch.bfloat16, seed, config)


@gpu
@pytest.mark.parametrize("quant_type,double_quant,blocksize,cols", [
    ("nf4", True, 64, 4096), ("nf4", False, 64, 1088), ("fp4", True, 128, 2048), ("nf4", True, 32, 1056),
])
@pytest.mark.parametrize("shape", [{"SMEM_X": 0}, {"SMEM_X": 1}, {"SMEM_X": 0, "EARLY": 1}, {"SMEM_X": 1, "ASYNC": 2}])
@pytest.mark.parametrize("order", ["tiles", "rows"])
def test_fourbit_mma_matches_reference(quant_type, double_quant, blocksize, cols, shape, order):
    """NF4/FP4 through the byte-pair table: both tables, plain and double-quantized absmax, blocks of 32 to 128
    (1-, 2- and 4-word chunks), K in one block and over several, every row count to 16, fp16 and bf16, with
    bias, the first tiles loaded before the activations or after, or through shared-memory rings (ASYNC), the words
    in tile order (as .to("cuda") leaves them) or row order, by name through the module and its op."""
    seed = fresh_seed()
    out = 16 * 37
    layer = FourBitLinear.from_float(torch.randn(out, cols), torch.randn(out),
                                     FourBitLayout(out, cols, quant_type, blocksize, double_quant)).to("cuda")
    assert layer.layout.tile_chunk == cuda_mma.tile_chunk(4, cols, out, blocksize) > 0
    if order == "rows":
        layer.order_words(0)
    args = (*layer.weight_args(), layer.code_table("cuda"), blocksize, out)
    layer.kernel_preference = "cuda_mma"
    for rows, dtype in itertools.product((1, 2, 7, 8, 9, 16), DTYPES):
        x = torch.randn(rows, cols, device="cuda", dtype=dtype) * 3
        ref = reference.fourbit_linear(x.double(), *args, layer.bias.double())
        y = cuda_mma.fourbit_mma(x, *args, layer.bias, config=shape)
        assert y.dtype == dtype and torch.isfinite(y).all(), f"{quant_type} rows={rows} seed={seed}"
        err = ((y.double() - ref).norm() / ref.norm()).item()
        assert err < TOL[dtype], f"{quant_type} dq={double_quant} B={blocksize} rows={rows} {dtype} err={err:.2e}"
        assert layer.kernel(x).name == "cuda_mma"
        assert torch.equal(layer(x), cuda_mma.fourbit_mma(x, *args, layer.bias))


@gpu
@pytest.mark.parametrize("bits,rows,cols,out,feature", [
    (4, 16, 4096, 14336, "MIN_BLOCKS"), (2, 9, 4096, 14336, "MIN_BLOCKS"), (4, 16, 4096, 4096, "CLUSTER"),
    (4, 1, 14336, 4096, "CLUSTER"), (4, 1, 4096, 1024, "FEW_TILES"), (2, 1, 4096, 1024, "FEW_TILES"),
    ("int8", 1, 4096, 4096, "ONE_WAVE"), ("int8", 1, 4096, 14336, "ONE_WAVE"), ("nf4", 1, 4096, 4096, "ONE_WAVE"),
    ("nf4", 1, 4096, 14336, "ONE_WAVE"), ("nf4", 1, 14336, 4096, "L2_AHEAD"), (4, 1, 4096, 4096, "ONE_WAVE"),
    (3, 1, 4096, 4096, "ONE_WAVE"), (2, 1, 4096, 4096, "ONE_WAVE"), (2, 16, 14336, 4096, "ONE_BLOCK"),
    (4, 9, 4096, 1024, "ONE_BLOCK")])
def test_llama_sized_launch_shapes_match_reference(bits, rows, cols, out, feature):
    """The launch shapes auto picks only for large layers on this GPU (kern28: the cluster fix-up, two short-slice
    blocks a multiprocessor, FEW_TILES, the one-wave 32-warp shape, NF4's L2 prefetch; kern31: the integer codes'
    one-wave shape, int2's and int4's short slices built as one block a multiprocessor) against an fp64 reference at
    Llama-3-8B sizes, with fresh random weights; the test first checks that the shape it means to cover is the one
    the specialization takes on this device."""
    seed = fresh_seed()
    sms = cuda_mma.nvrtc.multiprocessors(0)
    clusters = cuda_mma.nvrtc.clusters(0)
    if feature == "CLUSTER" and not clusters:
        pytest.skip("thread-block clusters need compute capability 9.0")
    if bits == "nf4":
        layer = FourBitLinear.from_float(torch.randn(out, cols), torch.randn(out),
                                         FourBitLayout(out, cols, "nf4", 64, True)).to("cuda")
        args = (*layer.weight_args(), layer.code_table("cuda"), 64, out)
        spec = cuda_mma.specialization(4, rows, cols, out, 64, sms, has_zero=False, config={"LUT4": 1, "DQ": 1},
                                       clusters=clusters)
        call = (lambda x, cfg: cuda_mma.fourbit_mma(x, *args, layer.bias, config=cfg))
        ref_of = (lambda x: reference.fourbit_linear(x.double(), *args, layer.bias.double()))
    else:
        width, group = (8, cols) if bits == "int8" else (bits, 128)
        layer, ref_w, call = _layer(out, cols, 128 if bits != "int8" else -1, False, True, bits)
        spec = cuda_mma.specialization(width, rows, cols, out, group, sms, has_zero=bits != "int8",
                                       signed8=bits == "int8", clusters=clusters)
        ref_of = (lambda x: x.double() @ ref_w.t() + layer.bias.double())
    covered = {"MIN_BLOCKS": spec.get("MIN_BLOCKS") == 2 and spec["DEPTH"] == 0, "CLUSTER": spec.get("CLUSTER") == 2,
               "FEW_TILES": (spec["KS"], spec["TILES"]) == (128, 1), "L2_AHEAD": spec.get("L2_AHEAD") == 1,
               "ONE_WAVE": spec["KS"] == 128 and spec["TILES"] > 1, "ONE_BLOCK": spec.get("MIN_BLOCKS") == 1}[feature]
    if not covered:
        pytest.skip(f"this GPU's {sms} multiprocessors give another shape: {spec}")
    for dtype in DTYPES:
        x = torch.randn(rows, cols, device="cuda", dtype=dtype) * 3
        ref = ref_of(x)
        y = call(x, None)
        err = ((y.double() - ref).norm() / ref.norm()).item()
        assert torch.isfinite(y).all() and err < TOL[dtype], f"{bits} {rows}x{cols}x{out} {dtype} {err:.2e} {seed}"


@gpu
def test_mma_by_name_opcheck_compile_and_graph_capture():
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    int4, _, _ = _layer(16 * 64, 1024, 128, False, True)
    int8, _, _ = _layer(16 * 64, 1024, -1, True, True, "int8")
    nf4 = FourBitLinear.from_float(torch.randn(16 * 64, 1024), torch.randn(16 * 64),
                                   FourBitLayout(16 * 64, 1024, "nf4", 64, True)).to("cuda")
    ops = {int4: (triton_ops.int_group_mm, (x, int4.qweight, int4.scale, int4.zero, int4.bias, 4, 128, "mma")),
           int8: (triton_ops.int8_weight_mm, (x, int8.qweight, int8.scale, int8.bias, "mma")),
           nf4: (triton_ops.fourbit_mm, (x, *nf4.weight_args(), nf4.code_table("cuda"), 64, 16 * 64, nf4.bias, "mma"))}
    for layer, (op, args) in ops.items():
        layer.kernel_preference = "cuda_mma"
        assert layer.kernel(x).name == "cuda_mma"
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
        compile_and_capture(layer, x)


@pytest.mark.parametrize("bits,table,prefetch", [(4, False, 1), (3, False, 0), (2, False, 0), (8, False, 0), (4, True, 0)])
def test_launch_mode_prefetches_where_timed_faster(bits, table, prefetch):
    """On an H100 every launch is programmatic; 4-bit codes prefetch their first tile into L2 before waiting for the
    kernel ahead, the other formats none (slower with it, kern20 runs 2-5); elsewhere launches wait in line."""
    assert cuda_mma.launch_mode(bits, table, True) == {"PDL": 1, "PREFETCH": prefetch}
    assert cuda_mma.launch_mode(bits, table, False) == {"PDL": 0}


def test_programmatic_launch_config_mirrors_cuda_h():
    """nvrtc.launch hands cuLaunchKernelEx ctypes mirrors of cuda.h's CUlaunchConfig (56 bytes: three grid and three
    block sizes, the shared bytes, then the stream at 32, the attributes at 40 and their count at 48) and
    CUlaunchAttribute (72 bytes: the id, then its 64-byte value at 8)."""
    config, attribute = cuda_mma.nvrtc._LaunchConfig, cuda_mma.nvrtc._Attribute
    assert ctypes.sizeof(config) == 56 and ctypes.sizeof(attribute) == 72
    assert (config.stream.offset, config.attrs.offset, config.num_attrs.offset) == (32, 40, 48)
    assert attribute.value.offset == 8


@pytest.mark.parametrize("pdl,allowed,in_line", [(True, False, True), (False, True, True), (True, True, False)])
def test_launch_is_programmatic_only_where_the_device_allows(monkeypatch, pdl, allowed, in_line):
    """One rule for every CUDA kernel: a PDL build launches programmatically only where nvrtc.programmatic allows it
    (below sm_90, under LOWBIT_PDL=0 or serialized_launches() it launches in line); a build without PDL always in
    line."""
    calls = []
    monkeypatch.setattr(cuda_mma.nvrtc, "programmatic", lambda device_index: allowed)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: pytest.fail("in-line launches need no stream handle"))
    kernel = lambda **launch: calls.append(launch)  # noqa: E731 (an in-line launch calls the kernel itself)
    if in_line:
        cuda_mma.nvrtc.launch(kernel, (1, 1, 1), (32, 1, 1), [], 0, pdl)
        assert calls == [{"grid": (1, 1, 1), "block": (32, 1, 1), "args": [], "shared_mem": 0}]
    else:
        with pytest.raises(pytest.fail.Exception, match="no stream handle"):  # it went for cuLaunchKernelEx
            cuda_mma.nvrtc.launch(kernel, (1, 1, 1), (32, 1, 1), [], 0, pdl)
        assert calls == []


@gpu
@pytest.mark.parametrize("features,bits", [(2048, 4), (8192, 4), (4096, "int8")])
def test_programmatic_launches_wait_for_the_kernel_ahead(features, bits):
    """A chain of launches, each reading the output of the one before (8192: K split over blocks that add their
    partials up through the shared counters), captured in a CUDA graph with programmatic launches: the same
    outputs, bit for bit, as launched one after another without PDL."""
    _, _, call = _layer(features, features, 128, False, True, bits)
    x0 = torch.randn(1, features, device="cuda", dtype=torch.bfloat16)

    def chain() -> list[torch.Tensor]:
        outs = [x0]
        for _ in range(6):
            outs.append(call(outs[-1], None))
        return outs

    with cuda_mma.nvrtc.serialized_launches():
        expected = chain()
    assert cuda_mma.nvrtc.programmatic(0)
    chain()  # builds the PDL specialization outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = chain()
    graph.replay()
    torch.cuda.synchronize()
    for i, (got, want) in enumerate(zip(outs[1:], expected[1:])):
        assert torch.isfinite(want).all() and torch.equal(got, want), f"launch {i + 1} of the chain differs"


def _ctx(rows=1, cols=4096, out=4096, bits=4, group=128, dtype=torch.bfloat16, device="cuda"):
    return CallContext(torch.device(device), rows, cols, out, dtype, bits, group)


@pytest.mark.parametrize("change,reason", [
    ({"bits": 5}, "take 2, 3, 4, 8-bit codes"), ({"bits": 3, "group": 64}, "multiples of 128"),
    ({"rows": 17}, "more than 16 rows"), ({"out": 4100}, "multiple of 16"),
    ({"cols": 4112}, "multiples of 32"), ({"group": 48}, "multiples of 32"), ({"group": 96}, "power of two"),
    ({"bits": 8, "cols": 4104}, "multiples of 16"), ({"dtype": torch.float32}, "fp16/bf16"),
    ({"device": "cpu"}, "run on CUDA devices"),
])
def test_mma_kernel_says_why_it_cannot_run(change, reason):
    ctx = _ctx(**change)
    got = cuda_mma.unavailable(ctx.device, ctx.dtype, ctx.bits, ctx.rows, ctx.in_features, ctx.out_features,
                                ctx.group_size)
    assert got is not None and reason in got
    if CUDA or ctx.device.type == "cpu":  # the other candidates ask CUDA devices for their capability
        assert select("int_group_linear", ctx, "auto").name != "cuda_mma"


@pytest.mark.parametrize("op,bits,rows,taken", [
    ("int_group_linear", 4, 1, True), ("int_group_linear", 4, 8, True), ("int_group_linear", 4, 9, False),
    ("int_group_linear", 2, 1, True), ("int_group_linear", 2, 8, True), ("int_group_linear", 2, 9, False),
    ("int_group_linear", 3, 1, True), ("int_group_linear", 3, 16, True), ("int_group_linear", 3, 17, False),
    ("int_group_linear", 8, 1, False), ("int8_weight_linear", 8, 1, True), ("int8_weight_linear", 8, 2, True),
    ("int8_weight_linear", 8, 8, True), ("int8_weight_linear", 8, 9, False),
    ("fourbit_linear", 4, 1, True), ("fourbit_linear", 4, 8, True), ("fourbit_linear", 4, 16, True),
    ("fourbit_linear", 4, 17, False),
])
def test_auto_takes_cuda_mma_where_timed_ahead(op, bits, rows, taken):
    """Where the H100 runs timed it ahead of the Triton kernels (int4 up to one row fragment, kern11; NF4, kern12,
    up to 16 rows since kern15; int2, and int8 weight-only from 2 to 8 rows, kern13, and at one row in tile order,
    kern19; int3 up to 16 rows, kern14);
    elsewhere a reason that names the Triton kernels (4096x128256: its short-slice blocks make 16 waves at 9-16
    rows)."""
    reason = _mma_candidate(op).unsuited(_ctx(rows=rows, bits=bits, out=128256))
    assert (reason is None) == taken
    assert taken or "Triton" in reason


@pytest.mark.parametrize("rows,cols,out,taken", [(1, 4096, 4096, True), (1, 4096, 1024, True), (1, 4096, 14336, True),
                                                (1, 4096, 128256, True), (1, 14336, 4096, False), (1, 2048, 1040, False),
                                                (2, 14336, 4096, True)])
def test_auto_int8_one_row_choice_follows_the_timed_shapes(rows, cols, out, taken):
    """int8 weight-only at one row, codes in tile order (kern19 run 1): cuda_mma unless inputs outnumber more than
    1024 outputs (14336x4096: 1.60x bf16 against triton_mv's 1.74x; 4096x1024: 1.67x against 1.28x); from 2 rows
    cuda_mma whatever the shape."""
    reason = _mma_candidate("int8_weight_linear").unsuited(_ctx(rows=rows, cols=cols, out=out, bits=8, group=cols))
    assert (reason is None) == taken
    assert taken or "Triton" in reason


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("rows,out,taken", [(16, 1024, True), (9, 512, True), (16, 128256, False), (17, 1024, False)])
def test_auto_takes_cuda_mma_for_narrow_int2_and_int4_layers_up_to_16_rows(bits, rows, out, taken):
    """int2 and int4 layers of at most 1024 outputs (Llama-3-8B's k/v projections) stay on cuda_mma up to its 16
    rows, where the Triton tensor-core kernel was slower (int4: kern13, kern14 run 5; int2: kern22 run 3); wider
    layers leave it above 8 rows."""
    reason = _mma_candidate("int_group_linear").unsuited(_ctx(rows=rows, out=out, bits=bits))
    assert (reason is None) == taken
    assert taken or "Triton" in reason


@pytest.mark.parametrize("bits,rows,cols,out,sms,tiles", [
    (4, 16, 4096, 4096, 132, 4), (4, 9, 4096, 4096, 132, 4), (4, 8, 4096, 4096, 132, 0),
    (4, 16, 4096, 14336, 132, 7), (4, 16, 14336, 4096, 132, 7), (4, 16, 4096, 1024, 132, 1),
    (4, 16, 4096, 128256, 132, 0), (4, 16, 4096, 4096, 264, 2), (4, 16, 4096, 4096, 128, 4),
    (4, 16, 4096, 4096, 100, 0), (2, 16, 4096, 4096, 132, 4), (2, 16, 4096, 14336, 132, 7),
    (3, 16, 4096, 4096, 132, 0), (8, 16, 4096, 4096, 132, 0), (4, 17, 4096, 4096, 132, 0),
])
def test_short_slices_take_the_most_tiles_that_fill_their_waves(monkeypatch, bits, rows, cols, out, sms, tiles):
    """int2 and int4 at 9-16 rows take 128-input slices over 16 warps, one block a multiprocessor, with the most tiles a
    block (up to 8) whose blocks make at most two waves and fill at least 90% of them (4096x4096: 4 tiles, 2 x 64
    blocks; 4096x14336: 7 tiles, 2 x 128), and auto then runs cuda_mma (kern23 run 4: 1.46-2.03x bf16 on four
    Llama-3-8B shapes against the Triton kernel's 1.01-1.84x); where no tile count does (4096x128256: 16 waves),
    or for other bit widths, the register shape and the Triton kernel stay."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda_mma.nvrtc, "multiprocessors", lambda device_index: sms)
    assert cuda_mma.short_slice_tiles(bits, rows, cols, out, sms) == tiles
    if rows > cuda_mma.MAX_ROWS:
        return
    cfg = cuda_mma.choose_config(bits, rows, cols, out, 128, sms)
    short = (cfg["KS"], cfg["WARPS"], cfg["TILES"], cfg["R8"]) == (128, 16, tiles, 2)
    assert short == (tiles > 0)
    blocks = math.ceil(out / 16 / cfg["TILES"]) * math.ceil(cols / (cfg["KS"] * cfg["WARPS"]))
    assert not tiles or (blocks >= 0.9 * math.ceil(blocks / sms) * sms and blocks <= 2 * sms)
    reason = _mma_candidate("int_group_linear").unsuited(_ctx(rows=rows, cols=cols, out=out, bits=bits))
    assert (reason is None) == (tiles > 0 or rows <= cuda_mma.FRAGMENT_ROWS or bits == 3 or out <= 1024)


def _mma_candidate(op: str):
    from lowbit.kernels import select as select_module

    return next(c for c in select_module._CANDIDATES[op] if c.name == "cuda_mma")


@pytest.mark.parametrize("bits,rows,cols,out,group", [
    (4, 1, 4096, 14336, 128), (4, 16, 14336, 4096, 128), (4, 3, 384, 48, 64), (4, 9, 2048, 128256, -1),
    (4, 1, 4096, 1024, 32), (8, 1, 4096, 14336, -1), (8, 12, 14336, 4096, 128), (8, 1, 1008, 64, -1),
    (2, 1, 4096, 14336, 128), (2, 16, 1088, 64, 64), (2, 16, 4096, 4096, -1), (3, 1, 4096, 14336, 128),
    (3, 9, 1152, 64, 128),
])
def test_launch_shape_choice_fits_the_kernel(bits, rows, cols, out, group):
    """The chosen shape compiles (a slice holds whole chunks, chunks lie in one group) and covers K."""
    group = cols if group == -1 else group
    cfg = cuda_mma.choose_config(bits, rows, cols, out, group, sms=132)
    chunk = 4 * cfg["U"] * cuda_mma.codes_per_word(bits)
    assert cfg["KS"] % chunk == 0 and (group % chunk == 0 or group >= cols) and cols % chunk == 0
    assert cfg["R8"] == (1 if rows <= 8 else 2)
    assert cfg["WARPS"] <= math.ceil(cols / cfg["KS"])  # no warp of the first block starts past K
    assert 1 <= cfg["TILES"] <= cuda_mma.SHORT_SLICE_MAX_TILES
    assert cfg["WARPS"] <= (32 if rows == 1 else 16)
    assert out // 16 <= split_counters.N_COUNTERS * cfg["TILES"]


@pytest.mark.parametrize("bits,cols,warps", [(4, 14336, 28), (8, 14336, 28), (2, 14336, 14), (3, 14336, 14),
                                             (4, 4096, 16), (2, 4096, 16), (4, 8192, 16)])
def test_wide_shape_splits_k_into_equal_blocks(bits, cols, warps):
    """At one row with 4 tiles a block, K's 256-input slices are shared by up to 16 warps so that every K block
    holds as many: 56 slices of K = 14336 make 4 blocks of 14, not 16 + 16 + 16 + 8. Where that gives more than
    two blocks, int4 and int8 take up to 32 warps (two blocks of 28; the 2- and 3-bit rings keep 16). int4 and int8
    keep their words in registers (a ring for int4's 28-warp blocks slowed compiled decode, kern28 run 7)."""
    cfg = cuda_mma.choose_config(bits, 1, cols, 4096 if cols > 4096 else 14336, 128, sms=132)
    slices = cols // cfg["KS"]
    assert (cfg["SMEM_X"], cfg["KS"], cfg["WARPS"]) == (1, 256, warps) and slices % cfg["WARPS"] == 0
    assert ("ASYNC" in cfg) == (bits in (2, 3))


@pytest.mark.parametrize("bits,rows,cols,out,table,cluster", [
    (4, 16, 4096, 4096, False, 2), (4, 9, 4096, 1024, False, 2), (2, 16, 4096, 14336, False, 2),
    (4, 16, 4096, 4096, True, 2), (8, 16, 4096, 4096, False, 2), (4, 1, 14336, 4096, False, 2),
    (4, 8, 4096, 128256, False, None), (4, 16, 14336, 4096, False, None), (2, 1, 14336, 4096, False, None),
    (4, 1, 4096, 4096, False, None)])
def test_cluster_fixup_where_two_k_blocks_fill_few_waves(bits, rows, cols, out, table, cluster):
    """Launches that split K in two blocks, at most 4 blocks a multiprocessor, take the cluster fix-up on devices
    with clusters (kern28 runs 1-2): not 4096x128256 at 8 rows (4008 blocks), K in 7 or 4 blocks, or K in one; never
    without clusters, nor where the config names its own CLUSTER."""
    group = 64 if table else 128
    code = (bits, rows, cols, out, group, 132, True, not table, False)
    spec = cuda_mma.specialization(*code, config={"LUT4": int(table)}, clusters=True)
    assert spec.get("CLUSTER") == cluster
    if cluster:
        assert cuda_mma.k_blocks(spec, cols) == cluster
    assert "CLUSTER" not in cuda_mma.specialization(*code, config={"LUT4": int(table)})
    assert cuda_mma.specialization(*code, config={"LUT4": int(table), "CLUSTER": 1}, clusters=True)["CLUSTER"] == 1


@pytest.mark.parametrize("bits,cols,out,table,warps", [
    (4, 4096, 1024, False, 32), (2, 4096, 1024, False, 32), (3, 4096, 1024, False, 32), (8, 4096, 1024, False, 32),
    (4, 4096, 1024, True, 32), (4, 2048, 1024, False, 16)])
def test_one_row_takes_32_warps_where_one_tile_blocks_leave_sms_idle(bits, cols, out, table, warps):
    """At one row, layers of fewer tiles than multiprocessors (4096x1024's 64) take 128-input slices, up to 32
    warps a one-tile block, K in one block, whole chunks a slice, int8 with its early loads (kern28 runs 1-4);
    wider layers take other shapes (test_one_wave_of_32_warp_blocks). Each such shape compiles for sm_90 without
    spills."""
    group = cols if bits == 8 else 64 if table else 128
    cfg = cuda_mma.choose_config(bits, 1, cols, out, group, sms=132, table=table)
    assert cfg["WARPS"] == warps and cfg["TILES"] == 1
    assert cuda_mma.k_blocks(cfg, cols) == 1
    if warps == 32:
        assert cfg["KS"] == 128 and 4 * cfg["U"] * cuda_mma.codes_per_word(bits) <= 128
        assert bool(cfg.get("EARLY")) == (bits == 8) and "ASYNC" not in cfg
        _, spills, info = _ptxas(_tiled_spec(bits, 1, cols, out, group, table))
        assert spills == 0, info


@pytest.mark.parametrize("bits,rows,cols,out,table,two", [
    (4, 16, 4096, 14336, False, True), (2, 16, 4096, 14336, False, True), (4, 9, 4096, 14336, False, True),
    (4, 16, 4096, 14336, True, False), (4, 16, 4096, 4096, False, False), (4, 16, 14336, 4096, False, False),
    (4, 16, 4096, 1024, False, False)])
def test_two_short_slice_blocks_a_multiprocessor_where_one_makes_two_waves(bits, rows, cols, out, table, two):
    """int2 and int4 short slices whose two clustered K blocks make more blocks than multiprocessors take two blocks
    a multiprocessor (DEPTH 0, 64 registers, both in its shared memory: one wave; kern28 runs 8-9, 4096x14336 int4
    2.08-2.09x bf16 against 1.87-1.89x); not NF4 (1.33-1.36x against 1.89-1.90x), nor launches that fit one wave or
    split K in seven. The shape compiles for sm_90 with the few spilled bytes it was timed with."""
    group = 64 if table else 128
    spec = cuda_mma.specialization(bits, rows, cols, out, group, 132, has_zero=not table, config={"LUT4": int(table)},
                                   clusters=True)
    assert (spec.get("MIN_BLOCKS") == 2 and spec["DEPTH"] == 0) == two
    if two:
        assert spec["CLUSTER"] == 2 and 2 * cuda_mma.shared_bytes(spec, rows) <= 227 * 1024
        registers, spills, info = _ptxas(spec | {"TILED": 1})
        assert registers <= 64 and spills <= 64, info


@pytest.mark.parametrize("bits,cols,out,table,tiles,one_wave", [
    (8, 4096, 14336, False, 7, True), (4, 4096, 14336, True, 7, True), (8, 4096, 4096, False, 2, True),
    (4, 4096, 4096, True, 2, True), (4, 4096, 14336, False, 4, False), (8, 4096, 128256, False, 4, False),
    (8, 14336, 4096, False, 4, False), (4, 4096, 4096, False, 2, True), (2, 4096, 6144, False, 3, True),
    (4, 4096, 11008, False, 6, True), (3, 4096, 14336, False, 7, True), (2, 4096, 14336, False, 4, False),
    (4, 5120, 4096, False, 1, False)])
def test_one_wave_of_32_warp_blocks(bits, cols, out, table, tiles, one_wave):
    """One row, on layers of at least as many tiles as multiprocessors whose K fits 32 warps of 128 inputs: one block
    a multiprocessor of ceil(tiles / SMs) tiles, NF4 with L2_AHEAD above 2 tiles, up to 8 tiles for int8, NF4 and
    int3, up to 6 for int2 and int4 (kern28: 4096x14336, 128 blocks of 7, int8 1.75-1.76x against 1.66-1.67x, NF4
    2.73x against 2.38-2.39x; kern31: int4 4096x4096 3.10-3.12x against 2.68x, 4096x11008's 6 tiles 3.13x against
    2.98x, but 4096x14336's 7 tiles 3.04x against 3.07x). More tiles a block (4096x128256) and longer K keep their
    shapes. Each compiles for sm_90 without spills within a block's shared memory."""
    group = cols if bits == 8 else 64 if table else 128
    cfg = cuda_mma.choose_config(bits, 1, cols, out, group, 132, table=table)
    assert cfg["TILES"] == tiles
    assert ((cfg["KS"], cfg["WARPS"]) == (128, 32)) == one_wave
    if one_wave:
        assert cuda_mma.k_blocks(cfg, cols) == 1 and cfg.get("L2_AHEAD", 0) == int(table and tiles > 2)
        spec = _tiled_spec(bits, 1, cols, out, group, table)
        assert cuda_mma.shared_bytes(spec, 1) <= 227 * 1024
        _, spills, info = _ptxas(spec)
        assert spills == 0, info


@pytest.mark.parametrize("bits,rows,cols,out,table,one_block", [
    (4, 1, 4096, 4096, True, True), (8, 1, 4096, 4096, False, True), (4, 1, 4096, 14336, True, True),
    (4, 1, 14336, 4096, False, True), (4, 16, 14336, 4096, False, True), (4, 16, 4096, 1024, False, True),
    (4, 16, 4096, 4096, True, True), (4, 9, 4096, 4096, False, True), (2, 9, 4096, 4096, False, True),
    (2, 16, 14336, 4096, False, True), (4, 1, 4096, 4096, False, True), (2, 1, 4096, 6144, False, True),
    (4, 1, 4096, 1024, False, False), (4, 16, 4096, 14336, True, False),
    (4, 1, 4096, 1024, True, False), (4, 1, 5120, 4096, False, False), (4, 1, 14336, 4096, True, False),
    (4, 1, 4096, 14336, False, False), (4, 16, 4096, 14336, False, False)])
def test_one_block_builds_where_a_multiprocessor_runs_one(bits, rows, cols, out, table, one_block):
    """The one-wave 32-warp shape (every format since kern31), int4's and int8's 28-warp deep-K blocks and the short
    slices that do not ask for two blocks a multiprocessor build with ONE_BLOCK (MIN_BLOCKS 1), which lets ptxas use
    the registers a lone block has (kern30 run 3, x bf16 side by side: NF4 4096x4096 2.64-2.65 against 2.33-2.34,
    int8 4096x4096 1.91 against 1.84-1.85, int4 14336x4096 2.91-2.93 against 2.88-2.89; at 16 rows int4 4096x1024 1.57
    against 1.41, 14336x4096 1.83-1.84 against 1.77-1.78, NF4 4096x1024 1.82-1.84 against 1.71-1.74; kern31: int2 at 16
    rows 14336x4096 2.20-2.23 against 2.10-2.11). FEW_TILES' one-row blocks ran slower with it (NF4 4096x1024
    2.36-2.38 against 2.53-2.56), and so did NF4's short slices whose two K blocks outnumber the multiprocessors
    (4096x14336 at 16 rows 1.84 against 1.92) and the shapes of two blocks a multiprocessor. In tile order each builds
    for sm_90 without spills and with more registers a thread than the same build without a block count (3-bit codes'
    one-wave builds excepted: 48-52 registers with it against 50-56 without; timed only with it, kern31)."""
    group = cols if bits == 8 else 64 if table else 128
    cfg = cuda_mma.choose_config(bits, rows, cols, out, group, 132, table=table)
    assert (cfg.get("MIN_BLOCKS") == 1) == one_block
    if one_block:
        spec = _tiled_spec(bits, rows, cols, out, group, table)
        registers, spills, info = _ptxas(spec)
        uncounted, _, _ = _ptxas({k: v for k, v in spec.items() if k != "MIN_BLOCKS"})
        assert spills == 0 and registers > uncounted, info


@pytest.mark.parametrize("rows,cols,out,ahead", [(1, 14336, 4096, 1), (1, 4096, 14336, 1), (8, 4096, 14336, 0),
                                                 (1, 4096, 1024, 0)])
def test_nf4_prefetches_the_next_tile_into_l2_at_one_row(rows, cols, out, ahead):
    """NF4's wide one-row shape prefetches each warp's next tile into L2 (kern28 run 2); not at 8 rows (untimed),
    not the register shapes, and never the integer codes (slower with it)."""
    assert cuda_mma.choose_config(4, rows, cols, out, 64, 132, table=True).get("L2_AHEAD", 0) == ahead
    assert "L2_AHEAD" not in cuda_mma.choose_config(4, rows, cols, out, 128, 132)


@pytest.mark.parametrize("rows", [1, 2, 8, 9, 16])
@pytest.mark.parametrize("bits,group,table", [(4, 128, False), (2, 128, False), (3, 128, False), (8, -1, False),
                                              (4, 64, True)])
def test_chosen_shapes_fit_shared_memory(rows, bits, group, table):
    """Every launch shape auto picks for the Llama-3-8B layers fits an H100's 227 KB of shared memory a block at
    every row count (kern12's first NF4 shape at 16 rows asked for 240 KB and failed to launch)."""
    for cols, out in ((4096, 14336), (14336, 4096), (4096, 4096), (4096, 1024), (4096, 128256)):
        g = cols if group == -1 else group
        spec = cuda_mma.specialization(bits, rows, cols, out, g, 132, has_zero=not table, config={"LUT4": int(table)})
        assert cuda_mma.shared_bytes(spec, rows) <= 232448, (cols, out, spec)


@pytest.mark.parametrize("bits,rows,cols,out,group", [
    (4, 1, 4096, 14336, 128), (4, 16, 14336, 4096, 128), (4, 1, 4096, 128256, 128), (2, 1, 4096, 14336, 128),
    (4, 1, 14336, 4096, 128), (4, 16, 4096, 4096, 128),
    (2, 16, 4096, 4096, 64), (8, 1, 4096, 14336, -1), (8, 9, 14336, 4096, -1), (8, 1, 4096, 4096, 128),
    (3, 1, 4096, 4096, 128), (3, 8, 4096, 4096, 128), (3, 16, 4096, 4096, 128),
])
@pytest.mark.parametrize("bf16", [True, False])
def test_kernel_compiles_for_sm90_without_spills(bits, rows, cols, out, group, bf16):
    """The launch shapes auto picks for Llama-sized layers compile (NVRTC, no GPU) to sm_90 code that keeps
    everything in registers, in row order and as an H100 launches a layer's (tile order, launch_mode's programmatic
    launch and cluster fix-up): ptxas reports no spills, but for 4 bytes of 2-bit codes in groups of 64 at 16 rows
    (the short-slice shape, timed with groups of 128, which do not spill: kern23 run 5) and 8 bytes of int4's 7-tile
    short slices at 16 rows in row order under ONE_BLOCK (the tile order that CUDA layers launch keeps 128 registers
    without spills, as kern30 run 3 timed it). (3-bit codes' wide one-row
    shape and their 4-tile shapes at 16 rows spill under their two-block bound, as timed:
    test_rings_where_timed_faster; int2 and int4 short slices two a multiprocessor spill a few bytes, as timed:
    test_two_short_slice_blocks_a_multiprocessor_where_one_makes_two_waves.)"""
    group = cols if group == -1 else group
    code = (bits, rows, cols, out, group, 132, bf16, bits != 8, bits == 8 and group == cols)
    spec = cuda_mma.specialization(*code)
    on_h100 = cuda_mma.specialization(*code, clusters=True) | {"TILED": 1} | cuda_mma.launch_mode(bits, False, True)
    bound = 4 if (bits, rows) == (2, 16) else 0
    row_order_bound = 8 if (bits, rows, cols) == (4, 16, 14336) else bound
    for launched, most in ((spec, row_order_bound), (on_h100, bound)):
        _, spills, info = _ptxas(launched)
        assert spills <= most, (launched, info)


@pytest.mark.parametrize("config", [{}, {"TILED": 1}, {"LUT4": 1, "DQ": 1, "HAS_ZERO": 0, "TILED": 1},
                                    {"TILED": 1, "ASYNC": 2}])
def test_programmatic_launch_reads_nothing_before_the_wait(config):
    """With PDL the kernel may start while the kernel ahead still writes: its PTX issues only L2 prefetches before
    griddepcontrol.wait (no load, no cp.async, no store), then lets the next launch start
    (griddepcontrol.launch_dependents) before its last barrier; without PDL neither instruction is there."""
    g = 64 if config.get("LUT4") else 128
    spec = cuda_mma.specialization(4, 1, 4096, 4096, g, 132, config=config | {"PDL": 1, "PREFETCH": 1, "PRELOAD": 0,
                                                                          "LAUNCH_NEXT": 1})
    ptx = cuda_mma.ptx_offline(spec)
    pdl = cuda_mma.nvrtc.programmatic_ptx(ptx)
    assert pdl["waits"] and "prefetch.global.L2" in ptx.partition("griddepcontrol.wait")[0]
    assert pdl["accesses_before_wait"] == 0, "a memory access ahead of the wait"
    assert pdl["launches_after_wait"]
    assert "griddepcontrol" not in cuda_mma.ptx_offline(spec | {"PDL": 0})


@pytest.mark.parametrize("config", [{"TILED": 1}, {"LUT4": 1, "DQ": 1, "HAS_ZERO": 0, "TILED": 1}])
def test_preload_only_reads_before_the_wait_and_launch_next_2_lets_the_next_launch_start_first(config):
    """PRELOAD's block reads its first tile's words and qparams before griddepcontrol.wait (global loads, no store,
    cp.async or atomic: settled_weights guards that no kernel ahead wrote them); LAUNCH_NEXT 2 puts
    griddepcontrol.launch_dependents ahead of the wait, and none after it."""
    g = 64 if config.get("LUT4") else 128
    spec = cuda_mma.specialization(4, 1, 4096, 4096, g, 132, config=config | {"PDL": 1, "PRELOAD": 1, "LAUNCH_NEXT": 2})
    ptx = cuda_mma.ptx_offline(spec)
    before = ptx.partition("griddepcontrol.wait")[0]
    assert re.search(r"ld\.global", before) and not re.search(r"\b(?:st\.global|cp\.async|atom\.|red\.)", before)
    pdl = cuda_mma.nvrtc.programmatic_ptx(ptx)
    assert "griddepcontrol.launch_dependents" in before and pdl["launches_after_wait"] == 0


def test_early_start_only_where_timed_and_only_when_asked(monkeypatch):
    """early_start (kern29 run 1), with LOWBIT_EARLY_START=1: int4's one-tile blocks at one row (5120x4096's register
    shape, FEW_TILES; 4096x4096 takes the one-wave shape since kern31) let the next launch start at once and preload,
    NF4's wide shape preloads where it splits K; nothing for int4's 28-warp blocks, NF4's FEW_TILES or unsplit wide
    shape, 16 rows, launches without PDL, cp.async rings or other codes. Without the variable nothing changes."""
    def spec(bits, rows, cols, out, table=False, pdl=True):
        code = {"LUT4": 1, "DQ": 1, "HAS_ZERO": 0} if table else {}
        return cuda_mma.specialization(bits, rows, cols, out, 64 if table else 128, 132,
                                       config=code | cuda_mma.launch_mode(bits, table, pdl), clusters=True)
    early = {"PRELOAD", "LAUNCH_NEXT"}
    assert not early & set(spec(4, 1, 4096, 4096)), "off by default"
    monkeypatch.setitem(cuda_mma.EARLY_START, "on", True)
    assert spec(4, 1, 5120, 4096)["PRELOAD"] == 1 and spec(4, 1, 5120, 4096)["LAUNCH_NEXT"] == 2
    assert spec(4, 1, 4096, 1024)["PRELOAD"] == 1 and spec(4, 1, 4096, 1024)["LAUNCH_NEXT"] == 2
    assert spec(4, 1, 14336, 4096, table=True)["PRELOAD"] == 1 and "LAUNCH_NEXT" not in spec(4, 1, 14336, 4096, True)
    for unchanged in (spec(4, 1, 14336, 4096), spec(4, 1, 4096, 1024, table=True), spec(4, 1, 4096, 128256, True),
                      spec(4, 16, 4096, 4096), spec(4, 1, 4096, 4096),
                      spec(4, 1, 4096, 4096, pdl=False), spec(2, 1, 4096, 4096), spec(8, 1, 4096, 1024)):
        assert not early & set(unchanged), unchanged
    assert cuda_mma.specialization(4, 1, 4096, 4096, 128, 132, config={"PDL": 1, "PRELOAD": 0})["PRELOAD"] == 0


@pytest.mark.parametrize("table,cols,out", [(False, 5120, 4096), (False, 4096, 1024), (True, 14336, 4096)])
def test_early_start_builds_keep_their_blocks_without_spills(table, cols, out, monkeypatch):
    """What an H100 launches with LOWBIT_EARLY_START=1 (early_start's shapes, with clusters, tile order and PDL) builds
    for sm_90 without spills and with registers for as many blocks a multiprocessor as without it: the registers the
    preloaded tile holds through the wait do not cost a block."""
    bits, group = 4, 64 if table else 128
    code = {"LUT4": 1, "DQ": 1, "HAS_ZERO": 0} if table else {}
    spec = lambda: cuda_mma.specialization(bits, 1, cols, out, group, 132, has_zero=not table, config=code | {"TILED": 1}
                                           | cuda_mma.launch_mode(bits, table, True), clusters=True)
    before = spec()
    monkeypatch.setitem(cuda_mma.EARLY_START, "on", True)
    early = spec()
    assert early["PRELOAD"] == 1
    registers, spills, info = _ptxas(early)
    assert spills == 0, info
    assert _blocks_by_registers(registers, early["WARPS"]) >= _blocks_by_registers(_ptxas(before)[0], before["WARPS"])


@gpu
@pytest.mark.parametrize("bits", [4, "int8"])
def test_preloading_launch_reads_codes_written_just_before_it(bits):
    """A settled layer (launched before, so PRELOAD loads its words ahead of the PDL wait) whose codes and scales are
    then overwritten in place by the kernel just ahead of the next launch: that launch must see the new weights
    (settled_weights turns PRELOAD off for it), and so must the one after, in a CUDA graph too."""
    seed = fresh_seed()
    early = {"PRELOAD": 1, "LAUNCH_NEXT": 2}
    cols, out, group = 4096, 1024, 128 if bits == 4 else -1  # FEW_TILES: one-tile blocks
    layer, _, call = _layer(out, cols, group, False, True, bits)
    other, other_w, _ = _layer(out, cols, group, False, True, bits)
    x = torch.randn(1, cols, device="cuda", dtype=torch.bfloat16) * 3
    for _ in range(2):
        call(x, early)
    layer.qweight.copy_(other.qweight)  # the kernels just ahead of the next launch write the codes and scales
    layer.scale.copy_(other.scale)
    if getattr(layer, "zero", None) is not None:
        layer.zero.copy_(other.zero)
    want = x.double() @ other_w.t() + layer.bias.double()
    for y in (call(x, early), call(x, early)):
        err = ((y.double() - want).norm() / want.norm()).item()
        assert err < TOL[torch.bfloat16], f"{bits} err={err:.2e} seed={seed}"
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = call(x, early)
    layer.qweight.copy_(_layer(out, cols, group, False, True, bits)[0].qweight)
    graph.replay()  # the graph's first kernel waits for the copy in full: no programmatic edge crosses into a graph
    torch.cuda.synchronize()
    assert torch.equal(y, call(x, {"PRELOAD": 0})), f"{bits} seed={seed}"


@pytest.mark.parametrize("rows,cols,out", [(1, 4096, 4096), (1, 4096, 1024), (8, 4096, 4096), (16, 4096, 4096)])
def test_three_bit_tile_order_compiles_without_spills(rows, cols, out):
    """3-bit codes read in tile order (TILED, chunks of 4 units, what CUDA layers hold since kern19) compile for
    sm_90 without spills where auto's shape has none in row order (the shapes that spill under their two-block
    bound: test_rings_where_timed_faster)."""
    spec = cuda_mma.specialization(3, rows, cols, out, 128, 132)
    _, spills, info = _ptxas(spec | {"TILED": 1})
    assert spills == 0, info


def test_three_bit_register_shape_holds_two_blocks():
    """3-bit codes at one row where the register shape is chosen (5120x4096; 4096x4096 until kern31) ask for two
    blocks a multiprocessor and load their words through shared-memory rings: ptxas keeps the thread within 128
    registers without spills, where the tile ahead in registers took more without the bound and spilled within it."""
    spec = cuda_mma.specialization(3, 1, 5120, 4096, 128, 132)
    assert spec["SMEM_X"] == 0 and spec["MIN_BLOCKS"] == 2 and spec["ASYNC"] == 2
    capped, spills, info = _ptxas(spec)
    assert capped <= 128 and spills == 0, info
    in_registers = {k: v for k, v in spec.items() if k != "ASYNC"}
    uncapped, _, _ = _ptxas({k: v for k, v in in_registers.items() if k != "MIN_BLOCKS"})
    _, ring_spills, _ = _ptxas(in_registers)
    assert uncapped > 128 and ring_spills > 0


@pytest.mark.parametrize("bits,rows,cols,out,ring,spill", [
    (3, 1, 5120, 4096, True, 0), (3, 1, 4096, 1024, False, 0), (3, 1, 14336, 4096, True, 32),
    (2, 1, 5120, 4096, True, 0), (2, 1, 4096, 14336, True, 0), (2, 1, 4096, 1024, False, 0),
    (3, 1, 4096, 4096, False, 0), (2, 1, 4096, 4096, False, 0), (4, 1, 4096, 14336, False, 0),
    (8, 1, 4096, 4096, False, 0), (3, 16, 4096, 4096, True, 0), (3, 16, 4096, 14336, True, 36),
    (3, 8, 4096, 4096, False, 0), (4, 16, 4096, 14336, False, 0),
])
def test_rings_where_timed_faster(bits, rows, cols, out, ring, spill):
    """Shared-memory rings of two tiles (ASYNC 2) for 3-bit codes at one row and in two row fragments (9-16 rows),
    and for 2-bit codes at one row where the blocks fill a wave (4096x1024's 64 one-tile blocks take FEW_TILES'
    register shape, 3-bit codes too; since kern31 the one-wave shape of 2- and 3-bit codes, K = 4096, has none);
    int4 and int8 keep the register path. Each chosen specialization, in the tile order CUDA layers hold, compiles
    within its spill bound (3-bit codes' wide one-row shape on 14336x4096, 14 warps capped at 72 registers, spills 32
    bytes, as timed in kern31 runs 1 and 4; their 4-tile shapes at 16 rows capped at 128 spill 36, as timed in kern19
    runs 1 and 8), its shared memory (rings, results and activations) within half an H100's 227 KB so two blocks share
    a multiprocessor."""
    group = cols if bits == 8 else 128
    spec = cuda_mma.specialization(bits, rows, cols, out, group, 132, has_zero=bits != 8, signed8=bits == 8)
    assert spec.get("ASYNC", 0) == (2 if ring else 0)
    if ring:
        _, spills, info = _ptxas(spec | {"TILED": 1})
        assert spills <= spill and 2 * cuda_mma.shared_bytes(spec, rows) <= 227 * 1024, info


@pytest.mark.parametrize("bits,rows,cols,out,table,early", [
    (8, 1, 5120, 4096, False, True), (8, 2, 4096, 4096, False, False), (4, 1, 5120, 4096, True, True),
    (4, 1, 4096, 1024, True, False), (4, 1, 4096, 128256, True, False), (4, 1, 4096, 4096, False, False),
    (2, 1, 4096, 4096, False, False), (8, 1, 4096, 4096, False, False), (4, 1, 4096, 4096, True, False),
])
def test_early_loads_where_timed_faster(bits, rows, cols, out, table, early):
    """The first tiles' loads go out before the activations (EARLY) at one row for int8 codes and for NF4's register
    shape where its blocks outnumber the multiprocessors (5120x4096: 256 blocks; 4096x4096 until kern28), which also
    asks for two blocks a multiprocessor; int2/int4, NF4's wide shape (4096x128256), the one-wave 32-warp shape of
    int8 and NF4 (4096x4096 since kern28) and NF4's 64 blocks of 4096x1024 keep them after."""
    group = cols if bits == 8 else 64 if table else 128
    cfg = cuda_mma.choose_config(bits, rows, cols, out, group, sms=132, table=table)
    assert bool(cfg.get("EARLY")) == early
    assert (cfg.get("MIN_BLOCKS") == 2) == (early and table)


def test_early_loads_fit_two_nf4_register_blocks_a_multiprocessor():
    """NF4's register shape (5120x4096; 4096x4096 until kern28) takes 192 registers a thread with its loads after the
    activations' setup (one 8-warp block a multiprocessor: 256 blocks in two waves); with the first tile loaded
    before, ptxas keeps it within the 128 registers two blocks need, without spills."""
    spec = cuda_mma.specialization(4, 1, 5120, 4096, 64, 132, has_zero=False, config={"LUT4": 1, "DQ": 1})
    assert spec["EARLY"] == 1 and spec["SMEM_X"] == 0 and spec["WARPS"] == 8
    capped, spills, info = _ptxas(spec)
    late, _, _ = _ptxas({k: v for k, v in spec.items() if k not in ("EARLY", "MIN_BLOCKS")})
    assert capped <= 128 < late and spills == 0, info


def test_min_blocks_caps_the_registers():
    """MIN_BLOCKS=3 at 8 warps fits three blocks a multiprocessor by registers (this shape takes 109 a thread without
    the cap). kern11's profile found one 8-warp block a multiprocessor, register-bound, leaving the schedulers idle
    71% of the time; the sweep's MIN_BLOCKS shapes try more."""
    spec = {"U": 4, "KS": 256, "WARPS": 8, "TILES": 2, "DEPTH": 1, "R8": 1, "MIN_BLOCKS": 3, "BITS": 4, "BF16": 1,
            "HAS_ZERO": 1, "G": 128, "SIGNED8": 0}
    registers, _, info = _ptxas(spec)
    assert _blocks_by_registers(registers, 8) >= 3, info


@pytest.mark.parametrize("dq,bf16,spill", [(1, 1, 4), (0, 0, 0)])
def test_fourbit_table_kernel_compiles_for_sm90(dq, bf16, spill):
    """The NF4/FP4 specialization (LUT4, blocks of 64) in the wide shape (16 warps, activations in shared memory;
    4096x128256's, and 4096x14336's until kern28) compiles within the spills kern12 timed it with (4 bytes with
    double quantization, none without)."""
    spec = cuda_mma.specialization(4, 1, 4096, 128256, 64, 132, bf16, has_zero=False, config={"LUT4": 1, "DQ": dq})
    assert spec["SMEM_X"] == 1 and spec["WARPS"] == 16
    _, spills, info = _ptxas(spec)
    assert spills <= spill, info


def test_activations_in_shared_memory_free_registers():
    """SMEM_X keeps the activation fragments in shared memory: on 4096x14336's former default shape (512-input
    slices, 4 tiles) a thread needs 222 registers with them in registers (one 8-warp block a multiprocessor,
    kern11's profile) and at most 160 without them; at one tile, at most 85 (two blocks: registers are allocated
    in eights), without spills."""
    base = {"U": 4, "KS": 512, "WARPS": 8, "DEPTH": 1, "R8": 1, "BITS": 4, "BF16": 1, "HAS_ZERO": 1, "G": 128,
            "SIGNED8": 0}

    def registers(**change) -> int:
        count, spills, info = _ptxas(base | change)
        assert spills == 0, info
        return count

    assert registers(TILES=4, SMEM_X=0) > 200 and registers(TILES=4, SMEM_X=1) <= 160
    assert registers(TILES=1, SMEM_X=1) <= 65536 // (3 * 256)


def _tiled_spec(bits: int, rows: int, cols: int, out: int, group: int, table: bool) -> dict:
    """The specialization auto builds on an H100 (132 multiprocessors) for a tile-order layer: int_group codes with
    zeros, int8 weight-only (bits 8) or NF4 with double-quantized absmax (table)."""
    config = {"LUT4": int(table), "DQ": int(table), "TILED": 1}
    return cuda_mma.specialization(bits, rows, cols, out, group, 132, has_zero=not table and bits != 8,
                                   signed8=bits == 8, config=config)


def _ptxas(spec: dict) -> tuple[int, int, str]:
    """(registers a thread, spill-store bytes, ptxas log) of cuda_mma.cu's specialization `spec` for sm_90."""
    return sm90_usage(cuda_mma.SOURCE, spec)


def _blocks_by_registers(registers: int, warps: int) -> int:
    """Blocks of `warps` warps a multiprocessor's 65536 registers hold (allocated in eights a thread)."""
    return 65536 // (32 * warps * math.ceil(registers / 8) * 8)


def _pairs(word: int, magic: int, flip: bool, bits: int = 4) -> int:
    """The kernel's magic_pair (lop3 0xEA; one code of `bits`, or a nibble, per half) or, for flipped high
    nibbles, magic_pair_flip (lop3 0x6A)."""
    if flip:
        return ptx_models.lop3(word, 0x000F000F, magic | 0x00080008, 0x6A)
    return ptx_models.lop3(word, (2**bits - 1) * 0x00010001, magic, 0xEA)


def _plan3() -> list[tuple[int, ...]]:
    """cuda_mma.cu's PLAN3, read from its source: (window s, low code a, its bit p, high code b, its bit 16 + p2)."""
    text = cuda_mma.SOURCE.read_text()
    body = text[text.index("#define PLAN3(X)"):]
    body = body[:body.index("\n\n")]
    return [tuple(map(int, m)) for m in re.findall(r"X\((\d+), (\d+), (\d+), (\d+), (\d+)\)", body)]


def _scaled(half: int, p: int, bf16: bool) -> int:
    """A 16-bit activation times 2^-p, as 16 bits of the same type (cuda_mma.cu's act_scaled)."""
    dtype = torch.bfloat16 if bf16 else torch.float16
    value = torch.tensor([half], dtype=torch.int32).to(torch.int16).view(dtype).float() / 2**p
    return int(value.to(dtype).view(torch.int16).to(torch.int32)[0]) & 0xFFFF


def _steps3(wa: list[int], wb: list[int], v: list[int], magic: int, bf16: bool):
    """(plane 0, A registers, B registers, A of the plain sums) of a 3-bit unit's 8 steps, by PLAN3: each pair's
    window of the unit's 96 bits, one lop3 with the pair's mask; the activations scaled by 2^-p."""
    units = [sum(w << (32 * i) for i, w in enumerate(ws)) for ws in (wa, wb)]
    half = lambda i: (v[i >> 1] >> (16 * (i & 1))) & 0xFFFF  # noqa: E731
    one = {p: _scaled(0x3F80 if bf16 else 0x3C00, -p, bf16) for p in range(5)}  # 2^p in 16 bits
    pairs = []
    for s, a, p, b, p2 in _plan3():
        mask = 7 << p | 7 << (16 + p2)
        regs = [ptx_models.lop3((u >> s) & 0xFFFFFFFF, mask, magic, 0xEA) for u in units]
        pairs.append((regs, _scaled(half(a), p, bf16) | _scaled(half(b), p2, bf16) << 16, one[p] | one[p2] << 16))
    for q in range(8):
        (ra, x0, p0), (rb, x1, p1) = pairs[2 * q], pairs[2 * q + 1]
        yield 0, [ra[0], ra[1], rb[0], rb[1]], [x0, x1], [p0, p0, p1, p1]


def _steps(bits: int, wa, wb, v: list[int], magic: int, signed8: bool, lut: list[int] | None = None,
           bf16: bool = False):
    """(plane, A registers, B registers[, A of the plain sums]) of one word's mma steps, as cuda_mma.cu builds them
    (plane 1: the high nibbles of 8-bit codes; lut: NF4/FP4's byte-pair table; 3 bits: a unit's words)."""
    if bits == 3:
        yield from _steps3(wa, wb, v, magic, bf16)
        return
    if lut is not None:  # a byte's pair from the table, the activations as they lie
        for q in range(2):
            a = [lut[(w >> s) & 0xFF] for w, s in ((wa, 16 * q), (wb, 16 * q), (wa, 16 * q + 8), (wb, 16 * q + 8))]
            yield 0, a, [v[2 * q], v[2 * q + 1]]
        return
    if bits != 8:
        codes = 32 // bits
        for q in range(codes // 4):
            shifts = ((wa, 2 * q * bits), (wb, 2 * q * bits), (wa, (2 * q + 1) * bits), (wb, (2 * q + 1) * bits))
            a = [_pairs(w >> s, magic, False, bits) for w, s in shifts]
            pair = (v[q], v[q + codes // 4])
            yield 0, a, [ptx_models.prmt(*pair, 0x5410), ptx_models.prmt(*pair, 0x7632)]
        return
    b = [ptx_models.prmt(v[0], v[1], 0x5410), ptx_models.prmt(v[0], v[1], 0x7632)]
    yield 0, [_pairs(w >> s, magic, False) for w, s in ((wa, 0), (wb, 0), (wa, 8), (wb, 8))], b
    yield 1, [_pairs(w >> s, magic, signed8) for w, s in ((wa, 4), (wb, 4), (wa, 12), (wb, 12))], b


def _plan_model(qweight, scale, zero, x, bits: int, group: int, words: int, slice_k: int, signed8: bool = False,
                lut: list[int] | None = None):
    """cuda_mma.cu's plan on the CPU, lane by lane: each lane's words of rows g and g + 8, the magic pairs
    (lop3), the activation pairs (prmt), the all-ones mma for the input sums and the correction per group,
    with lop3, prmt and mma.sync's fragment layouts from the PTX ISA (ptx_models). With lut (NF4/FP4) the
    A registers come from the byte-pair table and scale is the (out, blocks) absmax, with no offset."""
    bf16 = x.dtype == torch.bfloat16
    w = qweight.numpy().view(np.uint32)
    xs = x.view(torch.int16).numpy().view(np.uint16).astype(np.uint32)  # (rows, K) 16-bit patterns
    magic, offset = (0x43004300, 128.0) if bf16 else (0x64006400, 1024.0)
    ones = 0x3F803F80 if bf16 else 0x3C003C00
    codes, unit = cuda_mma.codes_per_word(bits), 3 if bits == 3 else 1
    plane_offset, sym_zero = (17 * offset if bits == 8 else offset), 2.0 ** (bits - 1)
    rows, K = xs.shape
    chunk = 4 * words * codes
    y = np.zeros((rows, w.shape[0]))
    tiles, frags = range(w.shape[0] // 16), range(math.ceil(rows / 8))
    for tile, k0, r in itertools.product(tiles, range(0, K, slice_k), frags):
        for kc in range(k0, min(k0 + slice_k, K), chunk):  # a chunk per correction (group >= chunk here)
            acc, sums, plain = np.zeros((2, 32, 4)), np.zeros((32, 4)), np.zeros((32, 4))
            for j in range(words):
                regs = []
                for lane in range(32):
                    g, t = divmod(lane, 4)
                    word = (kc // codes + words * t + j) * unit
                    m, k = 8 * r + g, kc + codes * (words * t + j)
                    v = [0] * (codes // 2) if m >= rows else [int(xs[m, k + 2 * i]) | int(xs[m, k + 2 * i + 1]) << 16
                                                              for i in range(codes // 2)]
                    wa, wb = ([int(u) for u in w[row, word:word + unit]] for row in (tile * 16 + g, tile * 16 + g + 8))
                    regs.append(list(_steps(bits, *(wa, wb) if bits == 3 else (wa[0], wb[0]), v, magic, signed8, lut,
                                            bf16)))
                for step in range(len(regs[0])):
                    plane = regs[0][step][0]
                    a, b = [lane_regs[step][1] for lane_regs in regs], [lane_regs[step][2] for lane_regs in regs]
                    acc[plane] = ptx_models.mma_m16n8k16(a, b, acc[plane], bf16)
                    if plane == 0:
                        sums = ptx_models.mma_m16n8k16([[ones] * 4] * 32, b, sums, bf16)
                    if bits == 3:  # 2^p in A: the plain activations' sums
                        plain = ptx_models.mma_m16n8k16([lane_regs[step][3] for lane_regs in regs], b, plain, bf16)
            for lane in range(32):
                g, t = divmod(lane, 4)
                for e in range(4):
                    n, m = tile * 16 + g + 8 * (e >> 1), 8 * r + 2 * t + (e & 1)
                    s = float(scale[n, kc // group])
                    z = float(zero[n, kc // group]) if zero is not None else sym_zero
                    if lut is not None:
                        z, plane_offset = 0.0, 0.0  # the products are the weights' own
                    if m < rows and bits == 3:  # the offset meets the scaled activations, the zero the plain ones
                        y[m, n] += s * (acc[0, lane, e] - offset * sums[lane, e & 1] - z * plain[lane, e & 1])
                    elif m < rows:
                        y[m, n] += s * (acc[0, lane, e] + 16 * acc[1, lane, e] - (plane_offset + z) * sums[lane, e & 1])
    return y


@pytest.mark.parametrize("bits,dtype,words,group,rows,symmetric", [
    (4, torch.bfloat16, 4, 128, 3, False), (4, torch.float16, 2, 64, 9, True), (4, torch.bfloat16, 1, 32, 1, False),
    (8, torch.bfloat16, 2, 64, 2, False), (8, torch.float16, 1, 32, 1, True), ("int8", torch.bfloat16, 4, -1, 3, True),
    (2, torch.bfloat16, 2, 128, 3, False), (2, torch.float16, 1, 64, 9, True),
    (3, torch.bfloat16, 1, 128, 3, False), (3, torch.float16, 1, 128, 9, True),
])
def test_kernel_plan_reproduces_the_product(bits, dtype, words, group, rows, symmetric):
    """The kernels' data plan (canonical words -> mma fragments -> corrected sums) modelled on the CPU from the
    PTX ISA's definitions gives x @ W^T: the index plan is right before any GPU runs it."""
    seed = fresh_seed()
    cols, slice_k = 256, 128
    x = torch.randn(rows, cols, dtype=dtype)
    if bits == "int8":
        q, s = int8_absmax(torch.randn(32, cols))
        ref = x.double() @ (q.double() * s.double()).t()
        y = _plan_model(q.view(torch.int32), s, None, x, 8, cols, words, slice_k, signed8=True)
    else:
        q = rtn_quantize(torch.randn(32, cols), bits, group, symmetric)
        layer = IntLinear.from_weights(q, None)
        ref = x.double() @ q.dequantize().double().t()
        y = _plan_model(layer.qweight, layer.scale, getattr(layer, "zero", None), x, bits, group, words, slice_k)
    err = np.linalg.norm(y - ref.numpy()) / np.linalg.norm(ref.numpy())
    assert err < 1e-6, f"err={err:.2e} seed={seed}"


@pytest.mark.parametrize("quant_type,dtype,words,blocksize,rows", [
    ("nf4", torch.bfloat16, 2, 64, 3), ("fp4", torch.float16, 1, 32, 9), ("nf4", torch.float16, 4, 128, 1),
])
def test_fourbit_plan_reproduces_the_product(quant_type, dtype, words, blocksize, rows):
    """The NF4/FP4 plan (canonical bytes -> byte-pair table entries as A registers, activations as they lie as
    B, absmax per block) modelled on the CPU gives x @ W^T, W dequantized by the format's own reference."""
    seed = fresh_seed()
    cols, out = 256, 32
    layout = FourBitLayout(out, cols, quant_type, blocksize, False)
    layer = FourBitLinear.from_float(torch.randn(out, cols), None, layout)
    x = torch.randn(rows, cols, dtype=dtype)
    table = layer.code_table("cpu").to(dtype).view(torch.int16).numpy().view(np.uint16).astype(np.int64)
    lut = [int(table[b >> 4]) | int(table[b & 15]) << 16 for b in range(256)]  # cuda_mma.cu's pair, entry b
    words_of = layer.qweight.view(torch.int32).view(out, cols // 8)
    absmax = layer.absmax.view(out, cols // blocksize)
    y = _plan_model(words_of, absmax, None, x, 4, blocksize, words, 128, lut=lut)
    ref = reference.fourbit_linear(x.double(), *layer.weight_args(), layer.code_table("cpu"), blocksize, out, None)
    # the kernel rounds the table to x's type, as the model does; the reference keeps it fp32
    err = np.linalg.norm(y - ref.numpy()) / np.linalg.norm(ref.numpy())
    assert err < TOL[dtype], f"err={err:.2e} seed={seed}"


def test_selection_check_traces_without_a_graph_break(monkeypatch):
    """torch.compile keeps the kernel's availability as a constant: Dynamo neither breaks the graph on it nor
    traces into the NVRTC build (compiled decode broke 19-21 times a step when it did, kern10 run 1)."""
    def builds(_index):  # a CUDA device that builds the kernel; like the NVRTC build, nothing Dynamo can trace
        torch._dynamo.graph_break()

    monkeypatch.setattr(cuda_mma, "_build_failure", builds)
    ctx = _ctx(rows=1, device="cuda:0")  # tensors on a GPU carry its index

    def forward(x):
        reason = cuda_mma.unavailable(ctx.device, ctx.dtype, ctx.bits, ctx.rows, ctx.in_features, ctx.out_features,
                                      ctx.group_size)
        return x + 1 if reason is None else x - 1

    torch._dynamo.reset()
    explained = torch._dynamo.explain(forward)(torch.zeros(2))
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert torch.equal(torch.compile(forward, backend="eager", fullgraph=True)(torch.zeros(2)), torch.ones(2))
