"""Import GPTQ, AWQ (GEMM) and compressed-tensors (pack-quantized) folders made by other tools.

The folder's config.json `quantization_config` names the format; every layer stored in it (the tensors
beside its `qweight` or `weight_packed`) is unpacked by formats/ (gptq_v1, awq_gemm, pack_quantized) and
becomes an `IntLinear` holding the same codes, zero points and scales: nothing is re-quantized. Scales
stored wider than fp16 (compressed-tensors keeps the model's dtype) are rounded to lowbit's fp16 and the
largest relative change is recorded in the model's `lowbit_config.detail`. Every other tensor is loaded
as float32. Activation-order checkpoints whose g_idx is not i // group_size are refused: lowbit's format
keeps groups in column order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lowbit.core.affine import IntWeights, resolve_group_size, symmetric_zero
from lowbit.errors import LowbitError
from lowbit.formats.awq_gemm import AWQ_BITS, unpack_awq
from lowbit.formats.gptq_v1 import V1_ZERO_OFFSET, unpack_gptq
from lowbit.formats.pack_quantized import unpack_ct
from lowbit.io.checkpoint import check_complete
from lowbit.io.on_the_fly import assign_tensor, skeleton
from lowbit.io.sources import LoadedModel
from lowbit.io.tensor_sources import iter_safetensors
from lowbit.methods.imported import ImportedConfig
from lowbit.modules import IntLinear
from lowbit.modules.plan import prepare_kernels

IMPORT_FORMATS = ("gptq", "awq", "compressed-tensors")
MARKERS = {"gptq": "qweight", "awq": "qweight", "compressed-tensors": "weight_packed"}


def quantization_config(folder: Path) -> dict[str, Any] | None:
    """The folder's `quantization_config` when it is one of IMPORT_FORMATS, else None."""
    try:
        qc = json.loads((folder / "config.json").read_text()).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return None
    return qc if isinstance(qc, dict) and qc.get("quant_method") in IMPORT_FORMATS else None


@torch.no_grad()
def import_checkpoint(folder: str | Path) -> LoadedModel:
    """Load another tool's GPTQ / AWQ / compressed-tensors folder into lowbit modules."""
    folder = Path(folder)
    qc = quantization_config(folder)
    if qc is None:
        raise LowbitError(f"{folder} has no GPTQ, AWQ or compressed-tensors quantization_config in config.json")
    fmt = qc["quant_method"]
    bits, group_size, unpack = _reader(fmt, qc)
    model, tokenizer = skeleton(folder, None, torch.float32)
    tensors = dict(iter_safetensors(folder))
    marker = MARKERS[fmt]
    prefixes = [n.removesuffix(f".{marker}") for n in tensors if n.endswith(f".{marker}")]
    widest = 0.0
    for prefix in prefixes:
        parts = {k[len(prefix) + 1 :]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix + ".")]}
        _place_layer(model, prefix, unpack, parts, bits, group_size)
        widest = max(widest, _scale_rounding(parts))
    for name, tensor in tensors.items():
        assign_tensor(model, name, tensor, torch.float32)
    check_complete(model, folder)
    model.eval()
    detail = f"{len(prefixes)} layers, {bits}-bit, group {group_size}"
    if widest:
        detail += f", scales rounded to fp16 (largest relative change {widest:.2e})"
    model.lowbit_config = ImportedConfig(source_format=fmt, detail=detail)
    prepare_kernels(model)
    return LoadedModel(model, tokenizer, str(folder))


def _place_layer(model, prefix: str, unpack, parts: dict[str, torch.Tensor], bits: int, group_size: int) -> None:
    """Swap the float layer `prefix` for an IntLinear holding the stored codes, zeros and scales."""
    module = model.get_submodule(prefix)
    w = unpack(parts, bits, resolve_group_size(group_size, module.in_features), prefix)
    if tuple(w.codes.shape) != (module.out_features, module.in_features):
        raise LowbitError(f"{prefix} holds a {tuple(w.codes.shape)} weight, the model a "
                          f"{(module.out_features, module.in_features)} one: the checkpoint does not match its config")
    model.set_submodule(prefix, IntLinear.from_weights(_symmetric_if_so(w), _float(parts.get("bias"))))


def _reader(fmt: str, qc: dict[str, Any]):
    """(bits, group size, unpack(parts, bits, group, name) -> IntWeights) for the format's config."""
    if fmt == "gptq":
        offset = 0 if qc.get("checkpoint_format") == "gptq_v2" else V1_ZERO_OFFSET
        return int(qc["bits"]), int(qc.get("group_size", -1)), lambda p, b, g, n: _gptq(p, b, g, n, offset)
    if fmt == "awq":
        if str(qc.get("version", "gemm")).lower() != "gemm" or int(qc.get("bits", 4)) != AWQ_BITS:
            raise LowbitError(
                f"AWQ {qc.get('version')} {qc.get('bits')}-bit checkpoints are not supported: lowbit reads 4-bit GEMM"
            )
        return AWQ_BITS, int(qc.get("group_size", -1)), lambda p, b, g, n: unpack_awq(p, g)
    if qc.get("format") != "pack-quantized" or len(qc.get("config_groups", {})) != 1:
        raise LowbitError(f"compressed-tensors format {qc.get('format')!r} with {len(qc.get('config_groups', {}))} "
                          "schemes is not supported: lowbit reads one pack-quantized integer scheme")
    weights = next(iter(qc["config_groups"].values()))["weights"]
    group = weights.get("group_size") if weights.get("strategy") == "group" else -1
    return int(weights["num_bits"]), int(group or -1), _ct


def _gptq(parts: dict[str, torch.Tensor], bits: int, group: int, name: str, offset: int) -> IntWeights:
    _check_column_order(parts.get("g_idx"), group, name)
    return unpack_gptq(parts, bits, group, offset)


def _ct(parts: dict[str, torch.Tensor], bits: int, group: int, name: str) -> IntWeights:
    _check_column_order(parts.get("weight_g_idx"), group, name)
    return unpack_ct(parts, bits, group)


def _check_column_order(g_idx: torch.Tensor | None, group: int, name: str) -> None:
    if g_idx is not None and not torch.equal(g_idx.long(), torch.arange(g_idx.numel()) // group):
        raise LowbitError(f"{name} uses activation order with groups out of column order (g_idx): lowbit cannot "
                          "hold it without re-quantizing; quantize with desc_act=false or static_groups=true")


def _scale_rounding(parts: dict[str, torch.Tensor]) -> float:
    """Largest relative change of the layer's scales when rounded to fp16 (0 when they are fp16)."""
    scale = parts.get("scales", parts.get("weight_scale"))
    if scale.dtype == torch.float16:
        return 0.0
    wide = scale.double()
    return ((wide.half().double() - wide).abs() / wide.abs().clamp(min=1e-30)).max().item()


def _float(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


def _symmetric_if_so(w: IntWeights) -> IntWeights:
    """Zero points all equal to 2**(b-1) are lowbit's symmetric layout (no zero buffer, the symmetric kernels)."""
    if w.zero is not None and bool((w.zero.float() == symmetric_zero(w.bits)).all()):
        w.zero = None
    return w
