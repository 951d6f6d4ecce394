"""Tile order (formats.word_tiles): the NF4/FP4, int_group and int8 weight-only layers that hold their words in it
on CUDA."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from kernel_checks import fresh_seed, sass_stats
from safetensors.torch import load, save

from lowbit.core.affine import int8_absmax, rtn_quantize
from lowbit.formats.bnb4 import bnb_tensors
from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.formats.int_group import IntGroupLayout
from lowbit.formats.nf4 import FourBitLayout
from lowbit.formats.word_tiles import to_rows, to_tiles
from lowbit.kernels import reference, triton_ops
from lowbit.kernels import select as select_module
from lowbit.kernels.cuda_mma import mma_matmul, tile_chunk
from lowbit.kernels.select import CallContext
from lowbit.modules import (
    FourBitLinear,
    Int8Linear,
    IntLinear,
    LLMInt8Linear,
    W8A8Linear,
)
from lowbit.modules.plan import prepare_kernels

CUDA = torch.device("cuda")  # order_words_for reads only the device's type: no GPU needed


def test_tile_order_puts_a_chunk_of_16_rows_together():
    """Row n's word w lands at tile n // 16, chunk w // chunk, position (n % 16) * chunk + w % chunk; to_rows undoes
    it for every dtype the formats pack into."""
    for dtype, chunk in [(torch.int32, 4), (torch.uint8, 32), (torch.int8, 16)]:
        words = torch.randint(-100, 100, (48, 96)).to(dtype)
        tiles = to_tiles(words, chunk)
        n, w = np.meshgrid(np.arange(48), np.arange(96), indexing="ij")
        expected = tiles[n // 16, w // chunk, (n % 16) * chunk + w % chunk]
        assert torch.equal(torch.from_numpy(np.asarray(expected)), words)
        assert torch.equal(to_rows(tiles), words)


@pytest.mark.parametrize("out,cols,chunk,problem", [(40, 64, 4, "multiple of 16"), (32, 96, 5, "whole chunks"),
                                                    (32, 64, -1, "chunk of -1")])
def test_shapes_without_a_tile_order_are_refused(out, cols, chunk, problem):
    with pytest.raises(ValueError, match=problem):
        to_tiles(torch.zeros(out, cols, dtype=torch.int32), chunk)
    with pytest.raises(ValueError, match=problem):  # a spec from a corrupt checkpoint, say
        FourBitLayout(out, cols * 8, "nf4", 64, True, chunk)


def _layer(double_quant: bool = True, out: int = 48, cols: int = 384) -> FourBitLinear:
    torch.manual_seed(fresh_seed())
    return FourBitLinear.from_float(torch.randn(out, cols), torch.randn(out),
                                    FourBitLayout(out, cols, "nf4", 64, double_quant))


@pytest.mark.parametrize("double_quant", [True, False])
def test_tile_order_on_cuda_row_order_elsewhere(double_quant):
    """order_words_for puts a layer in the tensor-core kernel's tile chunks for CUDA (8 words a chunk for blocks of
    64: the kernel's 2 words a thread) and back in row order for the CPU; the outputs do not change, the spec records
    the order, and a module rebuilt from that spec loads the state dict."""
    layer = _layer(double_quant)
    x = torch.randn(3, 384)
    rows_out, packed = layer(x), layer.qweight.clone()
    assert layer.order_words_for(CUDA) and not layer.order_words_for(CUDA)
    assert layer.layout.tile_chunk == 8 and layer.qweight.shape == (3, 6, 512)
    assert torch.equal(layer(x), rows_out)
    spec, state = layer.spec(), layer.state_dict()
    assert spec["tile_chunk"] == 8
    rebuilt = FourBitLinear.from_spec(spec, device="cpu")
    rebuilt.load_state_dict(state)
    assert torch.equal(rebuilt(x), rows_out)
    assert layer.order_words_for(torch.device("cpu")) and layer.layout.tile_chunk == 0
    assert torch.equal(layer.qweight, packed)


def test_layers_the_kernel_does_not_take_keep_row_order():
    """No tile order where the tensor-core kernel cannot run the layer (blocks spanning rows: 200 inputs in
    blocks of 64), so every CUDA kernel still reads rows there."""
    layer = FourBitLinear.from_float(torch.randn(32, 200), None, FourBitLayout(32, 200, "nf4", 64, True))
    assert not layer.order_words_for(CUDA) and layer.layout.tile_chunk == 0


def test_moving_a_model_and_preparing_it_set_the_order():
    """.to() of the CPU and prepare_kernels (the loaders' last step) leave row order on the CPU whatever order the
    layer came in; a layer in tile order still saves and exports bitsandbytes' row-order bytes."""
    layer = _layer()
    expected = bnb_tensors(dict(layer.named_buffers()), "nf4", 64, (48, 384), "bfloat16")
    layer.order_words(8)
    tiled = bnb_tensors(dict(layer.named_buffers()), "nf4", 64, (48, 384), "bfloat16")
    assert all(torch.equal(tiled[k], expected[k]) for k in expected)
    buffer = io.BytesIO(save(layer.state_dict()))
    assert load(buffer.getvalue())["qweight"].shape == (3, 6, 512)  # saved as held, the spec says how
    model = torch.nn.Sequential(layer)
    assert prepare_kernels(model) >= 1 and layer.layout.tile_chunk == 0
    layer.order_words(8)
    model.to("cpu")
    assert layer.layout.tile_chunk == 0


def test_selector_passes_over_cuda_mma_for_chunks_it_does_not_read():
    """A layer whose tile chunks are not the kernel's (a checkpoint tiled for another kernel, say) is refused by the
    tensor-core kernel with that reason, so the selector falls back instead of reading the words wrongly."""
    ctx = CallContext(CUDA, 1, 384, 48, torch.bfloat16, 4, 64, tile_chunk=4)
    cuda_mma = next(c for c in select_module._CANDIDATES["fourbit_linear"] if c.name == "cuda_mma")
    assert cuda_mma.unavailable(ctx) == "its words are in tile chunks of 4, the kernel reads 8"
    assert select_module._tile_chunk_differs(replace(ctx, tile_chunk=8)) is None
    assert select_module._tile_chunk_differs(replace(ctx, tile_chunk=0)) is None


def test_a_state_dict_in_either_order_loads_into_either():
    """load_state_dict takes the codes in row or tile order whatever order the layer holds (a state dict saved on
    the CPU loaded into a CUDA layer, or the reverse); a wrong size still fails."""
    layer = _layer()
    x = torch.randn(2, 384)
    expected, rows_state = layer(x), dict(layer.state_dict())
    layer.order_words(8)
    tiles_state = dict(layer.state_dict())
    for order, state in [(8, rows_state), (0, tiles_state), (8, tiles_state), (0, rows_state)]:
        target = _layer()
        target.order_words(order)
        target.load_state_dict(dict(state))
        assert target.layout.tile_chunk == order and torch.equal(target(x), expected)
    with pytest.raises(RuntimeError, match="size mismatch"):
        target.load_state_dict(dict(rows_state, qweight=rows_state["qweight"][:-2]))


@pytest.mark.parametrize("bits,symmetric", [(4, False), (2, True), (8, False), (3, False)])
def test_int_group_layers_read_alike_in_tile_order(bits, symmetric):
    """order_words_for puts an int_group layer in cuda_mma's tile chunks for CUDA (3-bit codes: chunks of 4 units, 12
    words) and back in row order for the CPU; in tile order it gives the same outputs through the CPU kernels, the same unpacked codes (exports read
    those) and the same state after a save in either order, and its spec records the order."""
    torch.manual_seed(fresh_seed())
    q = rtn_quantize(torch.randn(48, 512), bits, 128, symmetric)
    layer = IntLinear.from_weights(q, torch.randn(48))
    x = torch.randn(3, 512)
    expected, codes, rows_state = layer(x), layer.int_weights().codes, dict(layer.state_dict())
    assert layer.order_words_for(CUDA) and not layer.order_words_for(CUDA)
    assert layer.layout.tile_chunk == tile_chunk(bits, 512, 48, 128) > 0
    assert layer.qweight.dim() == 3 and layer.spec()["tile_chunk"] == layer.layout.tile_chunk
    assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.int_weights().codes, codes)
    rebuilt = IntLinear.from_spec(layer.spec(), device="cpu")
    rebuilt.load_state_dict(rows_state)  # a row-order save into a tile-order layer
    assert torch.equal(rebuilt.qweight, layer.qweight)
    assert layer.order_words_for(torch.device("cpu")) and layer.layout.tile_chunk == 0
    assert torch.equal(layer.qweight, rows_state["qweight"])


