"""Save and load quantized models: one safetensors file + `lowbit.json` + the model config and tokenizer.

`lowbit.json` records what is needed to rebuild the model without guessing from file names: the format
version, the lowbit version, the method config, the source model, every quantized layer's module type and
constructor spec, and the sha256 of every file (checked on load, so a corrupt file is named, not loaded).
Loading builds the model on the meta device, swaps in empty quantized modules, and assigns the tensors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit import __version__
from lowbit.errors import LowbitError
from lowbit.io.atomic import atomic_folder, sha256_file
from lowbit.io.sources import METADATA_FILE, LoadedModel
from lowbit.methods.base import MethodConfig
from lowbit.modules import MODULE_TYPES, QuantizedLinear
from lowbit.modules.plan import prepare_kernels

FORMAT_VERSION = 2  # the newest format this lowbit reads; 2 adds per-layer method settings (methods.mixed)
WEIGHTS_FILE = "model.safetensors"
ARTIFACTS_FILE = "calibration.safetensors"  # what a calibration search found (AWQ scales/clips), to re-apply


def save_quantized(
    model: nn.Module, out: str | Path, tokenizer=None, source: str | None = None, overwrite: bool = False
) -> Path:
    """Write the quantized model to `out` atomically; returns the folder."""
    config = getattr(model, "lowbit_config", None)
    if config is None:
        raise LowbitError("this model was not quantized by lowbit: call lowbit.quantize first")
    out = Path(out)
    with atomic_folder(out, overwrite) as tmp:
        save_file({n: t.contiguous() for n, t in unique_tensors(model).items()}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        artifacts = getattr(model, "lowbit_artifacts", None)
        if artifacts:
            save_file({k: v.contiguous() for k, v in artifacts.items()}, str(tmp / ARTIFACTS_FILE))
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {
            "format_version": config.format_version,
            "lowbit_version": __version__,
            "method": config.to_dict(),
            "source": source,
            "model_type": model.config.model_type,
            # the attention kernel changes logits in the last bits; reloading uses the same one
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "layers": {
                name: {"module": type(m).__name__, "spec": m.spec(), "bytes": m.packed_bytes()}
                for name, m in model.named_modules()
                if isinstance(m, QuantizedLinear)
            },
            "sha256": files,
        }
        meta["metadata_sha256"] = _metadata_digest(meta)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1))
    return out


def unique_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors once (the first name wins; tie_weights restores the rest).

    Tensors on the meta device have no storage to compare, so a tied pair is recognised as one object
    (how tie_weights ties them); that lets memory predictions count a meta-device model like a real one.
    """
    seen: set[tuple] = set()
    tensors = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_meta:
            key = ("meta", id(tensor))
        else:
            try:
                key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            except RuntimeError:  # a tensor subclass (e.g. torchao's) with no storage of its own: never tied
                key = (id(tensor), -1)
        if key not in seen:
            seen.add(key)
            tensors[name] = tensor.detach()
    return tensors


def _metadata_digest(meta: dict[str, Any]) -> str:
    """sha256 of the metadata itself (without this field), so an edited or damaged lowbit.json is caught."""
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_metadata(folder: Path) -> dict[str, Any]:
    """lowbit.json, checked for format version and file integrity."""
    try:
        meta = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LowbitError(f"{folder / METADATA_FILE} is unreadable ({err}): the checkpoint is corrupt, re-save it")
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
        raise LowbitError(f"{folder / METADATA_FILE} has no format_version: not a lowbit checkpoint")
    if meta["format_version"] > FORMAT_VERSION:
        raise LowbitError(
            f"{folder} uses checkpoint format {meta['format_version']}, newer than this lowbit "
            f"({__version__}, format {FORMAT_VERSION}): upgrade lowbit"
        )
    if meta.get("metadata_sha256") != _metadata_digest(meta):
        raise LowbitError(f"{folder / METADATA_FILE} is corrupt (its checksum does not match): re-save the checkpoint")
    files = meta.get("sha256")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise LowbitError(f"{folder / METADATA_FILE} has no valid file checksums: the checkpoint is corrupt")
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise LowbitError(f"{path} is missing: the checkpoint is incomplete, re-save it")
        if sha256_file(path) != digest:
            raise LowbitError(f"{path} is corrupt (checksum mismatch): re-save or re-download the checkpoint")
    return meta


def load_quantized(folder: str | Path) -> LoadedModel:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    meta = read_metadata(folder)
    config = MethodConfig.from_dict(meta.get("method"))
    hf_config = AutoConfig.from_pretrained(folder)
    with init_empty_weights():  # parameters on meta; buffers such as rotary inv_freq are real
        model = AutoModelForCausalLM.from_config(hf_config, attn_implementation=meta.get("attn_implementation"))
    for name, layer in meta.get("layers", {}).items():
        model.set_submodule(name, _empty_layer(name, layer))
    _assign_tensors(model, folder / WEIGHTS_FILE)
    model.eval()
    model.lowbit_config = config
    prepare_kernels(model)  # repack into the CPU kernels' layouts now, not on the first token
    has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    return LoadedModel(model, AutoTokenizer.from_pretrained(folder) if has_tokenizer else None, str(folder))


def _empty_layer(name: str, layer: Any) -> QuantizedLinear:
    module_type = layer.get("module") if isinstance(layer, dict) else None
    if module_type not in MODULE_TYPES:
        raise LowbitError(f"layer {name} has unknown module type {module_type!r}: upgrade lowbit")
    try:
        return MODULE_TYPES[module_type].from_spec(layer["spec"], device="meta")
    except (KeyError, TypeError) as err:
        raise LowbitError(f"layer {name} has a malformed spec ({err}): the checkpoint is corrupt")


def _assign_tensors(model: nn.Module, path: Path) -> None:
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise LowbitError(f"cannot read {path} ({err}): the checkpoint is corrupt, re-save it")
    try:
        _, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as err:
        raise LowbitError(f"{path} does not fit the model ({str(err).splitlines()[-1].strip()})")
    if unexpected:
        raise LowbitError(f"{path} holds tensors the model does not have ({unexpected[0]}, ...): corrupt checkpoint")
    check_complete(model, path)


def check_complete(model: nn.Module, source: str | Path) -> None:
    """Tie shared weights, then refuse a model with any tensor still on the meta device."""
    model.tie_weights()
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise LowbitError(f"{source} lacks {len(missing)} tensors ({missing[0]}, ...): the checkpoint is incomplete")
