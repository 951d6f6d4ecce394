"""The Python API: quantize a loaded model with a method config, save it, load it back."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from lowbit.calib.activations import observe_inputs
from lowbit.calib.arch import arch_spec, find_targets, linear_weight
from lowbit.calib.engine import run_sequential
from lowbit.calib.resume import BlockCheckpoints, run_fingerprint
from lowbit.core.checks import check_finite
from lowbit.errors import LowbitError
from lowbit.io.checkpoint import save_quantized
from lowbit.io.on_the_fly import load_on_the_fly
from lowbit.io.sources import LoadedModel, load_model
from lowbit.methods.base import MethodConfig
from lowbit.methods.vocab import quantize_vocab_layers
from lowbit.progress import track


@torch.no_grad()
def quantize(
    model: nn.Module,
    config: MethodConfig,
    calib: torch.Tensor | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
    work_dir: str | Path | None = None,
) -> nn.Module:
    """Replace the model's target linears (in place) by `config`'s quantized modules; returns the model.

    calib: (n, seqlen) token windows, for methods that need calibration data.
    device: where block-by-block calibration runs each block (default: where the model is).
    work_dir: where block-by-block calibration records each finished block; rerunning with the same model,
        config and windows resumes after the last finished block (calib.resume).
    Artifacts a method wants kept (AWQ's searched scales and clips) land in `model.lowbit_artifacts`.
    """
    if getattr(model, "lowbit_config", None) is not None:
        raise LowbitError("this model is already quantized: load the original model to quantize it again")
    targets = find_targets(model, arch_spec(model.config.model_type), config.include, config.exclude)
    if not targets:
        raise LowbitError("no layers matched: check the include/exclude patterns")
    for name, module in targets.items():
        check_finite(module.weight, f"weight of {name}")
    if config.needs_calibration and calib is None:
        raise LowbitError(f"{config.name} needs calibration data: pass --calib wikitext2 (or a text file)")
    if config.calibrates_blocks:
        checkpoints = None
        if work_dir is not None:
            checkpoints = BlockCheckpoints(work_dir, run_fingerprint(model, config.to_dict(), calib))
        teacher = copy.deepcopy(model) if config.needs_teacher() else None
        model.lowbit_artifacts = run_sequential(model, targets, calib, config, device, progress=progress, checkpoints=checkpoints)
        model.lowbit_artifacts |= config.finish(model, calib, teacher, progress, work_dir)
    else:
        stats: dict = {}
        if config.needs_calibration:
            stats = observe_inputs(model, targets, calib, config.make_observer, progress=progress)
        for name, module in track(targets.items(), f"quantizing ({config.name})", progress):
            weight, bias = linear_weight(module)
            model.set_submodule(name, config.layer_config(name).quantize_layer(weight, bias, stats.get(name)))
    quantize_vocab_layers(model, config.embedding_bits, config.head_bits)
    model.lowbit_config = config
    return model


def save(model: nn.Module, out: str | Path, tokenizer=None, source: str | None = None, overwrite: bool = False) -> Path:
    """Write a quantized model (packed tensors, metadata, config, tokenizer) to the folder `out`."""
    return save_quantized(model, out, tokenizer, source, overwrite)


def load(
    model: str | Path,
    dtype: torch.dtype = torch.float32,
    quantize: MethodConfig | None = None,
    progress: bool = False,
    import_gguf: bool = False,
) -> LoadedModel:
    """Load a lowbit output folder, a Hugging Face folder, a .gguf file, 'demo' or a hub id.

    With `quantize` (a calibration-free method config), a Hugging Face safetensors folder, a .gguf file
    or 'demo' is quantized on the fly while it is read, tensor by tensor (io.on_the_fly).
    With `import_gguf`, a .gguf file's Q8_0/Q4_0/Q5_0/Q4_1/Q5_1 weights are kept exactly (io.gguf_import).
    """
    if quantize is not None and import_gguf:
        raise LowbitError("--import-gguf keeps the file's own quantization: drop --quantize, or drop --import-gguf")
    if quantize is not None:
        return load_on_the_fly(str(model), quantize, dtype, progress)
    if import_gguf:
        from lowbit.io.gguf_import import import_gguf as load_gguf

        return load_gguf(str(model), progress)
    return load_model(str(model), dtype)