def test_int_group_shapes_the_kernel_does_not_take_keep_row_order():
    """Shapes cuda_mma does not read (outputs not a multiple of 16) stay in row order on CUDA, where the Triton
    kernels and the reference path read them."""
    for bits, out in [(3, 40), (4, 40)]:
        layer = IntLinear.from_weights(rtn_quantize(torch.randn(out, 512), bits, 128, False), None)
        assert not layer.order_words_for(CUDA) and layer.layout.tile_chunk == 0 and layer.qweight.dim() == 2


@pytest.mark.parametrize("path", ["mma", "mv", "tc"])
def test_fake_outputs_have_the_layers_outputs_in_tile_order(path):
    """torch.compile traces the custom ops through their fake implementations: a layer in tile order (qweight
    (out / 16, chunks, 16 chunk)) still gives (rows, out)."""
    layer = IntLinear.from_weights(rtn_quantize(torch.randn(48, 512), 4, 128, False), torch.randn(48))
    layer.order_words(tile_chunk(4, 512, 48, 128))
    meta = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in layer.weight_args()]
    x = torch.empty(3, 512, device="meta", dtype=torch.float16)
    qweight, scale, zero, bits, group = meta
    assert triton_ops.int_group_mm(x, qweight, scale, zero, None, bits, group, path).shape == (3, 48)
    int8 = Int8Linear.from_int8(*int8_absmax(torch.randn(48, 512)), None)
    int8.order_words(tile_chunk(8, 512, 48, 512))
    qweight, scale = (t.to("meta") for t in int8.weight_args())
    assert triton_ops.int8_weight_mm(x, qweight, scale, None, path).shape == (3, 48)


