"""Triton kernels vs an fp64 reference over awkward shapes, fresh random inputs each run.

On a CUDA machine they run compiled at larger sizes; elsewhere under Triton's interpreter
(TRITON_INTERPRET=1) at small sizes. Skipped when Triton is not importable.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from kernel_checks import compile_and_capture, fresh_seed, import_triton, sass_stats

CUDA = torch.cuda.is_available()
import_triton()

from lowbit.core.affine import int8_absmax, rtn_quantize  # noqa: E402
from lowbit.kernels import reference, triton_ops  # noqa: E402
from lowbit.kernels.select import CallContext, select  # noqa: E402
from lowbit.core.aqlm import AQLMWeights  # noqa: E402
from lowbit.formats.nf4 import FourBitLayout  # noqa: E402
from lowbit.formats.word_tiles import row_order  # noqa: E402
from lowbit.modules import AQLMLinear, FourBitLinear, Int8Linear, IntLinear, W8A8Linear  # noqa: E402
import ptx_models  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
IN, OUT = (2100, 333) if CUDA else (200, 37)  # not multiples of any block or of the group size
ROWS = (1, 2, 3, 7, 16, 33, 128)
DTYPES = (torch.float16, torch.bfloat16) if CUDA else (torch.float16,)  # the interpreter's bf16 dot is wrong
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


pytestmark = pytest.mark.usefixtures("triton_interpreter")


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
    """Either Triton kernel at 1, 7 and 33 rows (the matrix-vector one at 1 and 7 under the interpreter, which runs
    one of its programs a row: 33 rows took 29 s of 3-bit's 38 on a 2-core CPU)."""
    seed = fresh_seed()
    layer, ref_w = _int_layer(bits, group, symmetric)
    mv_fits = group != 50  # the matrix-vector kernel needs K tiles inside one group
    for kernel in ("triton_mv", "triton_tc"):
        layer.kernel_preference = kernel
        for rows in ((1, 7) if kernel == "triton_mv" and not CUDA else (1, 7, 33)):
            for dtype in DTYPES:
                ran = _check_int(layer, ref_w, rows, dtype, seed)
                assert ran == (kernel if mv_fits else "triton_tc")


LOAD_SCHEDULES = ({"STAGES": 0, "PREFETCH": 1}, {"STAGES": 0, "PREFETCH": 2}, {"STAGES": 2}, {"STAGES": 4})


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("width", [IN, 2048 if CUDA else 256])
def test_gemv_load_schedules_and_splits_match_reference(bits, width):
    """The matrix-vector kernel with every load schedule (one or two tiles ahead in registers, or 1 and 3
    tiles ahead through the software pipeliner), K whole or split in two or three (rounds that overrun K,
    clamped prefetches), a partial last tile (width IN is no multiple of the group) or whole tiles (inputs
    loaded as int64 words)."""
    from lowbit.kernels.triton_gemv import int_group_gemv

    seed = fresh_seed()
    q = rtn_quantize(torch.randn(OUT, width), bits, 64, False)
    layer = IntLinear.from_weights(q, torch.randn(OUT)).to(DEVICE)
    ref_w = q.dequantize().double().to(DEVICE)  # (out, width)
    for schedule, split in itertools.product(LOAD_SCHEDULES, (1, 2, 3)):
        x = torch.randn(1, width, device=DEVICE, dtype=torch.float16)
        ref = x.double() @ ref_w.t() + layer.bias.double()
        _poison(1, OUT)
        y = int_group_gemv(x, layer.qweight, layer.scale, layer.zero, layer.bias, bits, 64,
                           config=schedule | {"SPLIT_K": split})
        err = _rel_err(y, ref)
        assert err < TOL[torch.float16], f"bits={bits} {schedule} split={split} err={err:.2e} seed={seed}"


@pytest.mark.parametrize("rows", ROWS)
def test_int4_every_row_count_with_auto_choice(rows):
    seed = fresh_seed()
    layer, ref_w = _int_layer(4, 128, False, bias=rows % 2 == 0)
    layer.kernel_preference = "triton"
    for dtype in DTYPES:
        kernel = _check_int(layer, ref_w, rows, dtype, seed)
        assert kernel == ("triton_mv" if rows <= triton_ops.GEMV_MAX_ROWS else "triton_tc")


@pytest.mark.parametrize("rows", [1, 3, 16, 33, 128])
def test_int8_weight_only_matches_reference(rows):
    seed = fresh_seed()
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


@pytest.mark.parametrize("bits,group,symmetric", [(2, 64, False), (3, 50, False), (4, 128, False), (4, -1, True),
                                                 (8, 64, False)])
def test_dequant_cublas_writes_the_reference_weights(bits, group, symmetric):
    """triton_dequant writes every weight exactly as the reference path does (row order, then cuda_mma's tile order),
    and a layer through dequant_cublas matches fp64 at 2 and 33 rows."""
    from lowbit.kernels.cuda_mma import tile_chunk
    from lowbit.kernels.triton_dequant import int_group_dequantize

    seed = fresh_seed()
    out, cols = (336, 2048) if CUDA else (48, 512)  # tile order needs whole 16-output tiles and chunks
    for shape in ((OUT, IN), (out, cols)):
        q = rtn_quantize(torch.randn(*shape), bits, group, symmetric)
        layer = IntLinear.from_weights(q, torch.randn(shape[0])).to(DEVICE)
        args = (layer.scale, getattr(layer, "zero", None), bits, layer.layout.group_size, shape[1])
        if shape == (out, cols):  # a group of 50 inputs has no tile order: it stays in row order
            layer.order_words(tile_chunk(bits, cols, out, layer.layout.group_size))
            assert layer.qweight.dim() == (2 if group == 50 else 3)
        for dtype, config in itertools.product(DTYPES, (None, {"BN": 32, "BK": 256, "num_warps": 2})):
            ref = reference._dequantize_int(row_order(layer.qweight), *args, dtype)
            w = int_group_dequantize(layer.qweight, *args, dtype, config=config)
            assert torch.equal(w, ref), f"{shape} {dtype} {config} seed={seed}"
        layer.kernel_preference = "dequant_cublas"
        ref_w = q.dequantize().double().to(DEVICE)
        for rows in (2, 33):
            x = torch.randn(rows, shape[1], device=DEVICE, dtype=torch.float16)
            _poison(rows, shape[0])
            assert layer.kernel(x).name == "dequant_cublas"
            err = _rel_err(layer(x), x.double() @ ref_w.t() + layer.bias.double())
            assert err < TOL[torch.float16], f"{shape} rows={rows} err={err:.2e} seed={seed}"


def test_dequant_kernels_build_for_sm90_without_spills():
    """triton_dequant's kernels compiled for an H100 here (Triton's ptxas): every code width, tile order, groups
    across a tile, and NF4 with and without double quantization, all in registers (no local-memory stack)."""
    int_specs = ({}, {"BITS": 3}, {"BITS": 2}, {"BITS": 8, "SIGNED8": True, "HAS_ZERO": False, "OFFSET": 0},
                 {"TILE": 16}, {"PER_TILE": False})
    for spec, stats in zip(int_specs, sass_stats("dequant_int", *int_specs)):
        assert stats["stack"] == 0, (spec, stats)
    for stats in sass_stats("dequant_fourbit", {}, {"DOUBLE": False}, {"TILE": 8}):
        assert stats["stack"] == 0, stats


@pytest.mark.parametrize("op,bits,min_rows", [("int_group_linear", 4, 257), ("int_group_linear", 3, 256),
                                              ("int_group_linear", 2, 256), ("int8_weight_linear", 8, 257),
                                              ("fourbit_linear", 4, 256)])
def test_auto_takes_dequant_cublas_from_its_rows(op, bits, min_rows):
    """Auto's dequant_cublas rule (select._dequant_unsuited): the tensor-core kernel below min_rows, dequant_cublas
    from there; a layer over DEQUANT_MAX_WEIGHTS stays on the tensor-core kernel while that runs (NF4: to 1024 rows;
    beyond, the reference path would write an fp32 copy, so dequant_cublas takes it)."""
    from lowbit.kernels.select import DEQUANT_MAX_WEIGHTS

    def chosen(rows: int, out: int) -> str:
        return select(op, CallContext(DEVICE, rows, 4096, out, torch.float16, bits, 128 if bits < 8 else 4096)).name

    assert chosen(min_rows - 1, 4096) == "triton_tc"
    assert chosen(min_rows, 4096) == chosen(4096, 4096) == "dequant_cublas"
    huge = DEQUANT_MAX_WEIGHTS // 4096 + 16  # outputs, whole tiles of 16
    assert chosen(min_rows, huge) == "triton_tc"
    assert chosen(triton_ops.FOURBIT_TC_ROWS, huge) == "triton_tc"
    assert chosen(triton_ops.FOURBIT_TC_ROWS + 1, huge) == ("dequant_cublas" if op == "fourbit_linear" else "triton_tc")


def test_dequant_cublas_int8_weight_only():
    """int8 weight-only's signed bytes through triton_dequant: the reference weights exactly, in row and tile order."""
    from lowbit.kernels.cuda_mma import tile_chunk
    from lowbit.kernels.triton_dequant import int_group_dequantize

    seed = fresh_seed()
    out, cols = (336, 2048) if CUDA else (48, 512)
    q, s = int8_absmax(torch.randn(out, cols))
    layer = Int8Linear.from_int8(q, s, torch.randn(out)).to(DEVICE)
    layer.kernel_preference = "dequant_cublas"
    for chunk in (0, tile_chunk(8, cols, out, cols)):
        layer.order_words(chunk)
        for dtype in DTYPES:
            words = layer.qweight.contiguous().view(torch.int32)
            w = int_group_dequantize(words, layer.scale, None, 8, cols, cols, dtype, signed8=True)
            assert torch.equal(w, (q.float() * s.float()).to(DEVICE, dtype)), f"chunk={chunk} {dtype} seed={seed}"
            x = torch.randn(33, cols, device=DEVICE, dtype=dtype)
            ref = reference.int8_weight_linear(x.double(), layer.qweight, layer.scale, layer.bias.double())
            assert layer.kernel(x).name == "dequant_cublas"
            err = _rel_err(layer(x), ref)
            assert err < TOL[dtype], f"chunk={chunk} err={err:.2e} seed={seed}"


@pytest.mark.parametrize("rows", [1, 7, 33])
def test_w8a8_kernel_matches_emulation_exactly(rows):
    seed = fresh_seed()
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
                        (triton_ops.int8_weight_mm, (*args8, "dq")), (triton_ops.int_group_mm, (*args, "mv")),
                        (triton_ops.int_group_mm, (*args, "dq"))):
        torch.library.opcheck(op, op_args, test_utils=("test_schema", "test_faketensor"))


