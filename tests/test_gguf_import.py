"""GGUF import without re-quantization: GGML blocks -> lowbit layers bit for bit, on a stories260k GGUF file."""

import pytest
import torch

from conftest import assert_one_line_error, seeded
from gguf_fixture import write_stories_gguf
from lowbit.core.affine import dequantize_affine
from lowbit.formats.ggml import BLOCK_TYPES, decode_blocks
from lowbit.io.gguf_import import import_gguf
from lowbit.io.sources import load_model
from lowbit.kernels.select import select
from lowbit.modules import IntLinear, IntOffsetLinear, QuantizedEmbedding, set_kernel_preference

gguf = pytest.importorskip("gguf")


def _dequantized(layer) -> torch.Tensor:
    if isinstance(layer, IntOffsetLinear):
        return layer.dequantize()
    return layer.int_weights().dequantize()


@pytest.mark.parametrize("type_name", sorted(BLOCK_TYPES))
def test_blocks_decode_to_llama_cpp_values_bit_for_bit(type_name):
    w = torch.randn(6, 96, generator=seeded(1)).numpy() * 3
    w[1, :32] = 0.25  # a constant block (scale 0)
    qtype = gguf.GGMLQuantizationType[type_name]
    raw = gguf.quantize(w, qtype)  # (6, 3 * block bytes) uint8
    blocks = decode_blocks(raw, type_name)
    if blocks.offset is None:
        mine = dequantize_affine(blocks.codes, blocks.scale, None, blocks.bits, 32)
    else:
        mine = IntOffsetLinear.from_codes(blocks.codes, blocks.scale, blocks.offset, blocks.bits, 32).dequantize()
    assert torch.equal(mine, torch.from_numpy(gguf.dequantize(raw, qtype)))


@pytest.mark.parametrize("bits", [4, 5])
def test_offset_linear_kernels_and_spec(bits):
    codes = torch.randint(0, 2**bits, (48, 96), generator=seeded(bits), dtype=torch.uint8)
    scale, offset = torch.rand(48, 3, generator=seeded(2)).half() / 8, -torch.rand(48, 3, generator=seeded(3)).half()
    bias = torch.randn(48, generator=seeded(4))
    layer = IntOffsetLinear.from_codes(codes, scale, offset, bits, 32, bias)
    x = torch.randn(5, 96, generator=seeded(5))
    expected = torch.nn.functional.linear(x, layer.dequantize(), bias)
    assert select(layer.op, layer.call_context(5, x.device)).name == ("int4_cpu" if bits == 4 else "int4x2_cpu")
    fast = layer(x)  # bf16 activations and zero terms inside: ~2**-9 relative error; a wrong convention is O(1)
    assert ((fast - expected).norm() / expected.norm()).item() < 1e-2
    layer.kernel_preference = "reference"
    torch.testing.assert_close(layer(x), expected)
    empty = IntOffsetLinear.from_spec(layer.spec(), device="cpu")
    assert {n: b.shape for n, b in empty.named_buffers()} == {n: b.shape for n, b in layer.named_buffers()}
    assert layer.packed_bytes() == sum(b.nbytes for n, b in layer.named_buffers() if n != "bias")


@pytest.fixture(scope="module")
def stories_gguf(stories_path, tmp_path_factory):
    return write_stories_gguf(stories_path, tmp_path_factory.mktemp("gguf") / "stories-q4_1.gguf")


@pytest.fixture(scope="module")
def gguf_float(stories_gguf):
    """The same file through transformers' GGUF loader (every tensor dequantized to float32)."""
    return load_model(str(stories_gguf))


def test_q4_1_import_is_bit_exact_and_gives_the_same_logits(stories_gguf, gguf_float):
    imported = import_gguf(str(stories_gguf)).model
    floats = dict(gguf_float.model.named_parameters())
    layers = {n: m for n, m in imported.named_modules() if isinstance(m, (IntLinear, IntOffsetLinear))}
    assert isinstance(imported.model.embed_tokens, QuantizedEmbedding)
    assert sum(isinstance(m, IntOffsetLinear) for m in layers.values()) == 30  # q k v o gate up x 5 blocks
    for name, layer in layers.items():
        key = "model.embed_tokens.weight" if name == "lm_head" else f"{name}.weight"  # the head was tied
        assert torch.equal(_dequantized(layer), floats[key]), name
    assert imported.lowbit_config.detail == "F32 float: 16, Q4_1 exact: 30, Q8_0 exact: 1"
    ids = torch.randint(3, 512, (2, 40), generator=seeded(6))
    set_kernel_preference(imported, "reference")
    with torch.no_grad():
        assert torch.equal(imported(ids).logits, gguf_float.model(ids).logits)


@pytest.mark.parametrize("linear_type", ["Q4_0", "Q5_0", "Q5_1", "Q8_0"])
def test_other_block_types_import_exactly(stories_path, tmp_path, linear_type):
    path = write_stories_gguf(stories_path, tmp_path / "s.gguf", linear_type, embedding_type="Q4_0")
    imported = import_gguf(str(path)).model
    floats = dict(load_model(str(path)).model.named_parameters())
    q = imported.model.layers[1].self_attn.q_proj
    assert q.layout.bits == BLOCK_TYPES[linear_type].bits
    assert torch.equal(_dequantized(q), floats["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(_dequantized(imported.lm_head), floats["model.embed_tokens.weight"])


def test_cli_import_eval_save_generate(run_cli, stories_gguf, gguf_float, tmp_path):
    import json

    code, stdout, err = run_cli("eval", stories_gguf, "--import-gguf", "--windows", "2", "--kernel", "reference", "--json")
    assert code == 0, err
    imported = json.loads(stdout)
    code, stdout, err = run_cli("eval", stories_gguf, "--windows", "2", "--json")
    assert code == 0, err
    assert imported["ppl"] == json.loads(stdout)["ppl"]
    assert imported["method"]["method"] == "imported" and imported["bits_per_param"] < 6
    out = tmp_path / "saved"
    code, stdout, err = run_cli("load", stories_gguf, "--import-gguf", "--out", out)
    assert code == 0, err
    code, stdout, err = run_cli("eval", out, "--windows", "2", "--kernel", "reference", "--json")
    assert code == 0 and json.loads(stdout)["ppl"] == imported["ppl"], err
    code, stdout, err = run_cli("generate", out, "-p", "Once upon a time", "--max-new-tokens", "8")
    assert code == 0 and len(stdout.split()) >= 4, err


def test_import_gguf_errors(run_cli, stories_path, stories_gguf, tmp_path):
    assert_one_line_error(run_cli("eval", stories_path, "--import-gguf"), "is not a .gguf file: --import-gguf reads")
    result = run_cli("load", stories_gguf, "--import-gguf", "-q", "rtn", "--out", tmp_path / "o")
    assert_one_line_error(result, "--import-gguf keeps the file's own quantization")
    assert_one_line_error(run_cli("load", stories_gguf), "pass --quantize METHOD .* or --import-gguf")
    assert_one_line_error(run_cli("quantize", stories_path, "-m", "imported", "--out", tmp_path / "o"), "not a quantization method")