def test_int8_weight_only_layers_read_alike_in_tile_order():
    """order_words_for puts an int8 weight-only layer in cuda_mma's tile chunks (16 words: 64 bytes of a row) for
    CUDA and back in row order for the CPU, with the same outputs and state either way; the W8A8 and LLM.int8
    layers, whose integer kernels read rows, keep row order on CUDA."""
    torch.manual_seed(fresh_seed())
    q, s = int8_absmax(torch.randn(48, 512))
    layer = Int8Linear.from_int8(q, s, torch.randn(48))
    x = torch.randn(3, 512)
    expected, rows_state = layer(x), dict(layer.state_dict())
    assert layer.layout.tile_chunk == 0 and layer.order_words_for(CUDA) and layer.layout.tile_chunk == tile_chunk(8, 512, 48, 512) == 16
    assert layer.qweight.shape == (3, 8, 1024) and layer.spec()["tile_chunk"] == 16
    assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(reference.int8_weight_linear(x, *layer.weight_args(), layer.bias),
                       reference.int8_weight_linear(x, q, s, layer.bias))
    rebuilt = Int8Linear.from_spec(layer.spec(), device="cpu")
    rebuilt.load_state_dict(rows_state)  # a row-order save into a tile-order layer
    assert torch.equal(rebuilt.qweight, layer.qweight)
    assert layer.order_words_for(torch.device("cpu")) and torch.equal(layer.qweight, rows_state["qweight"])
    for other in (W8A8Linear.from_calibrated(q, s, 0.02, None), LLMInt8Linear.from_int8(q, s, None)):
        assert not other.order_words_for(CUDA) and other.qweight.shape == (48, 512)