def _int8_layer() -> Int8Linear:
    q8, s8 = int8_absmax(torch.randn(OUT, IN - IN % 4))  # int8 rows are read as int32 words
    return Int8Linear.from_int8(q8, s8, None).to(DEVICE)


_TRACED = {  # one layer per Triton op family
    "int4": lambda: _int_layer(4, 128, False)[0],
    "int8": _int8_layer,
    "nf4": lambda: FourBitLinear.from_float(torch.randn(OUT, IN8), None,
                                            FourBitLayout(OUT, IN8, "nf4", 64, True)).to(DEVICE),
    "aqlm": lambda: _aqlm_layer(2, 8, 8),
}


@pytest.mark.parametrize("name", sorted(_TRACED))
def test_quantized_forward_traces_as_one_graph(name):
    """torch.compile sees the automatic kernel choice and the custom op as one graph at 1 row (matrix-vector
    kernels) and 2 rows (the selector logs the candidates it skips): no graph break (kern6 saw one in run_kernel)."""
    layer = _TRACED[name]()
    dtype = torch.bfloat16 if CUDA else torch.float16
    for rows in (1, 2):
        x = torch.randn(rows, layer.in_features, device=DEVICE, dtype=dtype)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(layer)(x)
        assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
        assert explained.graph_count == 1
        compiled = torch.compile(layer, fullgraph=True, backend="inductor" if CUDA else "aot_eager")(x)
        assert torch.allclose(compiled.float(), layer(x).float(), rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(not CUDA, reason="torch.compile and CUDA graphs of the kernels need a CUDA GPU")
def test_torch_compile_and_cuda_graph_capture():
    layer, ref_w = _int_layer(4, 128, False)
    layer.kernel_preference = "triton"
    for rows in (1, 16):  # the matrix-vector and the tensor-core kernel
        compile_and_capture(layer, torch.randn(rows, IN, device=DEVICE, dtype=torch.bfloat16))
    int8 = _int8_layer()
    int8.kernel_preference = "triton"
    for rows in (1, 16):
        compile_and_capture(int8, torch.randn(rows, int8.in_features, device=DEVICE, dtype=torch.bfloat16))


ROWS_CODEBOOK = ROWS[:-1] if CUDA else (1, 2, 7)  # the interpreter runs one program per row: a few on the CPU
IN8 = IN - IN % 8  # the NF4/FP4 kernel reads eight codes per int32 word of a row


FOURBIT_LAYOUTS = [("nf4", True, 64), ("nf4", False, 64), ("fp4", True, 64), ("nf4", True, 40)]  # 40: blocks span rows


@pytest.mark.parametrize("quant_type,double_quant,blocksize", FOURBIT_LAYOUTS)
def test_fourbit_kernel_matches_reference(quant_type, double_quant, blocksize):
    seed = fresh_seed()
    layer = FourBitLinear.from_float(torch.randn(OUT, IN8), torch.randn(OUT),
                                     FourBitLayout(OUT, IN8, quant_type, blocksize, double_quant)).to(DEVICE)
    table = layer.code_table(DEVICE)
    for kernel, rows, dtype in itertools.product(("triton_mv", "triton_tc"), ROWS_CODEBOOK, DTYPES):
        layer.kernel_preference = kernel  # either kernel at every row count
        x = torch.randn(rows, IN8, device=DEVICE, dtype=dtype)
        ref = reference.fourbit_linear(x.double(), *layer.weight_args(), table, blocksize, OUT, layer.bias.double())
        _poison(rows, OUT)
        assert layer.kernel(x).name == kernel
        err = _rel_err(layer(x), ref)
        assert err < TOL[dtype], f"{quant_type} {kernel} rows={rows} err={err:.2e} seed={seed}"


@pytest.mark.parametrize("quant_type,double_quant,blocksize", FOURBIT_LAYOUTS)
def test_dequant_cublas_fourbit(quant_type, double_quant, blocksize):
    """NF4/FP4 through triton_dequant (row order, and tile order where blocks lie in rows): the reference weights to
    within one step of the 16-bit type (a fused multiply-add may round double quantization's absmax once where the
    reference rounds twice), and a layer through dequant_cublas against the reference at 2 and 33 rows."""
    from lowbit.kernels.triton_dequant import fourbit_dequantize

    seed = fresh_seed()
    out, cols = (336, 2816) if CUDA else (48, 384)
    layer = FourBitLinear.from_float(torch.randn(out, cols), torch.randn(out),
                                     FourBitLayout(out, cols, quant_type, blocksize, double_quant)).to(DEVICE)
    layer.order_words(0)
    table = layer.code_table(DEVICE)
    eye = torch.eye(cols, dtype=torch.float64, device=DEVICE)
    ref_w = reference.fourbit_linear(eye, *layer.weight_args(), table, blocksize, out, None).t()  # fp32 values
    layer.kernel_preference = "dequant_cublas"
    for chunk in (0, 8) if blocksize == 64 else (0,):
        layer.order_words(chunk)
        for dtype in DTYPES:
            w = fourbit_dequantize(*layer.weight_args(), table, blocksize, out, cols, dtype)
            step = torch.finfo(dtype).eps * ref_w.abs()
            assert ((w.double() - ref_w).abs() <= step).all(), f"chunk {chunk} {dtype} seed={seed}"
            for rows in (2, 33):
                x = torch.randn(rows, cols, device=DEVICE, dtype=dtype)
                ref = x.double() @ ref_w.t() + layer.bias.double()
                _poison(rows, out)
                assert layer.kernel(x).name == "dequant_cublas"
                err = _rel_err(layer(x), ref)
                assert err < TOL[dtype], f"{quant_type} chunk {chunk} rows={rows} err={err:.2e} seed={seed}"


@pytest.mark.parametrize("rows,lookup", [(40, "gather"), (130, "gather"), (7, "prmt"), (130, "prmt")])
def test_fourbit_tensor_core_tiles_above_16_rows(rows, lookup):
    """The NF4 tensor-core kernel's tiles (fourbit_tc_config: 16, 64 and 128 rows a program, the last one partial),
    in row order and in tile order, the table read by byte permutes in registers (LOOKUP "prmt", auto's) or by
    gathers, against the reference."""
    from lowbit.kernels.triton_fourbit import fourbit_matmul

    seed = fresh_seed()
    out, cols = (336, 2816) if CUDA else (144, 384)
    layer = FourBitLinear.from_float(torch.randn(out, cols), torch.randn(out),
                                     FourBitLayout(out, cols, "nf4", 64, True)).to(DEVICE)
    layer.order_words(0)
    row_args, table = layer.weight_args(), layer.code_table(DEVICE)
    x = torch.randn(rows, cols, device=DEVICE, dtype=torch.float16)
    ref = reference.fourbit_linear(x.double(), *row_args, table, 64, out, layer.bias.double())
    for chunk in (0, 8):
        layer.order_words(chunk)
        _poison(rows, out)
        y = fourbit_matmul(x, *layer.weight_args(), table, 64, out, layer.bias, "tc", config={"LOOKUP": lookup})
        err = _rel_err(y, ref)
        assert err < TOL[torch.float16], f"{lookup} chunk {chunk} rows={rows} err={err:.2e} seed={seed}"


@pytest.mark.parametrize("double_quant", [True, False])
def test_fourbit_kernels_read_tile_order(double_quant):
    """Both Triton NF4 kernels on a layer in tile order (formats.word_tiles, chunks of 8 words: what a CUDA layer
    holds), every row count, against the reference (which reads either order) and the row-order layer."""
    seed = fresh_seed()
    out, cols = (336, 2816) if CUDA else (48, 384)
    layer = FourBitLinear.from_float(torch.randn(out, cols), torch.randn(out),
                                     FourBitLayout(out, cols, "nf4", 64, double_quant)).to(DEVICE)
    layer.order_words(0)
    row_args = layer.weight_args()  # the row order, for the reference
    layer.order_words(8)
    assert layer.qweight.dim() == 3
    table = layer.code_table(DEVICE)
    for kernel, rows, dtype in itertools.product(("triton_mv", "triton_tc"), ROWS_CODEBOOK, DTYPES):
        layer.kernel_preference = kernel
        x = torch.randn(rows, cols, device=DEVICE, dtype=dtype)
        ref = reference.fourbit_linear(x.double(), *row_args, table, 64, out, layer.bias.double())
        _poison(rows, out)
        assert layer.kernel(x).name == kernel
        err = _rel_err(layer(x), ref)
        assert err < TOL[dtype], f"tile order {kernel} rows={rows} err={err:.2e} seed={seed}"


@pytest.mark.parametrize("bits,symmetric", [(4, False), (2, True), (8, False), (3, False)])
def test_int_kernels_read_tile_order(bits, symmetric):
    """The matrix-vector kernel and the tensor-core one (its byte path and its word path) on an int_group layer in
    tile order (formats.word_tiles, cuda_mma's chunks), every row count, against the layer's fp64 weights."""
    from lowbit.kernels.cuda_mma import tile_chunk
    from lowbit.kernels.triton_int import int_group_matmul

    seed = fresh_seed()
    out, cols, group = (336, 2048, 128) if CUDA else (48, 512, 128)
    q = rtn_quantize(torch.randn(out, cols), bits, group, symmetric)
    layer = IntLinear.from_weights(q, torch.randn(out)).to(DEVICE)
    ref_w = q.dequantize().double().to(DEVICE)
    layer.order_words(tile_chunk(bits, cols, out, group))
    assert layer.qweight.dim() == 3
    zero = getattr(layer, "zero", None)
    paths = [("triton_mv", None), ("triton_tc", None)] + ([("words", {"BYTES": False})] if bits != 8 else [])
    for (kernel, config), rows in itertools.product(paths, ROWS_CODEBOOK):
        x = torch.randn(rows, cols, device=DEVICE, dtype=torch.float16)
        ref = x.double() @ ref_w.t() + layer.bias.double()
        _poison(rows, out)
        if config is None:
            layer.kernel_preference = kernel
            assert layer.kernel(x).name == kernel
            y = layer(x)
        else:  # _mm_tc: the tuned tile with the word path
            from lowbit.kernels.triton_int import tc_config
            y = int_group_matmul(x, layer.qweight, layer.scale, zero, layer.bias, bits, group,
                                 config=tc_config(rows, out, cols, bits, False) | config)
        err = _rel_err(y, ref)
        assert err < TOL[torch.float16], f"tile order {bits}-bit {kernel} rows={rows} err={err:.2e} seed={seed}"


@pytest.mark.parametrize("bits,symmetric,extra", [(4, False, {}), (3, False, {}), (4, True, {}),
                                                  (4, False, {"XTMA": True})])
def test_tc_kernel_subtracts_whole_zeros_in_16_bits(bits, symmetric, extra):
    """_mm_tc with SUB16 (zero subtracted in 16 bits, scale after each tile's product) on whole-number zeros (gptq's,
    awq's, rtn's integer_zero), and with x's tiles fetched through a TMA descriptor (XTMA), matches the layer's
    fp64 weights at every row count."""
    from lowbit.kernels.triton_int import int_group_matmul, tc_config

    seed = fresh_seed()
    out, cols, group = (336, 2048, 128) if CUDA else (48, 512, 128)
    q = rtn_quantize(torch.randn(out, cols), bits, group, symmetric, integer_zero=True)
    layer = IntLinear.from_weights(q, torch.randn(out)).to(DEVICE)
    ref_w = q.dequantize().double().to(DEVICE)
    for rows, dtype in itertools.product(ROWS_CODEBOOK, DTYPES):
        x = torch.randn(rows, cols, device=DEVICE, dtype=dtype)
        config = tc_config(rows, out, cols, bits) | {"BYTES": False, "SUB16": True} | extra
        y = int_group_matmul(x, layer.qweight, layer.scale, getattr(layer, "zero", None), layer.bias, bits, group,
                             config=config)
        err = _rel_err(y, x.double() @ ref_w.t() + layer.bias.double())
        assert err < TOL[dtype], f"{bits}-bit rows={rows} {dtype} err={err:.2e} seed={seed}"


@pytest.mark.parametrize("bits,symmetric,extra", [(4, False, {}), (3, False, {}), (4, True, {}),
                                                  (4, False, {"XTMA": True})])
def test_tc_kernel_dequantizes_whole_zeros_in_16_bits(bits, symmetric, extra):
    """_mm_tc with W16 (whole-number zeros: gptq's, awq's, rtn's integer_zero; each weight dequantized in 16-bit
    arithmetic as its codes unpack) gives fp16 outputs bit for bit equal to the fp32 dequantization's (both round
    each weight once) and bf16 ones within the fp64 tolerance, at every row count."""
    from lowbit.kernels.triton_int import int_group_matmul, tc_config

    seed = fresh_seed()
    out, cols, group = (336, 2048, 128) if CUDA else (48, 512, 128)
    q = rtn_quantize(torch.randn(out, cols), bits, group, symmetric, integer_zero=True)
    layer = IntLinear.from_weights(q, torch.randn(out)).to(DEVICE)
    ref_w = q.dequantize().double().to(DEVICE)
    zero = getattr(layer, "zero", None)
    for rows, dtype in itertools.product((1, 33, 128) if CUDA else (1, 7, 33), DTYPES):
        x = torch.randn(rows, cols, device=DEVICE, dtype=dtype)
        config = tc_config(rows, out, cols, bits) | {"BYTES": False, "DEQUANT": True} | extra
        y16, y32 = (int_group_matmul(x, layer.qweight, layer.scale, zero, layer.bias, bits, group,
                                     config=config | {"W16": w16}) for w16 in (True, False))
        if dtype == torch.float16:
            assert torch.equal(y16, y32), f"{bits}-bit rows={rows} seed={seed}"
        err = _rel_err(y16, x.double() @ ref_w.t() + layer.bias.double())
        assert err < TOL[dtype], f"{bits}-bit rows={rows} {dtype} err={err:.2e} seed={seed}"


@pytest.mark.parametrize("bits", [4, 3])
def test_tc_kernel_dequantizes_with_one_fma(bits):
    """_mm_tc with FMA32 (fractional zeros: each weight (OFFSET + c) s - (OFFSET + z) s in one fp32 fma) matches the
    layer's fp64 weights and the fp32 dequantization's outputs to within a few units of the last place."""
    from lowbit.kernels.triton_int import int_group_matmul, tc_config

    seed = fresh_seed()
    out, cols = (336, 2048) if CUDA else (48, 512)
    q = rtn_quantize(torch.randn(out, cols), bits, 128, False)
    layer = IntLinear.from_weights(q, torch.randn(out)).to(DEVICE)
    ref_w = q.dequantize().double().to(DEVICE)
    for rows, dtype in itertools.product((33, 128) if CUDA else (7, 33), DTYPES):
        x = torch.randn(rows, cols, device=DEVICE, dtype=dtype)
        config = tc_config(rows, out, cols, bits) | {"BYTES": False, "DEQUANT": True}
        y_fma, y32 = (int_group_matmul(x, layer.qweight, layer.scale, layer.zero, layer.bias, bits, 128,
                                       config=config | {"FMA32": fma}) for fma in (True, False))
        err = _rel_err(y_fma, x.double() @ ref_w.t() + layer.bias.double())
        assert err < TOL[dtype], f"{bits}-bit rows={rows} {dtype} err={err:.2e} seed={seed}"
        assert _rel_err(y_fma, y32.double()) < TOL[dtype] / 4, f"{bits}-bit rows={rows} {dtype} seed={seed}"


@pytest.mark.parametrize("bits", [4, 3, 2, 8])
def test_tc_kernel_reads_x_through_tma_where_aligned(bits):
    """Auto's tile from 65 rows (int4: to 128; int3) fetches x through a TMA descriptor (XTMA), and so does the byte
    kernel (2 and 8 bits) when told; an x that starts off a 16-byte boundary takes the pointer loads instead. Both
    match the layer's fp64 weights."""
    from lowbit.kernels.triton_int import int_group_matmul, tc_config, tma_aligned

    seed = fresh_seed()
    out, cols, rows = (336, 2048, 96) if CUDA else (48, 512, 96)
    config = tc_config(rows, out, cols, bits) | {"XTMA": True}
    if bits in (3, 4):  # auto's own choice
        assert tc_config(rows, out, cols, bits)["XTMA"] and not tc_config(64, out, cols, bits).get("XTMA")
    q = rtn_quantize(torch.randn(out, cols), bits, 128, False)
    layer = IntLinear.from_weights(q, torch.randn(out)).to(DEVICE)
    ref_w = q.dequantize().double().to(DEVICE)
    for dtype in DTYPES:
        storage = torch.randn(rows * cols + 1, device=DEVICE, dtype=dtype)
        for x in (storage[:-1].view(rows, cols), storage[1:].view(rows, cols)):
            y = int_group_matmul(x, layer.qweight, layer.scale, layer.zero, layer.bias, bits, 128, config=config)
            err = _rel_err(y, x.double() @ ref_w.t() + layer.bias.double())
            assert err < TOL[dtype], f"{bits}-bit aligned={tma_aligned(x)} {dtype} err={err:.2e} seed={seed}"
    assert not tma_aligned(storage[1:].view(rows, cols))


def test_int8_weight_only_kernels_read_tile_order():
    """Both Triton kernels on an int8 weight-only layer in tile order (cuda_mma's chunks of 16 words, what a CUDA
    layer holds), every row count, against the row-order codes in fp64."""
    from lowbit.kernels.cuda_mma import tile_chunk

    seed = fresh_seed()
    out, cols = (336, 2048) if CUDA else (48, 512)
    q, s = int8_absmax(torch.randn(out, cols))
    layer = Int8Linear.from_int8(q, s, torch.randn(out)).to(DEVICE)
    layer.order_words(tile_chunk(8, cols, out, cols))
    assert layer.qweight.dim() == 3
    ref_w = (q.double() * s.double()).to(DEVICE)
    for kernel, rows in itertools.product(("triton_mv", "triton_tc"), ROWS_CODEBOOK):
        layer.kernel_preference = kernel
        x = torch.randn(rows, cols, device=DEVICE, dtype=torch.float16)
        ref = x.double() @ ref_w.t() + layer.bias.double()
        _poison(rows, out)
        assert layer.kernel(x).name == kernel
        err = _rel_err(layer(x), ref)
        assert err < TOL[torch.float16], f"tile order int8 {kernel} rows={rows} err={err:.2e} seed={seed}"


FOURBIT_SCHEDULES = ({"LOOKUP": "gather", "STAGES": 0, "X64": False}, {"LOOKUP": "gather", "STAGES": 3, "X64": False},
                     {"LOOKUP": "prmt", "STAGES": 0, "X64": True}, {"LOOKUP": "prmt", "STAGES": 3, "X64": True},
                     {"LOOKUP": "prmt", "STAGES": 0, "X64": False})


def _schedules_and_splits(turn: int) -> list[tuple[dict, int]]:
    """(schedule, K slices) pairs: every pair on a GPU; under the interpreter (slow on CI's CPUs) each schedule once,
    K whole and split in three taking turns from `turn`, so that two layouts in a row meet every pair."""
    if CUDA:
        return list(itertools.product(FOURBIT_SCHEDULES, (1, 3)))
    return [(schedule, (1, 3)[(i + turn) % 2]) for i, schedule in enumerate(FOURBIT_SCHEDULES)]


@pytest.mark.parametrize("quant_type,double_quant,blocksize", FOURBIT_LAYOUTS)
@pytest.mark.parametrize("out,width", [(OUT, IN8), (512, 3072) if CUDA else (256, 192)])
def test_fourbit_gemv_lookups_and_schedules_match_reference(quant_type, double_quant, blocksize, out, width):
    """The matrix-vector kernel with either table lookup (byte permutes in registers, or gathers from memory),
    either load schedule (one tile ahead in registers, or through the software pipeliner), inputs as int64
    words or one by one, K whole or split in three (rounds that overrun K), fp16 or bf16 inputs, at partial
    tiles (OUT x IN8) or whole ones (unmasked loads: BN divides out and the tile count is a multiple of 3).
    (_schedules_and_splits: on a GPU all pairs, under the interpreter a layout's turn of them.)"""
    from lowbit.kernels.triton_fourbit import fourbit_matmul

    seed = fresh_seed()
    layout = FourBitLayout(out, width, quant_type, blocksize, double_quant)
    layer = FourBitLinear.from_float(torch.randn(out, width), torch.randn(out), layout).to(DEVICE)
    args = (*layer.weight_args(), layer.code_table(DEVICE), blocksize, out)
    for schedule, split in _schedules_and_splits(FOURBIT_LAYOUTS.index((quant_type, double_quant, blocksize))):
        dtype = torch.bfloat16 if split == 3 else torch.float16  # both input dtypes with every schedule
        x = torch.randn(1, width, device=DEVICE, dtype=dtype)
        ref = reference.fourbit_linear(x.double(), *args, layer.bias.double())
        _poison(1, out)
        y = fourbit_matmul(x, *args, layer.bias, "mv", config=schedule | {"SPLIT_K": split})
        err = _rel_err(y, ref)
        assert err < TOL[dtype], f"{quant_type} {schedule} split={split} {dtype} err={err:.2e} seed={seed}"


def test_prmt_matches_the_ptx_definition():
    """triton_fourbit._prmt (the instruction on a GPU, its emulation under the interpreter) on random words and
    selectors (sign-replicating nibbles and bits 16-31 included) against prmt.b32 as the PTX ISA defines it."""
    import numpy as np
    from fourbit_probes import prmt_probe

    from lowbit.kernels.triton_splitk import interpreting

    rng = np.random.default_rng(fresh_seed())
    a, b, c = rng.integers(0, 2**32, size=(3, 512), dtype=np.uint64).astype(np.uint32)
    words = [torch.from_numpy(v.view(np.int32).copy()).to(DEVICE) for v in (a, b, c)]
    out = torch.empty(512, dtype=torch.int32, device=DEVICE)
    prmt_probe[(1,)](*words, out, N=512, ASM=not interpreting())
    expected = [ptx_models.prmt(int(ai), int(bi), int(ci)) for ai, bi, ci in zip(a, b, c)]
    assert out.cpu().numpy().view(np.uint32).tolist() == expected


@pytest.mark.parametrize("flip", [False, True])
def test_byte_conversion_asm_gives_the_fp32_magic_values(flip):
    """triton_int._bytes_asm run line by line (xor, and prmt as the PTX ISA defines it) on random words: output i
    is the fp32 bit pattern of 2**23 + byte i (byte i ^ 0x80 for int8 weight-only's signed codes)."""
    import re
    import struct

    from lowbit.kernels.triton_int import _bytes_asm

    rng = torch.Generator().manual_seed(fresh_seed())
    for word in torch.randint(0, 2**32, (64,), generator=rng, dtype=torch.int64).tolist():
        regs = {"$4": word}
        for line in _bytes_asm(flip).splitlines():
            if m := re.match(r"xor\.b32 (\S+), (\S+), (\w+);", line):
                regs[m[1]] = regs[m[2]] ^ int(m[3], 16)
            elif m := re.match(r"prmt\.b32 (\S+), (\S+), (\w+), (\w+);", line):
                regs[m[1]] = ptx_models.prmt(regs[m[2]], int(m[3], 16), int(m[4], 16))
        for i in range(4):
            code = (word >> 8 * i) & 0xFF ^ (0x80 if flip else 0)
            assert struct.unpack("<f", regs[f"${i}"].to_bytes(4, "little"))[0] == 2.0**23 + code


def _run_w16_asm(asm: str, regs: dict, bf16: bool) -> dict:
    """triton_int._nibble_w16_asm's statements run one by one on PTX models; regs holds $8-$11, gains $0-$7."""
    import re

    def val(op: str) -> int:
        return int(op, 0) if op[0].isdigit() else regs[op]

    for stmt in (st.strip() for st in asm.strip("{} \n").split(";")):
        if not stmt or stmt.startswith(".reg"):
            continue
        opcode, ops = stmt.split(None, 1)
        if m := re.match(r"\{(\$\d), (\$\d)\}, (\w+)", ops):  # mov.b32 {lo, hi}, pair
            regs[m[1]], regs[m[2]] = regs[m[3]] & 0xFFFF, regs[m[3]] >> 16
            continue
        d, *src = [o.strip() for o in ops.split(",")]
        a = [val(o) for o in src]
        regs[d] = {"mov.b32": lambda: a[0], "shr.u32": lambda: a[0] >> a[1],
                   "prmt.b32": lambda: ptx_models.prmt(*a), "lop3.b32": lambda: ptx_models.lop3(*a),
                   "mul.rn.f16x2": lambda: ptx_models.mul_x2(a[0], a[1], bf16)}.get(
            opcode, lambda: ptx_models.fma_x2(*a[:3], bf16))()
    return regs


@pytest.mark.parametrize("bf16", [False, True])
def test_w16_asm_dequantizes_with_one_rounding(bf16):
    """_nibble_w16_asm (16-bit dequantization of 4-bit codes with whole-number zeros, W16) run line by line on the
    PTX ISA's definitions: output j is s (c_j - z) rounded once to fp16 exactly as the fp32 path rounds it; in bf16
    (the fp16 scale in two exact parts, t s_hi + round(t s_lo) rounded once) it differs only by one unit in the
    last place where the exact product lies within 2^-16 of a rounding tie."""
    import numpy as np

    from lowbit.kernels.triton_int import _nibble_w16_asm

    rng = np.random.default_rng(fresh_seed())
    dt, offset = (torch.bfloat16, 128) if bf16 else (torch.float16, 1024)
    asm, ties = _nibble_w16_asm(bf16), 0
    scales = (rng.uniform(0.5, 1.0, 400) * 2.0 ** rng.integers(-14, 2, 400)).astype(np.float16)
    for s in scales:
        z, word = int(rng.integers(0, 16)), int(rng.integers(0, 2**32))
        s_hi = float(torch.tensor(float(s)).to(dt))
        regs = {"$8": word, "$9": ptx_models.round16(-(offset + z), bf16) * 0x10001,
                "$10": ptx_models.round16(s_hi, bf16) * 0x10001,
                "$11": ptx_models.round16(float(s) - s_hi, bf16) * 0x10001}
        regs = _run_w16_asm(asm, regs, bf16)
        for j in range(8):
            code = (word >> 4 * j) & 15
            exact = (code - z) * float(s)
            want = torch.tensor(exact, dtype=torch.float32).to(dt).view(torch.int16).item() & 0xFFFF
            if regs[f"${j}"] == want:
                continue
            ties += 1
            assert bf16 and abs(regs[f"${j}"] - want) == 1, f"s={s} z={z} code={code}"
            got = ptx_models.halves(regs[f"${j}"], True)[0]
            assert abs(got - exact) <= abs(exact) * 2.0**-8 * (1 + 2.0**-7), "more than a tie's half unit"
    assert ties <= 8, f"{ties} of 3200 weights off by one unit"


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_fourbit_register_lookup_decodes_every_code(quant_type):
    """The byte-permute lookup over words of random codes (every code in every position): each code's table
    value rounded to fp16, exactly."""
    from fourbit_probes import decode_probe

    from lowbit.core.codebook import code_table
    from lowbit.formats.nf4 import pack_nibbles
    from lowbit.kernels.triton_splitk import interpreting

    fresh_seed()
    codes = torch.randint(0, 16, (1024, 8), dtype=torch.uint8)  # (words, codes of a word)
    words = pack_nibbles(codes).view(torch.int32).to(DEVICE)  # (1024,): the format's bytes, little-endian
    table = code_table(quant_type, DEVICE)
    out = torch.empty(1024, 8, device=DEVICE)
    decode_probe[(1,)](words, table, out, N=1024, ASM=not interpreting())
    assert torch.equal(out.cpu(), table.cpu().half().float()[codes.long()])


def _aqlm_layer(m: int, nbits: int, g: int) -> AQLMLinear:
    cols = IN + 3  # a partial last group
    codes = torch.randint(0, 2**nbits, (OUT, -(-cols // g), m))  # (out, G, M)
    w = AQLMWeights(codes, torch.randn(m, 2**nbits, g) / m, torch.rand(OUT, 1) + 0.5, cols)
    return AQLMLinear.from_weights(w, torch.randn(OUT)).to(DEVICE)


@pytest.mark.parametrize("m,nbits,g,kernel", [(2, 8, 8, "triton_lut"), (2, 8, 8, "triton_gather"),
                                              (1, 16, 8, "triton_gather"), (1, 8, 4, "triton_lut")])
def test_aqlm_kernels_match_reference(m, nbits, g, kernel):
    seed = fresh_seed()
    layer = _aqlm_layer(m, nbits, g)
    layer.kernel_preference = kernel
    for rows in ROWS_CODEBOOK:
        for dtype in DTYPES:
            x = torch.randn(rows, layer.in_features, device=DEVICE, dtype=dtype)
            ref = reference.aqlm_linear(x.double(), *layer.weight_args(), layer.bias.double())
            _poison(rows, OUT)
            assert layer.kernel(x).name == kernel
            err = _rel_err(layer(x), ref)
            assert err < TOL[dtype], f"{m}x{nbits} {kernel} rows={rows} err={err:.2e} seed={seed}"


def test_codebook_kernels_auto_choice_and_fallback():
    """auto: AQLM's lookup-table kernel for 8-bit codebooks and wide outputs, gathers otherwise, reference above
    the row limit; NF4 on CUDA cores at one row, tensor cores above; the reference where a layout does not fit."""
    small = _aqlm_layer(2, 8, 8)  # fewer outputs than AQLM_LUT_MIN_OUT
    assert small.kernel(torch.randn(1, IN + 3, device=DEVICE, dtype=torch.float16)).name == "triton_gather"
    wide = CallContext(DEVICE, 1, 4096, triton_ops.AQLM_LUT_MIN_OUT, torch.float16, 8, 8)
    assert select("aqlm_linear", wide).name == "triton_lut"
    layer = _aqlm_layer(1, 16, 8)
    assert layer.kernel(torch.randn(1, IN + 3, device=DEVICE, dtype=torch.float16)).name == "triton_gather"
    many = torch.randn(triton_ops.AQLM_MAX_ROWS + 1, IN + 3, device=DEVICE, dtype=torch.float16)
    assert layer.kernel(many).name == "reference"
    odd = FourBitLinear.from_float(torch.randn(8, 60), None, FourBitLayout(8, 60, "nf4", 64, True)).to(DEVICE)
    odd.kernel_preference = "triton"
    assert odd.kernel(torch.randn(1, 60, device=DEVICE, dtype=torch.float16)).name == "reference"  # 60 % 8
    nf4 = FourBitLinear.from_float(torch.randn(8, 64), None, FourBitLayout(8, 64, "nf4", 64, True)).to(DEVICE)
    for rows in (1, 2):
        name = nf4.kernel(torch.randn(rows, 64, device=DEVICE, dtype=torch.float16)).name
        assert name == ("triton_mv" if rows <= triton_ops.FOURBIT_MV_ROWS else "triton_tc")
    many_nf4 = CallContext(DEVICE, triton_ops.FOURBIT_TC_ROWS + 1, 64, 8, torch.float16, 4, 64)
    assert select("fourbit_linear", many_nf4).name == "dequant_cublas"
    assert select("fourbit_linear", many_nf4, "reference").name == "reference"


def test_codebook_custom_ops_pass_opcheck():
    fourbit = FourBitLinear.from_float(torch.randn(OUT, IN8), None, FourBitLayout(OUT, IN8, "nf4", 64, True)).to(DEVICE)
    x = torch.randn(2, IN8, device=DEVICE, dtype=torch.float16)
    for path in ("mv", "tc", "dq"):
        args = (x, *fourbit.weight_args(), fourbit.code_table(DEVICE), 64, OUT, None, path)
        torch.library.opcheck(triton_ops.fourbit_mm, args, test_utils=("test_schema", "test_faketensor"))
    aqlm = _aqlm_layer(2, 8, 8)
    xa = torch.randn(2, aqlm.in_features, device=DEVICE, dtype=torch.float16)
    for kernel in ("lut", "gather"):
        torch.library.opcheck(triton_ops.aqlm_mm, (xa, *aqlm.weight_args(), None, kernel),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(not CUDA, reason="torch.compile and CUDA graphs of the kernels need a CUDA GPU")
def test_codebook_kernels_compile_and_capture():
    fourbit = FourBitLinear.from_float(torch.randn(OUT, IN8), None, FourBitLayout(OUT, IN8, "nf4", 64, True)).to(DEVICE)
    for rows in (1, 3):  # the matrix-vector and the tensor-core kernel
        compile_and_capture(fourbit, torch.randn(rows, IN8, device=DEVICE, dtype=torch.bfloat16))
    for m, nbits in ((2, 8), (1, 16)):
        layer = _aqlm_layer(m, nbits, 8)
        compile_and_capture(layer, torch.randn(3, layer.in_features, device=DEVICE, dtype=torch.bfloat16))


@pytest.mark.parametrize("bits,shifts", [(2, 2), (3, 6), (4, 2), (8, 3)])
def test_gemv_code_placement_decodes_every_code(bits, shifts):
    """The matrix-vector kernel's shift plan: off_j + code read back exactly from fp32, with few shifts per unit."""
    import numpy as np

    from lowbit.kernels.triton_gemv import _code_offset, _place
    from lowbit.kernels.triton_int import unit_shape

    uc, uw = unit_shape(bits)
    rng = np.random.default_rng(fresh_seed())
    words = rng.integers(0, 2**32, size=(64, uw), dtype=np.uint64)  # (samples, words of one unit)
    bitstream = sum(words[:, i].astype(object) << (32 * i) for i in range(uw))
    used = set()
    for j in range(uc):
        if (bits * j) % 32 + bits > 32:
            continue  # codes straddling two words take their own path
        word, shift, pos = _place(bits, j)
        used.add((word, shift)) if shift else None
        assert 11 - 3 * (bits == 8) <= pos <= 23 - bits
        w = words[:, word].astype(np.int64) - (words[:, word] >= 2**31) * 2**32  # signed, as in the kernel
        v = (w << shift) if shift >= 0 else (w >> -shift)
        f = (((v & (((1 << bits) - 1) << pos)) | ((150 - pos) << 23)) & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
        code = np.array([(b >> (bits * j)) & ((1 << bits) - 1) for b in bitstream], dtype=np.float64)
        np.testing.assert_array_equal(f.astype(np.float64) - _code_offset(bits, j), code)
    assert len(used) == shifts
