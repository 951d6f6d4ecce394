"""Export a lowbit folder to the layouts other engines load: GPTQ v1, AWQ GEMM, compressed-tensors
pack-quantized and bitsandbytes 4-bit (io.export_formats says what each accepts).

The output is a Hugging Face folder: one model.safetensors holding the exported layers' tensors and
every other tensor as it is, config.json with the `quantization_config` the loaders read (plus GPTQ's
quantize_config.json), and the tokenizer. It is written atomically (io.atomic).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from lowbit.core.checks import check_choice
from lowbit.errors import LowbitError
from lowbit.io.atomic import atomic_folder
from lowbit.io.checkpoint import load_quantized, unique_tensors
from lowbit.io.export_formats import FORMATS, float_linears
from lowbit.io.sources import METADATA_FILE
from lowbit.modules import QuantizedLinear


@torch.no_grad()
def export(folder: str | Path, fmt: str, out: str | Path, overwrite: bool = False) -> Path:
    """Write the lowbit model in `folder` to `out` in format `fmt`; returns `out`."""
    check_choice(fmt, tuple(FORMATS), "export format")
    folder = Path(folder)
    if not (folder / METADATA_FILE).is_file():
        raise LowbitError(f"{folder} is not a lowbit output folder (no {METADATA_FILE}): quantize a model first")
    loaded = load_quantized(folder)
    model, spec = loaded.model, FORMATS[fmt]
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    dtype = str(model.config.dtype or torch.float32).removeprefix("torch.")
    settings = spec.settings(layers, model.lowbit_config, float_linears(model), dtype)
    tensors = _float_tensors(model, layers)
    for name, module in layers.items():
        tensors |= {f"{name}.{k}": t.contiguous() for k, t in spec.layer_tensors(name, module, settings).items()}
        if module.bias is not None:
            tensors[f"{name}.bias"] = module.bias.contiguous()
    config = model.config.to_dict() | {"quantization_config": spec.config(settings)}
    with atomic_folder(Path(out), overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for name, content in spec.extra_files(settings).items():
            (tmp / name).write_text(json.dumps(content, indent=2))
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
    return Path(out)


def _float_tensors(model, layers: dict[str, QuantizedLinear]) -> dict[str, torch.Tensor]:
    """Every tensor outside the quantized layers (tied ones once), as the model holds it."""
    inside = tuple(f"{name}." for name in layers)
    return {n: t.contiguous() for n, t in unique_tensors(model).items() if not n.startswith(inside)}