def test_split_units_and_foreign_chunks_are_refused():
    """A 3-bit chunk must hold whole units of 3 words; a layer whose chunks are not cuda_mma's is refused by its
    selector check and by the kernel's own launch, naming the fix."""
    with pytest.raises(ValueError, match="a chunk of 4 words splits 3-bit units"):
        IntGroupLayout(48, 512, 3, 128, False, 4)
    ctx = CallContext(CUDA, 1, 512, 48, torch.bfloat16, 4, 128, tile_chunk=8)
    cuda_mma = next(c for c in select_module._CANDIDATES["int_group_linear"] if c.name == "cuda_mma")
    assert cuda_mma.unavailable(ctx) == "its words are in tile chunks of 8, the kernel reads 16"
    words = torch.zeros(3, 8, 128, dtype=torch.int32)  # 48 x 64 words in chunks of 8
    with pytest.raises(ValueError, match="tile chunks of 8, the kernel reads 16: put the layer back in row order"):
        mma_matmul(torch.zeros(1, 512, dtype=torch.bfloat16), words, torch.ones(48, 4).half(), None, None, 4, 128)
    int8_ctx = CallContext(CUDA, 1, 512, 48, torch.bfloat16, 8, tile_chunk=8)  # int8 weight-only: one scale a row
    int8_mma = next(c for c in select_module._CANDIDATES["int8_weight_linear"] if c.name == "cuda_mma")
    assert int8_mma.unavailable(int8_ctx) == "its words are in tile chunks of 8, the kernel reads 16"
    with pytest.raises(ValueError, match="in tile order: a row's 128 words are not whole chunks of 48"):
        Int8RowLayout(48, 512, 48)


@pytest.mark.parametrize("bits,chunk", [(8, 16), (4, 16), (2, 8)])
def test_tensor_core_kernel_loads_tile_order_as_wide_as_rows(bits, chunk):
    """The Triton tensor-core kernel for 2-, 4- and 8-bit codes (_mm_bytes, 16 rows) compiled for sm_90 here: its
    global loads in tile order are as wide and as few as in row order (byte offsets split once by 4 * chunk; split
    by word first, they compiled to 4-byte copies, twice as many as 8-byte ones: docs/kern19.md)."""
    rows, tiles = (stats["global_loads"] for stats in _mm_bytes_stats(bits, {}, {"TILE": chunk}))
    assert any(op.startswith("LDGSTS.E.64") or op.endswith(".128") for op in rows), rows
    assert tiles == rows


@pytest.mark.parametrize("bits", [8, 4])
def test_tensor_core_kernel_with_pdl_reads_nothing_before_the_wait(bits):
    """_mm_bytes with PDL (auto's up to 16 rows on sm_90: kern21) compiled for sm_90 here: griddepcontrol.wait comes
    before any memory access of its PTX and the next launch is let start once; without PDL neither instruction is
    there."""
    with_pdl, without = (stats["programmatic"] for stats in _mm_bytes_stats(bits, {"PDL": True}, {}))
    assert with_pdl["waits"] >= 1 and with_pdl["launches_after_wait"] >= 1, with_pdl
    assert with_pdl["accesses_before_wait"] == 0, with_pdl
    assert without == {"waits": 0, "launches": 0, "accesses_before_wait": None, "launches_after_wait": None}


def _mm_bytes_stats(bits: int, *changes: dict) -> list[dict]:
    """sass_stats for _mm_bytes (16 rows, 3 stages, `bits`-bit codes, with zeros below 8 bits) with each of
    `changes` to its constexprs."""
    flags = {"num_stages": 3, "BITS": bits}
    if bits < 8:
        flags |= {"HAS_ZERO": True, "SIGNED8": False, "OFFSET": 128}
    return sass_stats("mm_bytes", *(flags | change for change in changes))
