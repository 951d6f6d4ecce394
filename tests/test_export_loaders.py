"""Round trips: lowbit -> export -> loaded by the other tool -> the same logits (stories260k, CPU).

Loaders: transformers with compressed-tensors, transformers with optimum + GPTQModel kernels for GPTQ and
AWQ, GPTQModel itself, AutoAWQ's GEMM module, transformers with bitsandbytes. A loader that cannot run
here is skipped with the reason. Tolerances: loaders computing in fp32 match to 1e-3 of the largest logit
(fp16 scales, fp32 matmuls); GPTQModel's CPU kernels run only in fp16, which alone moves logits by ~1e-2.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

from export_fixture import SETTINGS, assert_close_logits, lowbit_logits, make_folder, sample_ids
from lowbit.io.export import export

FP32_REL, FP16_REL = 1e-3, 2e-2


@pytest.fixture(autouse=True)
def same_triton_mode(monkeypatch):
    """Triton decorates its own helpers when first imported: after the kernel tests imported it under the
    interpreter (no GPU), a library that imports more of Triton later (gptqmodel, through transformers'
    GPTQ/AWQ loaders) must find the interpreter on too, or Triton's import-time checks fail."""
    if not torch.cuda.is_available() and "triton" in sys.modules:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")


@pytest.fixture(scope="module")
def made(stories, tmp_path_factory):
    """name -> (lowbit folder, its reference-kernel logits), made on first use."""
    root, cache = tmp_path_factory.mktemp("rt"), {}

    def get(name: str):
        if name not in cache:
            folder = make_folder(stories.model, stories.tokenizer, name, root / name)
            cache[name] = (folder, lowbit_logits(folder))
        return cache[name]

    return get


@torch.no_grad()
def transformers_logits(folder, plain_bnb: bool = False) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), device_map="cpu")
    if plain_bnb:  # bitsandbytes' AVX512-BF16 path needs outputs in blocks of 32 (the MLP has 172) and
        for m in model.modules():  # computes in bf16: take the fp32 path it uses on other CPUs
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
    return model(sample_ids()).logits.float()


@pytest.mark.parametrize("name", ["rtn4_all_sym", "rtn8_all"])
def test_compressed_tensors_in_transformers(made, tmp_path, name):
    needs("compressed_tensors")
    if not SETTINGS[name][1].get("symmetric"):
        pytest.skip("transformers 5.24 + compressed-tensors 0.20 cannot load asymmetric pack-quantized folders "
                    "(its meta-device pass keeps zero points unpacked: llm-compressor issue 1618); "
                    "test_compressed_tensors_decompressor covers them")
    folder, want = made(name)
    assert_close_logits(transformers_logits(export(folder, "compressed-tensors", tmp_path / "ct")), want, 1e-5)


@pytest.mark.parametrize("name", ["rtn4_all", "rtn3", "rtn4_all_sym"])
def test_compressed_tensors_decompressor(made, tmp_path, name):
    """compressed-tensors' own decompressor turns every exported layer back into lowbit's weights."""
    needs("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    from lowbit.io.checkpoint import load_quantized

    folder, _ = made(name)
    out = export(folder, "compressed-tensors", tmp_path / "ct")
    import json

    scheme = QuantizationScheme(**json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"])
    tensors = load_file(str(out / "model.safetensors"))
    lowbit = load_quantized(folder).model
    layers = [n.removesuffix(".weight_packed") for n in tensors if n.endswith(".weight_packed")]
    assert layers
    for layer in layers:
        state = {k.removeprefix(layer + "."): v for k, v in tensors.items() if k.startswith(layer + ".")}
        weight = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
        assert torch.equal(weight.float(), lowbit.get_submodule(layer).int_weights().dequantize().half().float())


@pytest.mark.parametrize("name", ["rtn4", "rtn2", "rtn3", "rtn8_all"])
def test_gptq_in_transformers(made, tmp_path, name):
    needs("optimum", "gptqmodel")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    folder, want = made(name)
    assert_close_logits(transformers_logits(export(folder, "gptq", tmp_path / "gptq")), want, FP32_REL)


def test_gptq_in_gptqmodel(made, tmp_path):
    needs("gptqmodel")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import BACKEND, GPTQModel

    folder, want = made("rtn4_sym")  # GPTQModel loads asymmetric v1 only from its own versions >= 0.9
    model = GPTQModel.load(str(export(folder, "gptq", tmp_path / "gptq")), device="cpu", backend=BACKEND.TORCH,
                           dtype=torch.float16)  # its CPU kernels take fp16 or bf16 only
    with torch.no_grad():
        assert_close_logits(model.model(sample_ids()).logits, want, FP16_REL)


def test_awq_in_transformers(made, tmp_path):
    needs("gptqmodel")  # transformers 5 runs AWQ checkpoints through GPTQModel's AWQ kernels
    folder, want = made("rtn4")
    assert_close_logits(transformers_logits(export(folder, "awq", tmp_path / "awq")), want, FP32_REL)


def test_awq_in_autoawq_gemm_module(made, tmp_path):
    """AutoAWQ's loader needs intel_extension_for_pytorch on CPU (which pins its own torch), so each exported
    layer goes through AutoAWQ's WQLinear_GEMM module with its plain-torch path instead."""
    needs("awq")
    from awq.modules.linear import gemm
    from safetensors.torch import load_file

    from lowbit.io.checkpoint import load_quantized

    folder, _ = made("rtn4")
    tensors = load_file(str(export(folder, "awq", tmp_path / "awq") / "model.safetensors"))
    lowbit = load_quantized(folder).model
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gemm, "TRITON_AVAILABLE", False)  # triton here has no GPU to run on
        for layer in [n.removesuffix(".qweight") for n in tensors if n.endswith(".qweight")]:
            ours = lowbit.get_submodule(layer)
            module = gemm.WQLinear_GEMM(4, 32, ours.in_features, ours.out_features, False, "cpu")
            module.load_state_dict({k: tensors[f"{layer}.{k}"] for k in ("qweight", "qzeros", "scales")})
            want = x @ ours.int_weights().dequantize().T
            assert (module(x).float() - want).abs().max() <= FP16_REL * want.abs().max()


@pytest.mark.parametrize("name", ["nf4", "fp4_plain"])
def test_bitsandbytes_in_transformers(made, tmp_path, name):
    needs("bitsandbytes")
    folder, want = made(name)
    assert_close_logits(transformers_logits(export(folder, "bnb-nf4", tmp_path / "bnb"), plain_bnb=True), want, 1e-5)


def test_gptq_act_order_in_transformers(stories, few_windows, tmp_path):
    """GPTQ with activation order (static groups, so g_idx stays i // group) exports desc_act and g_idx."""
    needs("optimum", "gptqmodel")
    import copy
    import json

    from lowbit.api import quantize, save
    from lowbit.methods import make_config

    config = make_config("gptq", bits=4, group_size=32, desc_act=True, static_groups=True, exclude="mlp")
    folder = save(quantize(copy.deepcopy(stories.model), config, few_windows), tmp_path / "lb", stories.tokenizer)
    out = export(folder, "gptq", tmp_path / "gptq")
    assert json.loads((out / "quantize_config.json").read_text())["desc_act"] is True
    assert_close_logits(transformers_logits(out), lowbit_logits(str(folder)), FP32_REL)
