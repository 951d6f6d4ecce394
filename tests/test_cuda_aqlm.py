"""The CUDA tensor-core AQLM kernel (kernels/cuda_aqlm.cu) against an fp64 reference, and its selection.

The kernel runs only on a CUDA GPU (NVRTC builds it there): those tests skip elsewhere. Its plan (modelled lane by
lane from the PTX fragment layouts), its sm_90 build, the shape checks and the selector's reasons run everywhere.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import ptx_models
import pytest
import torch
from kernel_checks import compile_and_capture, fresh_seed, sm90_usage

from lowbit.core.aqlm import AQLMWeights
from lowbit.kernels import cuda_aqlm, reference, triton_ops
from lowbit.kernels.select import CallContext, select
from lowbit.modules import AQLMLinear

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="the CUDA AQLM kernel needs a CUDA GPU")
DTYPES = (torch.float16, torch.bfloat16)
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _layer(m: int, nbits: int, out: int, cols: int, bias: bool = True) -> AQLMLinear:
    codes = torch.randint(0, 2**nbits, (out, cols // 8, m))  # (out, G, M)
    w = AQLMWeights(codes, torch.randn(m, 2**nbits, 8) / m, torch.rand(out, 1) + 0.5, cols)
    return AQLMLinear.from_weights(w, torch.randn(out) if bias else None)


def _check_against_reference(m: int, nbits: int, config: dict | None, out: int = 16 * 5) -> None:
    """Every row count to 8, fp16 and bf16, with and without bias, K over one warp and over several slices a warp,
    outputs that leave the last block's tiles partly past N."""
    seed = fresh_seed()
    for cols, bias in ((256, False), (2560, True)):
        layer = _layer(m, nbits, out, cols, bias).to("cuda")
        for rows, dtype in itertools.product((1, 2, 3, 7, 8), DTYPES):
            x = torch.randn(rows, cols, device="cuda", dtype=dtype) * 3
            ref = reference.aqlm_linear(x.double(), *layer.weight_args(), layer.bias.double() if bias else None)
            y = cuda_aqlm.aqlm_mma(x, *layer.weight_args(), layer.bias, config)
            assert y.dtype == dtype and torch.isfinite(y).all(), f"{m}x{nbits} rows={rows} {config} seed={seed}"
            err = ((y.double() - ref).norm() / ref.norm()).item()
            assert err < TOL[dtype], f"{m}x{nbits} K={cols} rows={rows} {dtype} {config} err={err:.2e} seed={seed}"


@gpu
@pytest.mark.parametrize("m,nbits", [(2, 8), (1, 8), (2, 6), (1, 16), (1, 12)])
@pytest.mark.parametrize("config", [None, {"TILES": 4, "WARPS": 4}, {"TILES": 2, "WARPS": 8},
                                    {"TILES": 2, "WARPS": 4, "EARLY": 1}])
def test_aqlm_mma_matches_reference(m, nbits, config):
    """1x8, 2x8 and 2x6 codebooks in shared memory, 1x16 and 1x12 read from global memory, against fp64."""
    _check_against_reference(m, nbits, config)


@gpu
@pytest.mark.parametrize("nbits", [16, 12])
@pytest.mark.parametrize("config", [{"BUCKETS": 1, "WARPS": 16, "TILES": 1}, {"BUCKETS": 5, "WARPS": 8, "TILES": 2},
                                    {"BUCKETS": 6, "WARPS": 4, "TILES": 1}])
def test_aqlm_16bit_codebook_matches_reference(nbits, config):
    """1x16 (and 1x12: codes past 4096 absent) read from global memory (BUCKETS 1) or split in code ranges, one a
    block's shared memory; 61 tiles make the blocks of a range move on to further tile groups."""
    _check_against_reference(1, nbits, config, out=16 * 61)


