"""The reference libraries, each behind one function that quantizes a model in place as lowbit's twin does.

Shared by benchmarks/peers.py (the compare protocol), peers_calibration_free.py and calib_methods.py.
Every library is optional and imported inside its function. Layer-by-layer peers replace the same target
linears lowbit quantizes (calib.arch.find_targets) and report each layer's bytes as the library holds them:
{layer name: (bytes, weights)}.

Install (CPU, never upgrading torch): `pip install --no-deps hqq termcolor bitsandbytes optimum-quanto
torchao llmcompressor compressed-tensors gptqmodel autoawq` plus the small deps they name at import.
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn

from common import stopwatch
from lowbit.calib.arch import arch_spec, find_targets

LayerBytes = dict[str, tuple[int, int]]  # layer name -> (bytes held, weights)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor, or of the inner tensors of a tensor subclass (quanto, torchao) or a bnb Params4bit."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def hqq_layer(linear: nn.Linear, options: dict) -> tuple[nn.Module, int]:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    options = dict(options)
    round_zero = options.pop("round_zero", None)  # None: the package's own choice (on at 4 bits only)
    config = BaseQuantizeConfig(axis=1, **options)
    if round_zero is not None:
        config["weight_quant_params"]["round_zero"] = round_zero
    layer = HQQLinear(linear, config, compute_dtype=torch.float32, device="cpu")
    meta = layer.meta
    nbytes = layer.W_q.numel() * layer.W_q.element_size()
    nbytes += sum(meta[k].numel() * meta[k].element_size() for k in ("scale", "zero"))
    return layer, nbytes


def nf4_layer(linear: nn.Linear, _options: dict) -> tuple[nn.Module, int]:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=torch.float32, quant_type="nf4", compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=True, blocksize=64)
    layer = layer.to("cpu")  # quantizes
    state = layer.weight.quant_state
    parts = [layer.weight.data, state.absmax, state.state2.absmax, state.offset]
    return layer, sum(t.numel() * t.element_size() for t in parts)


def nf4_dequant_layer(linear: nn.Linear, options: dict) -> tuple[nn.Module, int]:
    """bitsandbytes' NF4 numerics with an fp32 matmul: its CPU kernel computes in reduced precision."""
    import bitsandbytes.functional as bnb_functional

    layer, nbytes = nf4_layer(linear, options)
    dense = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    dense.weight.data = bnb_functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    if linear.bias is not None:
        dense.bias.data = linear.bias.data.clone()
    return dense, nbytes


def int8_layer(linear: nn.Linear, _options: dict) -> tuple[nn.Module, int]:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu")  # quantizes
    return layer, layer.weight.numel() + 4 * layer.weight.SCB.numel()


LAYER_PEERS = {"hqq": hqq_layer, "nf4": nf4_layer, "nf4_dequant": nf4_dequant_layer, "int8": int8_layer}


@torch.no_grad()
def quantize_layers(model: nn.Module, kind: str, options: dict) -> LayerBytes:
    """Replace every target linear by the peer's layer (LAYER_PEERS[kind])."""
    held = {}
    for name, linear in find_targets(model, arch_spec(model.config.model_type)).items():
        params = linear.weight.numel()  # before the peer (hqq deletes the float weight)
        layer, nbytes = LAYER_PEERS[kind](linear, options)
        model.set_submodule(name, layer)
        held[name] = (nbytes, params)
    model.eval()  # new layers start in training mode, where bitsandbytes' CPU int8 skips the int8 matmul
    return held


def timed_quantize_layers(model: nn.Module, kind: str, options: dict) -> tuple[float, float, float]:
    """(wall seconds, this process's CPU seconds, bits per weight of the replaced layers)."""
    with stopwatch() as timing:
        held = quantize_layers(model, kind, options)
    bits = 8 * sum(b for b, _ in held.values()) / sum(p for _, p in held.values())
    return timing["seconds"], timing["cpu_seconds"], bits


def _targets_held(model: nn.Module, params: dict[str, int]) -> LayerBytes:
    """Bytes of the (swapped or subclassed) weights now at each target, from their inner tensors."""
    return {name: (tensor_bytes(model.get_submodule(name).weight), n) for name, n in params.items()}


def _target_params(model: nn.Module) -> dict[str, int]:
    return {name: m.weight.numel() for name, m in find_targets(model, arch_spec(model.config.model_type)).items()}


