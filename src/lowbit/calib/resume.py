"""Per-block checkpoints of a calibration run, so a killed run resumes at the next block.

The work folder (`.OUT.work` beside the output) holds `run.json` (a fingerprint of the model, method config
and calibration windows) and, for every finished block i, `block_i.safetensors` (the block's whole state:
quantized layers' packed buffers, and norms an AWQ scaling changed, plus the method's artifacts) with
`block_i.json` (each quantized layer's module type and spec) written last as the block's commit mark. The
last finished block's outputs (`hidden.safetensors`) are the next block's inputs. Files are written under a
temporary name and renamed, so a kill at any point leaves the previous finished block intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit.errors import LowbitError
from lowbit.modules import MODULE_TYPES, QuantizedLinear

ARTIFACT = "artifact."  # prefix of method artifacts inside a block file


def work_folder(out: str | Path) -> Path:
    """Where the calibration run writing `out` keeps its per-block checkpoints."""
    out = Path(out)
    return out.parent / f".{out.name}.work"


def run_fingerprint(model: nn.Module, config: dict[str, Any], windows: torch.Tensor) -> str:
    """sha256 over what decides the result: method config, calibration windows, and every weight's name, shape,
    dtype and first values (a sample, so that hashing a large model stays cheap)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().flatten()[:256].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(windows.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class BlockCheckpoints:
    """The finished blocks of one calibration run in `folder`; refuses a folder left by another run."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = self.folder / "run.json"
        if stamp.exists():
            found = _read_json(stamp).get("fingerprint")
            if found != fingerprint:
                raise LowbitError(
                    f"{self.folder} holds a calibration run with other settings: delete it to start afresh"
                )
        else:
            _write_atomic(stamp, lambda tmp: tmp.write_text(json.dumps({"fingerprint": fingerprint})))

    def finished(self) -> int:
        """How many blocks, from block 0 on, are finished (their commit mark exists)."""
        count = 0
        while (self.folder / f"block_{count}.json").exists():
            count += 1
        return count

    def save(self, index: int, block: nn.Module, artifacts: dict[str, torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """Record finished block `index`: its state, its artifacts, and its outputs (the next block's inputs)."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in block.state_dict().items()}
        tensors |= {ARTIFACT + k: v.detach().cpu().contiguous() for k, v in artifacts.items()}
        hidden = {str(j): out.detach().cpu().contiguous() for j, out in enumerate(outputs)}
        layers = {n: {"module": type(m).__name__, "spec": m.spec()} for n, m in block.named_modules() if isinstance(m, QuantizedLinear)}
        _write_atomic(self.folder / f"block_{index}.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        _write_atomic(self.folder / "hidden.safetensors", lambda tmp: save_file(hidden, str(tmp), {"block": str(index)}))
        _write_atomic(self.folder / f"block_{index}.json", lambda tmp: tmp.write_text(json.dumps(layers)))

    def restore(self, index: int, block: nn.Module) -> dict[str, torch.Tensor]:
        """Put finished block `index`'s quantized layers and state into `block`; returns its artifacts."""
        layers = _read_json(self.folder / f"block_{index}.json")
        tensors = _read_tensors(self.folder / f"block_{index}.safetensors")
        device = next(iter(block.state_dict().values())).device
        for name, layer in layers.items():
            block.set_submodule(name, MODULE_TYPES[layer["module"]].from_spec(layer["spec"], device=device))
        state = {k: v for k, v in tensors.items() if not k.startswith(ARTIFACT)}
        block.load_state_dict(state, strict=True)
        return {k[len(ARTIFACT) :]: v for k, v in tensors.items() if k.startswith(ARTIFACT)}

    def outputs(self, index: int) -> list[torch.Tensor]:
        """The outputs of finished block `index` (only the last finished block's are kept)."""
        path = self.folder / "hidden.safetensors"
        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("block") != str(index):
                    raise LowbitError(f"{path} does not hold block {index}'s outputs: delete {self.folder} to start afresh")
                return [f.get_tensor(str(j)) for j in range(len(f.keys()))]
        except (SafetensorError, OSError) as err:
            raise LowbitError(f"cannot read {path} ({err}): delete {self.folder} to start afresh")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LowbitError(f"cannot read {path} ({err}): delete {path.parent} to start afresh")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise LowbitError(f"cannot read {path} ({err}): delete {path.parent} to start afresh")
