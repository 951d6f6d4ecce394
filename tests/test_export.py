"""Export layouts and refusals: GPTQ v1, AWQ GEMM, compressed-tensors pack-quantized, bitsandbytes 4-bit."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_one_line_error, seeded
from export_fixture import make_folder
from lowbit.core.affine import rtn_quantize
from lowbit.errors import LowbitError
from lowbit.formats.awq_gemm import pack_awq, unpack_awq
from lowbit.formats.bitpack import pack_dense, unpack_dense
from lowbit.formats.gptq_v1 import pack_gptq, unpack_gptq
from lowbit.formats.pack_quantized import pack_ct, unpack_ct
from lowbit.io.export import export


@pytest.fixture(scope="module")
def folders(stories, tmp_path_factory):
    root = tmp_path_factory.mktemp("lowbit")
    names = ("rtn4", "rtn4_all", "rtn_float_zero", "nf4", "hqq")
    return {n: make_folder(stories.model, stories.tokenizer, n, root / n) for n in names}


def _weights(bits: int, symmetric: bool, out: int = 64, cols: int = 96, group: int = 32):
    return rtn_quantize(torch.randn(out, cols, generator=seeded(bits)), bits, group, symmetric, integer_zero=True)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_dense_packing_is_compressed_tensors_packing(bits):
    ct = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    codes = torch.randint(0, 2**bits, (5, 172), generator=seeded(bits), dtype=torch.uint8)
    ours = pack_dense(codes, bits)
    theirs = ct.pack_to_int32((codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8), bits)
    assert torch.equal(ours, theirs)
    assert torch.equal(unpack_dense(ours, bits, 172), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_and_ct_layouts_round_trip_bit_for_bit(bits, symmetric):
    w = _weights(bits, symmetric)
    w.zero = None if symmetric else w.zero.clamp(min=1)  # GPTQ v1 holds zeros >= 1
    g = unpack_gptq(pack_gptq(w), bits, 32)
    assert torch.equal(g.codes, w.codes) and torch.equal(g.scale, w.scale)
    assert torch.equal(g.dequantize(), w.dequantize())  # symmetric zeros come back explicit
    c = unpack_ct(pack_ct(w), bits, 32)
    assert torch.equal(c.codes, w.codes) and torch.equal(c.dequantize(), w.dequantize())


def test_awq_layout_matches_autoawq_packing():
    w = _weights(4, False)
    packed = pack_awq(w)
    back = unpack_awq(packed, 32)
    assert torch.equal(back.codes, w.codes) and torch.equal(back.dequantize(), w.dequantize())
    utils = pytest.importorskip("awq.utils.packing_utils", reason="AutoAWQ is not installed")
    theirs = utils.dequantize_gemm(packed["qweight"], packed["qzeros"], packed["scales"], 4, 32)  # (in, out) fp16
    assert torch.equal(theirs, w.dequantize().T.half())  # AutoAWQ's fp16 product: lowbit's value, rounded once


@pytest.mark.parametrize("fmt, folder, pattern", [
    ("gptq", "rtn_float_zero", "zero points are fractional"),
    ("awq", "rtn_float_zero", "zero points are fractional"),
    ("compressed-tensors", "hqq", "zero points are fractional"),
    ("gptq", "rtn4_all", "172 outputs are not a multiple of 8"),
    ("awq", "rtn4_all", "172 outputs are not a multiple of 8"),
    ("gptq", "nf4", "FourBitLinear"),
    ("bnb-nf4", "rtn4", "IntLinear weights are not NF4/FP4 codes"),
])
def test_weights_a_format_cannot_hold_are_refused(folders, tmp_path, fmt, folder, pattern):
    with pytest.raises(LowbitError, match=pattern):
        export(folders[folder], fmt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_inputs_are_one_line_errors(folders, stories_path, tmp_path, run_cli):
    assert_one_line_error(run_cli("export", folders["rtn4"], "--format", "exl2", "--out", tmp_path / "o"),
                          "unknown export format 'exl2'")
    assert_one_line_error(run_cli("export", stories_path, "--format", "gptq", "--out", tmp_path / "o"),
                          "not a lowbit output folder")
    (tmp_path / "taken").mkdir()
    assert_one_line_error(run_cli("export", folders["rtn4"], "--format", "gptq", "--out", tmp_path / "taken"),
                          "already exists")


def test_gptq_export_writes_the_configs_loaders_read(folders, tmp_path, run_cli):
    code, out, _ = run_cli("export", folders["rtn4"], "--format", "gptq", "--out", tmp_path / "g")
    assert code == 0 and "exported" in out
    config = json.loads((tmp_path / "g" / "config.json").read_text())["quantization_config"]
    assert config == json.loads((tmp_path / "g" / "quantize_config.json").read_text())
    assert (config["quant_method"], config["checkpoint_format"], config["bits"], config["group_size"]) == ("gptq", "gptq", 4, 32)
    assert config["modules_in_block_to_quantize"] == [sorted(f"self_attn.{p}_proj" for p in "qkvo")]
    assert "-:^model\\.layers\\.0\\.mlp\\.down_proj$" in config["dynamic"]
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "g" / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj"
    assert tensors[f"{q}.qweight"].shape == (64 * 4 // 32, 64) and tensors[f"{q}.scales"].shape == (2, 64)
    assert torch.equal(tensors[f"{q}.g_idx"], torch.arange(64, dtype=torch.int32) // 32)
    assert tensors["model.layers.0.mlp.up_proj.weight"].dtype == torch.float32  # kept float
