"""What each export format accepts, how one layer's tensors look in it, and the config its loaders read.

A format takes a layer only when its layout can hold that layer's weights bit for bit; anything else is
a LowbitError naming the layer, the reason and the fix (lowbit never re-quantizes on export). The
layouts themselves live in formats/ (gptq_v1, awq_gemm, pack_quantized, bnb4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit import __version__
from lowbit.core.affine import IntWeights, resolve_group_size
from lowbit.errors import LowbitError
from lowbit.formats.awq_gemm import AWQ_BITS, pack_awq
from lowbit.formats.bitpack import codes_per_unit
from lowbit.formats.bnb4 import BNB_BLOCKSIZES, bnb_tensors
from lowbit.formats.gptq_v1 import integer_zeros, pack_gptq
from lowbit.formats.pack_quantized import pack_ct
from lowbit.methods.base import MethodConfig
from lowbit.modules import FourBitLinear, IntLinear, QuantizedEmbedding, QuantizedLinear

FIX = "re-quantize with a method that fits it, or keep lowbit's own folder"


@dataclass(frozen=True)
class Settings:
    """What every exported layer shares (formats store one scheme per model)."""

    bits: int
    group_size: int  # -1: one group per row
    symmetric: bool
    method: MethodConfig
    float_linears: tuple[str, ...]  # linears lowbit left in full precision (the loaders must skip them)
    quantized: tuple[str, ...]  # the exported layers
    dtype: str  # dtype of the tensors left in full precision, e.g. "float32"
    quant_type: str = ""  # bnb-nf4: "nf4" or "fp4"
    double_quant: bool = False  # bnb-nf4


def refuse(fmt: str, name: str, why: str) -> LowbitError:
    return LowbitError(f"cannot export layer {name} to {fmt} exactly: {why}; {FIX}")


def int_weights(fmt: str, name: str, module: QuantizedLinear) -> IntWeights:
    """The layer's codes and qparams if it holds integer-zero group-wise weights, else a refusal."""
    if isinstance(module, QuantizedEmbedding):
        raise refuse(fmt, name, "a quantized token embedding has no place in it (quantize without embedding_bits)")
    if type(module) is not IntLinear:
        raise refuse(fmt, name, f"its {type(module).__name__} weights are not group-wise integers with integer zeros")
    w = module.int_weights()
    if w.zero is not None and not torch.equal(w.zero.float(), w.zero.float().round()):
        raise refuse(fmt, name, "its zero points are fractional (use rtn -o integer_zero=true, gptq or awq)")
    return w


def int_settings(fmt: str, layers: dict[str, QuantizedLinear], method: MethodConfig, floats, dtype: str) -> Settings:
    """One bit width, one group size (or per channel) for every layer, as the format's config says."""
    weights = {name: int_weights(fmt, name, m) for name, m in layers.items()}
    bits = {w.bits for w in weights.values()}
    if len(bits) != 1:
        raise LowbitError(f"{fmt} stores one bit width per model, these layers have {sorted(bits)}: {FIX}")
    groups = {w.group_size for name, w in weights.items() if w.group_size < layers[name].in_features}
    if len(groups) > 1:
        raise LowbitError(f"{fmt} stores one group size per model, these layers have {sorted(groups)}: {FIX}")
    group = groups.pop() if groups else -1
    for name, w in weights.items():
        if w.group_size != resolve_group_size(group, layers[name].in_features):
            raise refuse(fmt, name, f"its group size {w.group_size} differs from the other layers' {group}")
    symmetric = all(w.zero is None for w in weights.values())
    return Settings(bits.pop(), group, symmetric, method, floats, tuple(layers), dtype)


class IntFormat:
    """The formats of integer codes with integer zeros (one scheme for the model)."""

    name: str

    def settings(self, layers: dict[str, QuantizedLinear], method: MethodConfig, floats, dtype: str) -> Settings:
        return int_settings(self.name, layers, method, floats, dtype)

    def extra_files(self, s: Settings) -> dict[str, dict]:
        return {}


def check_whole_words(fmt: str, name: str, n: int, bits: int, what: str) -> None:
    unit = codes_per_unit(bits)
    if n % unit:
        why = f"its {n} {what} are not a multiple of {unit} ({bits}-bit codes fill whole int32 words)"
        raise refuse(fmt, name, why + "; keep it float with --exclude")


class GPTQ(IntFormat):
    name = "gptq"

    def layer_tensors(self, name: str, module: QuantizedLinear, s: Settings) -> dict[str, torch.Tensor]:
        w = int_weights(self.name, name, module)
        check_whole_words(self.name, name, module.in_features, w.bits, "inputs")
        check_whole_words(self.name, name, module.out_features, w.bits, "outputs")
        zeros = integer_zeros(w)
        if zeros.min() < 1:
            raise refuse(self.name, name, "a zero point is 0, which GPTQ v1 (storing zero - 1) cannot hold")
        return pack_gptq(w)

    def config(self, s: Settings) -> dict[str, Any]:
        m = s.method
        qc = {
            "quant_method": "gptq", "checkpoint_format": "gptq", "bits": s.bits, "group_size": s.group_size,
            "desc_act": bool(getattr(m, "desc_act", False)), "sym": s.symmetric,
            "static_groups": bool(getattr(m, "static_groups", False)),
            "true_sequential": bool(getattr(m, "true_sequential", True)),
            "damp_percent": float(getattr(m, "damp", 0.01)), "pack_dtype": "int32", "lm_head": False,
            "meta": {"quantizer": [f"lowbit:{__version__}"], "lowbit_method": m.name},
        }
        inside = [n for n in s.float_linears if n != "lm_head"]
        if inside:  # layers kept float: GPTQModel reads "-:" overrides, transformers (optimum) a module list
            qc["dynamic"] = {f"-:^{re.escape(n)}$": {} for n in inside}
            qc["modules_in_block_to_quantize"] = [sorted({_in_block(n) for n in s.quantized})]
        return qc

    def extra_files(self, s: Settings) -> dict[str, dict]:
        return {"quantize_config.json": self.config(s)}