@torch.no_grad()
def quanto_quantize(model: nn.Module, weights: str) -> LayerBytes:
    """optimum-quanto weight-only (qint8 per output channel, or qint4 in groups of 128), frozen."""
    from optimum import quanto

    params = _target_params(model)
    quanto.quantize(model, weights=getattr(quanto, weights), include=list(params))
    quanto.freeze(model)
    return _targets_held(model, params)


@torch.no_grad()
def torchao_quantize(model: nn.Module, config: str, group_size: int = 64) -> LayerBytes:
    """torchao quantize_: "int8" = Int8WeightOnlyConfig; "int4" = IntxWeightOnlyConfig(int4, asymmetric, PerGroup)."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, MappingType, PerGroup, quantize_

    params = _target_params(model)
    if config == "int8":
        ao_config = Int8WeightOnlyConfig()
    else:
        ao_config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size),
                                         mapping_type=MappingType.ASYMMETRIC)
    quantize_(model, ao_config, filter_fn=lambda module, fqn: fqn in params)
    return _targets_held(model, params)


def llmcompressor_quantize(model, method, bits, group, options, calib, tokenizer) -> dict:
    """llm-compressor oneshot with the same windows, asymmetric int weights, group `group`, lm_head kept."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    if not torch.cuda.is_available():  # AWQModifier pins cached inputs unconditionally, which CPU-only torch refuses;
        from llmcompressor.pipelines.cache import IntermediatesCache  # pinning only speeds host->GPU copies

        IntermediatesCache.pin_memory = lambda self, *a, **k: None
    options = dict(options)
    observer = {"observer": options.pop("observer")} if "observer" in options else {}  # e.g. mse: weight-range grid search
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="group", group_size=group, **observer)
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=args)}
    if method == "lc-gptq":
        gptq = {"dampening_frac": 0.01, "actorder": None} | options
        recipe = [GPTQModifier(config_groups=groups, ignore=["lm_head"], **gptq)]
    else:
        recipe = [AWQModifier(duo_scaling=True, offload_device=None, **options),
                  QuantizationModifier(config_groups=groups, ignore=["lm_head"])]
    config_dir = tempfile.mkdtemp()  # oneshot re-reads the config from disk; a GGUF folder has no config.json
    _drop_gguf_quantization_config(model)
    model.config.save_pretrained(config_dir)
    model.config._name_or_path = config_dir
    data = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    oneshot(model=model, tokenizer=tokenizer, recipe=recipe, dataset=data, num_calibration_samples=calib.shape[0],
            max_seq_length=calib.shape[1], shuffle_calibration_samples=False, pipeline="sequential")
    return {"method": method, "bits": bits, "group_size": group, "symmetric": False, **observer, **options}


def _drop_gguf_quantization_config(model: nn.Module) -> None:
    if hasattr(model.config, "quantization_config"):  # the GGUF file's; the loaded weights are plain fp32
        del model.config.quantization_config


def gptqmodel_quantize(model: nn.Module, bits: int, group: int, calib: torch.Tensor, tokenizer) -> LayerBytes:
    """GPTQModel (asymmetric, damp 0.01, no act-order) on the same windows; its packed layers replace the targets.

    GPTQModel loads a model from a folder, so the float model is saved to a temporary one first.
    """
    import os

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(torch.get_num_threads()))
    from gptqmodel import GPTQModel, QuantizeConfig

    folder = tempfile.mkdtemp()
    _drop_gguf_quantization_config(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = QuantizeConfig(bits=bits, group_size=group, sym=False, desc_act=False, damp_percent=0.01)
    quantized = GPTQModel.load(folder, config, device="cpu")
    quantized.quantize([{"input_ids": w.tolist(), "attention_mask": [1] * w.numel()} for w in calib], batch_size=8)
    params = _target_params(model)
    held = {}
    for name, n in params.items():
        layer = quantized.model.get_submodule(name)
        model.set_submodule(name, layer)
        held[name] = (sum(tensor_bytes(b) for k, b in layer.named_buffers() if k != "bias"), n)
    return held


def packed_int_bytes(model: nn.Module, bits: int, group_size: int) -> LayerBytes:
    """Bytes of the targets in compressed-tensors' pack-quantized layout: `bits`-bit codes, an fp16 scale and a
    `bits`-bit zero point per group (what llm-compressor saves; in memory it keeps float weights + qparams)."""
    held = {}
    for name, n in _target_params(model).items():
        out, cols = model.get_submodule(name).weight.shape
        groups = out * -(-cols // group_size)
        held[name] = (n * bits // 8 + groups * 2 + -(-groups * bits // 8), n)
    return held