@gpu
def test_aqlm_split_codebook_adds_partials_on_the_host_without_counters(monkeypatch):
    """When no arrival counters can be had (first call inside a graph capture), the ranges' partials are added up
    after the launch, with the same result."""
    layer = _layer(1, 16, 16 * 9, 512).to("cuda")
    x = torch.randn(3, 512, device="cuda", dtype=torch.bfloat16)
    split = {"BUCKETS": 5, "WARPS": 2, "TILES": 2}
    fixed_up = cuda_aqlm.aqlm_mma(x, *layer.weight_args(), layer.bias, split)
    monkeypatch.setattr(cuda_aqlm, "counters_for", lambda device, tiles: None)
    on_host = cuda_aqlm.aqlm_mma(x, *layer.weight_args(), layer.bias, split)
    assert torch.allclose(fixed_up.float(), on_host.float(), rtol=1e-2, atol=1e-2)


@gpu
def test_aqlm_auto_takes_the_kernel_up_to_8_rows_then_falls_back():
    layer = _layer(2, 8, 64, 512).to("cuda")
    for rows in (1, 8):
        x = torch.randn(rows, 512, device="cuda", dtype=torch.bfloat16)
        assert layer.kernel(x).name == "cuda_mma"
        assert torch.equal(layer(x), cuda_aqlm.aqlm_mma(x, *layer.weight_args(), layer.bias))
    assert layer.kernel(torch.randn(9, 512, device="cuda", dtype=torch.bfloat16)).name != "cuda_mma"
    odd = _layer(2, 8, 64, 512 + 8).to("cuda")  # K not a multiple of 256
    assert odd.kernel(torch.randn(1, 520, device="cuda", dtype=torch.bfloat16)).name != "cuda_mma"