class AWQ(IntFormat):
    name = "awq"

    def layer_tensors(self, name: str, module: QuantizedLinear, s: Settings) -> dict[str, torch.Tensor]:
        w = int_weights(self.name, name, module)
        if w.bits != AWQ_BITS:
            raise refuse(self.name, name, f"AWQ GEMM stores 4-bit codes, these are {w.bits}-bit")
        if module.out_features % 8:
            why = f"its {module.out_features} outputs are not a multiple of 8"
            raise refuse(self.name, name, why + "; keep it float with --exclude")
        if module.in_features % w.group_size:
            raise refuse(self.name, name, f"group size {w.group_size} does not divide its {module.in_features} inputs")
        return pack_awq(w)

    def config(self, s: Settings) -> dict[str, Any]:
        return {
            "quant_method": "awq", "version": "gemm", "bits": s.bits, "group_size": s.group_size,
            "zero_point": True, "modules_to_not_convert": list(s.float_linears) or None,
        }


class CompressedTensors(IntFormat):
    name = "compressed-tensors"

    def layer_tensors(self, name: str, module: QuantizedLinear, s: Settings) -> dict[str, torch.Tensor]:
        w = int_weights(self.name, name, module)
        if not s.symmetric and w.zero is None:  # one scheme per model: symmetric layers get explicit zeros
            w.zero = integer_zeros(w).to(torch.float16)
        return pack_ct(w)

    def config(self, s: Settings) -> dict[str, Any]:
        weights = {
            "num_bits": s.bits, "type": "int", "symmetric": s.symmetric, "dynamic": False,
            "strategy": "channel" if s.group_size == -1 else "group",
            "group_size": None if s.group_size == -1 else s.group_size, "actorder": None, "observer": "minmax",
        }
        scheme = {"targets": ["Linear"], "weights": weights, "input_activations": None,
                  "output_activations": None, "format": "pack-quantized"}
        return {
            "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": scheme}, "ignore": list(s.float_linears), "kv_cache_scheme": None,
        }


class BnB4:
    name = "bnb-nf4"

    def settings(self, layers: dict[str, QuantizedLinear], method: MethodConfig, floats, dtype: str) -> Settings:
        kinds = set()
        for name, m in layers.items():
            if not isinstance(m, FourBitLinear):
                raise refuse(self.name, name, f"its {type(m).__name__} weights are not NF4/FP4 codes (use nf4 or fp4)")
            if m.layout.blocksize not in BNB_BLOCKSIZES:
                raise refuse(self.name, name, f"bitsandbytes takes blocks of {BNB_BLOCKSIZES}, not {m.layout.blocksize}")
            kinds.add((m.layout.quant_type, m.layout.double_quant, m.layout.blocksize))
        if len(kinds) != 1:
            raise LowbitError(f"bnb-nf4 stores one 4-bit scheme per model, these layers have {sorted(kinds)}: {FIX}")
        quant_type, double_quant, blocksize = kinds.pop()
        return Settings(4, blocksize, True, method, floats, tuple(layers), dtype, quant_type, double_quant)

    def layer_tensors(self, name: str, module: QuantizedLinear, s: Settings) -> dict[str, torch.Tensor]:
        lay = module.layout
        buffers = dict(module.named_buffers(recurse=False))
        shape = (lay.out_features, lay.in_features)
        return {f"weight{k}": t for k, t in bnb_tensors(buffers, lay.quant_type, lay.blocksize, shape, s.dtype).items()}

    def config(self, s: Settings) -> dict[str, Any]:
        return {
            "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
            "bnb_4bit_quant_type": s.quant_type, "bnb_4bit_use_double_quant": s.double_quant,
            "bnb_4bit_compute_dtype": s.dtype, "bnb_4bit_quant_storage": "uint8",
            "llm_int8_skip_modules": list(s.float_linears),
        }

    def extra_files(self, s: Settings) -> dict[str, dict]:
        return {}


FORMATS = {f.name: f for f in (GPTQ(), AWQ(), CompressedTensors(), BnB4())}


def _in_block(name: str) -> str:
    """A layer's name inside its transformer block: model.layers.3.mlp.up_proj -> mlp.up_proj."""
    return re.sub(r"^.*?\.\d+\.", "", name)


def float_linears(model: nn.Module) -> tuple[str, ...]:
    """Names of the nn.Linear layers left in full precision (the head, excluded layers)."""
    return tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
