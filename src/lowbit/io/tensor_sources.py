"""Checkpoint readers that hand out one tensor at a time (for on-the-fly quantization).

- A Hugging Face folder of safetensors shards (fp16/bf16/fp32): each tensor is read through a
  memory-mapped `safe_open` that is closed again right after, so at most one tensor's pages stay mapped.
- A GGUF file: gguf's `GGUFReader` maps the file; each tensor is dequantized on its own and renamed to
  the transformers name with transformers' own GGUF tables (including Llama's q/k row permutation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from lowbit.errors import LowbitError

INDEX_FILE = "model.safetensors.index.json"


def safetensors_files(folder: Path) -> list[Path]:
    """The shards of a folder: those its index names, else every *.safetensors file."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise LowbitError(f"{index} is unreadable ({err}): re-export the checkpoint")
        files = [folder / name for name in names]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LowbitError(f"{folder} has no .safetensors files: on-the-fly loading reads safetensors or GGUF")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise LowbitError(f"shard {missing[0]} named by {INDEX_FILE} is missing: the checkpoint is incomplete")
    return files


def iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of every shard, one at a time."""
    from safetensors import SafetensorError, safe_open

    for path in safetensors_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
            for key in keys:
                with safe_open(str(path), framework="pt") as f:  # unmapped again once the tensor is copied
                    tensor = f.get_tensor(key)
                yield key, tensor
        except (SafetensorError, OSError) as err:
            raise LowbitError(f"cannot read {path} ({err}): the checkpoint is corrupt")


class GGUFTensors:
    """A GGUF file read through transformers' tables for `model`: its tensor names and row processing
    (e.g. Llama's q/k row permutation), applied to float values or to row orders of packed blocks."""

    def __init__(self, path: Path, model: nn.Module):
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
            load_gguf_checkpoint,
            read_field,
        )

        self.reader = GGUFReader(str(path))
        architecture = read_field(self.reader, "general.architecture")[0]
        config = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
        self.processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config)
        self.names = get_gguf_hf_weights_map(model, self.processor)
        self.parsed: dict = {"tensors": {}}

    def process(self, tensor, values: np.ndarray) -> tuple[str | None, np.ndarray]:
        """(transformers name or None when the model has no such tensor, processed values)."""
        result = self.processor.process(
            weights=values, name=tensor.name, tensor_key_mapping=self.names, parsed_parameters=self.parsed
        )
        return self.names.get(result.name), result.weights

    def float_tensor(self, tensor) -> tuple[str | None, torch.Tensor]:
        """(transformers name or None, the dequantized float32 tensor as transformers loads it)."""
        from gguf import dequantize

        name, values = self.process(tensor, dequantize(tensor.data, tensor.tensor_type))
        return name, torch.from_numpy(np.array(values, dtype=np.float32))

    def row_order(self, tensor, rows: int) -> tuple[str | None, torch.Tensor | None]:
        """(transformers name, the file's row behind each row of the model's tensor (rows,) int64), or
        (None, None) when the processing is not a pure reordering of rows (only float values follow it)."""
        index = np.arange(rows, dtype=np.float64)[:, None]  # (rows, 1): row i holds i
        try:
            name, out = self.process(tensor, index)
        except (ValueError, RuntimeError, IndexError):
            return None, None
        out = np.asarray(out)
        if name is None or out.shape != (rows, 1) or not np.array_equal(np.sort(out[:, 0]), index[:, 0]):
            return None, None
        return name, torch.from_numpy(out[:, 0].astype(np.int64))


def iter_gguf(path: Path, model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(transformers name, float32 tensor) for every GGUF tensor the model has, one at a time."""
    source = GGUFTensors(path, model)
    for tensor in source.reader.tensors:
        name, values = source.float_tensor(tensor)
        if name is not None:
            yield name, values