@gpu
def test_aqlm_mma_opcheck_compile_and_graph_capture():
    layer = _layer(2, 8, 16 * 8, 1024).to("cuda")
    x = torch.randn(3, 1024, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(triton_ops.aqlm_mm, (x, *layer.weight_args(), layer.bias, "mma"),
                          test_utils=("test_schema", "test_faketensor"))
    layer.kernel_preference = "cuda_mma"
    compile_and_capture(layer, x)


@pytest.mark.parametrize("change,reason", [
    ({"rows": 9}, "more than 8 rows"), ({"in_features": 264}, "multiple of 256"), ({"out_features": 40}, "of 16"),
    ({"codebooks": 2, "bits": 16}, "one of <= 16"), ({"bits": 17, "codebooks": 1}, "one of <= 16"),
    ({"group_size": 16}, "codewords of 16"),
    ({"dtype": torch.float32}, "fp16/bf16"), ({"device": torch.device("cpu")}, "CUDA devices"),
])
def test_aqlm_mma_says_why_it_cannot_run(change, reason):
    ctx = dict(device=torch.device("cuda", 0), dtype=torch.bfloat16, rows=1, in_features=512, out_features=64,
               codebooks=2, bits=8, group_size=8) | change
    got = cuda_aqlm.unavailable(**{k: ctx[k] for k in ("device", "dtype", "rows", "in_features", "out_features")},
                                num_codebooks=ctx["codebooks"], nbits=ctx["bits"], group_size=ctx["group_size"])
    assert got is not None and reason in got
    if CUDA or ctx["device"].type == "cpu":
        call = CallContext(ctx["device"], ctx["rows"], ctx["in_features"], ctx["out_features"], ctx["dtype"],
                           ctx["bits"], ctx["group_size"], codebooks=ctx["codebooks"])
        assert select("aqlm_linear", call, "auto").name != "cuda_mma"


@pytest.mark.parametrize("m,bf16", [(2, True), (1, False)])
def test_aqlm_plan_reproduces_the_product(m, bf16):
    """One warp, one tile, one 256-input slice, modelled lane by lane as cuda_aqlm.cu feeds mma.sync: lane (g, t)
    takes group 8t + p of outputs g and g + 8, its codebooks' codewords summed pair by pair (the A registers of
    two k-steps) and the activations of that group as they lie (the B registers). The products must be the
    format's. Codewords and activations are small integers, so every sum is exact in 16 bits."""
    rng = np.random.default_rng(0)
    dtype = np.float32 if bf16 else np.float16
    books = rng.integers(-8, 8, (m, 256, 8)).astype(np.float64)  # (M, K, 8)
    codes = rng.integers(0, 256, (16, 32, m))  # (out, G, M): one tile, one slice
    x = rng.integers(-4, 4, (8, 256)).astype(np.float64)  # (rows, in)
    w = books[np.arange(m), codes].sum(axis=2).reshape(16, 256)  # (out, in)

    def regs(values):  # 8 values -> 4 registers of 16-bit pairs (low half first)
        raw = np.asarray(values, dtype=dtype).view(np.uint32 if bf16 else np.uint16)
        bits = (raw >> 16) if bf16 else raw
        return [int(bits[2 * i]) | int(bits[2 * i + 1]) << 16 for i in range(4)]

    acc = np.zeros((32, 4))
    for p in range(8):
        a_steps, b_steps = [[], []], [[], []]
        for lane in range(32):
            g, t = divmod(lane, 4)
            j = 8 * t + p
            wa = regs(books[np.arange(m), codes[g, j]].sum(axis=0))
            wb = regs(books[np.arange(m), codes[g + 8, j]].sum(axis=0))
            xs = regs(x[g, 8 * j: 8 * j + 8])
            a_steps[0].append([wa[0], wb[0], wa[1], wb[1]]), b_steps[0].append(xs[:2])
            a_steps[1].append([wa[2], wb[2], wa[3], wb[3]]), b_steps[1].append(xs[2:])
        for s in range(2):
            acc = ptx_models.mma_m16n8k16(a_steps[s], b_steps[s], acc, bf16)
    y = w @ x.T  # (out, rows)
    for lane in range(32):
        g, t = divmod(lane, 4)
        assert list(acc[lane]) == [y[g, 2 * t], y[g, 2 * t + 1], y[g + 8, 2 * t], y[g + 8, 2 * t + 1]]


@pytest.mark.parametrize("cols,out", [(4096, 14336), (14336, 4096), (4096, 1024)])
@pytest.mark.parametrize("m,nbits", [(2, 8), (1, 16)])
def test_chosen_specializations_build_for_sm90_without_spills(cols, out, m, nbits):
    """The shapes auto picks for the Llama-3-8B layers compile, with no register spills and within 227 KB of shared
    memory a block."""
    spec = cuda_aqlm.specialization(m, cols, out, sms=132, nbits=nbits)
    _, _, log = sm90_usage(cuda_aqlm.SOURCE, spec)  # its register count is read from the log, so it is there
    assert not re.search(r"[1-9]\d* bytes spill", log), log
    assert cuda_aqlm.block_shared_bytes(spec) <= 227 * 1024


@pytest.mark.parametrize("m,nbits", [(2, 8), (1, 16)])
def test_min_blocks_reaches_the_build(m, nbits):
    """A config's MIN_BLOCKS reaches the kernels' __launch_bounds__ (cuda_common.cuh's LAUNCH_BOUNDS): at 1 a lone
    block of 4096x1024's 64 may take more registers than the build without a count gives it, unspilled."""
    spec = {k: v for k, v in cuda_aqlm.specialization(m, 4096, 1024, sms=132, nbits=nbits).items() if k != "MIN_BLOCKS"}
    plain, _, _ = sm90_usage(cuda_aqlm.SOURCE, spec)
    lone, spills, log = sm90_usage(cuda_aqlm.SOURCE, spec | {"MIN_BLOCKS": 1})
    assert lone > plain and spills == 0, log


@pytest.mark.parametrize("cols,out,sms,one_block", [(4096, 1024, 132, True), (4096, 4096, 132, False),
                                                  (4096, 2048, 132, True), (4096, 2048, 100, False)])
def test_16bit_codebook_launches_of_one_wave_build_one_block(cols, out, sms, one_block):
    """1x16 launches reading codewords from L2 with no more blocks than multiprocessors build for one block a
    multiprocessor (kern31: 4096x1024 1.24x bf16 against 1.12x); 4096x4096's 256 blocks do not (0.86x against 0.89x),
    nor do 8-bit codebooks (2x8 4096x14336 2.35-2.38x with it against 2.98-3.00x)."""
    spec = cuda_aqlm.specialization(1, cols, out, sms=sms, nbits=16)
    assert (spec.get("MIN_BLOCKS") == 1) == one_block
    assert "MIN_BLOCKS" not in cuda_aqlm.specialization(2, cols, out, sms=sms, nbits=8)


@pytest.mark.parametrize("cols,out,buckets", [(4096, 1024, 1), (4096, 4096, 1), (4096, 14336, 5), (14336, 4096, 5),
                                              (4096, 128256, 5)])
def test_16bit_codebooks_split_in_ranges_on_large_layers(cols, out, buckets):
    """1x16 reads codewords from L2 on layers of at most 2**24 weights and splits the codes in 5 ranges above
    (faster there, kern16 run 6), unless a block cannot have the shared memory a range takes (an A100's 163 KB)."""
    assert cuda_aqlm.specialization(1, cols, out, sms=132, nbits=16)["BUCKETS"] == buckets
    spec = cuda_aqlm.specialization(1, cols, out, sms=108, nbits=16, shared_limit=163 * 1024)
    assert spec["BUCKETS"] == 1 and cuda_aqlm.block_shared_bytes(spec) <= 163 * 1024


@pytest.mark.parametrize("cols,out,tiles,early", [(4096, 1024, 1, True), (4096, 4096, 2, False),
                                                  (4096, 14336, 4, False), (14336, 4096, 2, False)])
def test_one_tile_blocks_load_their_first_slice_early(cols, out, tiles, early):
    """Blocks of one output tile (layers too narrow to fill the GPU otherwise) request each warp's first slice before
    the codebook copy (faster on 4096x1024, kern15 run 9); wider blocks keep it after (slower with it)."""
    cfg = cuda_aqlm.choose_config(cols, out, sms=132)
    assert cfg["TILES"] == tiles and bool(cfg.get("EARLY")) == early


@pytest.mark.parametrize("nbits,buckets", [(8, 1), (16, 1), (16, 5)])
def test_programmatic_launch_reads_nothing_before_the_wait(nbits, buckets):
    """With PDL (auto's on sm_90: kern21) the AQLM kernels read nothing before griddepcontrol.wait (no load, store,
    cp.async or atomic ahead of it) and let the next launch start before their sums meet; without PDL neither
    instruction is there."""
    spec = cuda_aqlm.specialization(1 if nbits == 16 else 2, 4096, 4096, 132, nbits=nbits,
                                    config={"BUCKETS": buckets} if nbits == 16 else None)
    pdl = cuda_aqlm.nvrtc.programmatic_ptx(cuda_aqlm.nvrtc.ptx_offline(cuda_aqlm.SOURCE, spec | {"PDL": 1}))
    assert pdl["waits"] and pdl["accesses_before_wait"] == 0, "a memory access first"
    assert pdl["launches_after_wait"]
    assert "griddepcontrol" not in cuda_aqlm.nvrtc.ptx_offline(cuda_aqlm.SOURCE, spec)


@gpu
@pytest.mark.parametrize("m,nbits,config", [(2, 8, {"PDL": 1}), (1, 16, {"PDL": 1, "BUCKETS": 5, "WARPS": 8, "TILES": 2})])
def test_programmatic_launches_wait_for_the_kernel_ahead(m, nbits, config):
    """Six launches in a chain, each reading the one before's output, captured in a CUDA graph with PDL (the split
    1x16 kernel adds its ranges' partials through the shared counters): the same bits as launched in line."""
    layer = _layer(m, nbits, 2048, 2048).to("cuda")
    x0 = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)

    def chain(cfg) -> list[torch.Tensor]:
        outs = [x0]
        for _ in range(6):
            outs.append(cuda_aqlm.aqlm_mma(outs[-1], *layer.weight_args(), layer.bias, cfg))
        return outs

    expected = chain({k: v for k, v in config.items() if k != "PDL"})
    chain(config)  # builds the PDL specialization outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = chain(config)
    graph.replay()
    torch.cuda.synchronize()
    for i, (got, want) in enumerate(zip(outs[1:], expected[1:])):
        assert torch.isfinite(want).all() and torch.equal(got, want), f"launch {i + 1} of the chain differs"
