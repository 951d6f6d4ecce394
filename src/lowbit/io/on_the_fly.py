"""On-the-fly quantization: build the quantized model while reading the checkpoint, tensor by tensor.

The model skeleton is built on the meta device (no memory); each tensor read from the checkpoint
(io.tensor_sources) is either a target linear's weight, quantized at once with a calibration-free
method and swapped in, or any other tensor, converted to `dtype` and assigned. The full-precision model
is never held: peak memory is about the quantized model plus the largest tensor (in `dtype`, plus the
method's working copies of it). The result equals quantizing after a normal load with the same dtype.
With glibc, freed temporaries can stay in the heap between the small packed buffers that outlive them;
`MALLOC_MMAP_THRESHOLD_=1048576` in the environment sends every allocation of 1 MiB or more to mmap, so
they return to the OS (benchmarks/on_the_fly.py measures both).
"""

from __future__ import annotations

from pathlib import Path
import torch
from torch import nn

from lowbit.calib.arch import arch_spec, find_targets, linear_weight
from lowbit.core.checks import check_finite
from lowbit.errors import LowbitError
from lowbit.io.checkpoint import check_complete
from lowbit.io.sources import LoadedModel, demo_path, meta_model
from lowbit.io.tensor_sources import iter_gguf, iter_safetensors
from lowbit.methods.base import MethodConfig
from lowbit.modules.base import QuantizedLinear
from lowbit.progress import track


@torch.no_grad()
def load_on_the_fly(
    spec: str, config: MethodConfig, dtype: torch.dtype = torch.float32, progress: bool = False
) -> LoadedModel:
    """Load MODEL (a Hugging Face safetensors folder, a .gguf file or 'demo') quantized with `config`."""
    if config.needs_calibration:
        raise LowbitError(f"{config.name} needs calibration data: on-the-fly loading takes calibration-free methods")
    path = demo_path() if spec == "demo" else Path(spec).expanduser()
    gguf_file = path.name if path.is_file() and path.suffix == ".gguf" else None
    folder = path.parent if gguf_file else path
    if not gguf_file and not (path.is_dir() and (path / "config.json").is_file()):
        raise LowbitError(f"{spec} is neither a Hugging Face folder with config.json nor a .gguf file")
    model, tokenizer = skeleton(folder, gguf_file, dtype)
    targets = find_targets(model, arch_spec(model.config.model_type), config.include, config.exclude)
    if not targets:
        raise LowbitError("no layers matched: check the include/exclude patterns")
    tensors = iter_gguf(path, model) if gguf_file else iter_safetensors(path)
    for name, tensor in track(tensors, f"loading + quantizing ({config.name})", progress):
        _place(model, targets, config, name, tensor, dtype)
    check_complete(model, spec)
    model.lowbit_config = config
    return LoadedModel(model, tokenizer, str(path))


def skeleton(folder: Path, gguf_file: str | None, dtype: torch.dtype) -> tuple[nn.Module, object]:
    """The model with every parameter on the meta device (buffers real), and its tokenizer."""
    from transformers import AutoTokenizer

    model = meta_model(str(folder), dtype, str(folder), gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError, KeyError) as err:
        raise LowbitError(f"cannot read the tokenizer of {folder}: {str(err).strip().splitlines()[0]}")
    return model, tokenizer


def _place(
    model: nn.Module, targets: dict[str, nn.Module], config: MethodConfig, name: str, tensor: torch.Tensor, dtype
) -> None:
    """Quantize a target's weight the moment it arrives; assign every other tensor in `dtype`.

    `targets` holds the layers still to quantize; each is removed once quantized.
    """
    module = assign_tensor(model, name, tensor, dtype)
    module_name, _, kind = name.rpartition(".")
    if module_name in targets and kind == "weight":
        check_finite(module.weight, f"weight of {module_name}")
        weight, bias = linear_weight(module)
        if bias is not None and bias.is_meta:  # its bias comes later in the file
            bias = torch.zeros(bias.shape, dtype=dtype)
        model.set_submodule(module_name, config.layer_config(module_name).quantize_layer(weight, bias))
        del targets[module_name]  # the float layer (now holding its weight) must not outlive this call


def assign_tensor(model: nn.Module, name: str, tensor: torch.Tensor, dtype) -> nn.Module:
    """Put a checkpoint tensor (converted to `dtype` if floating) in its place; returns its module.

    A bias whose layer was already quantized goes into the quantized module's bias buffer.
    """
    from accelerate.utils import set_module_tensor_to_device

    module_name = name.rpartition(".")[0]
    tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        raise LowbitError(f"checkpoint tensor {name} has no place in the model: it does not match its config")
    if isinstance(module, QuantizedLinear):  # a bias read after its layer was quantized
        module.bias = tensor
        return module
    try:
        set_module_tensor_to_device(model, name, "cpu", value=tensor)
    except (ValueError, AttributeError) as err:
        raise LowbitError(f"checkpoint tensor {name} does not fit the model ({err})")
    return module
