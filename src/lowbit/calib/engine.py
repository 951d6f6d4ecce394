"""The sequential calibration engine, written once for every calibration method (GPTQ, AWQ, AQLM, QAT).

Runs the calibration windows up to decoder block 0 and records its inputs and keyword inputs (attention
mask, position embeddings, ...). Then, block by block: the method sees the block through a `BlockRun`
(its target linears, a way to feed the recorded inputs through it with hooks, a way to swap in quantized
layers), and the block's outputs are recomputed with the *quantized* block and become the next block's
inputs (Frantar et al., 2022, section 4). Only the block being worked on needs to be on `device`; the
others stay where the model is, so a model larger than GPU memory can be quantized.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Protocol

import torch
from torch import nn

from lowbit.calib.arch import ArchSpec, arch_spec, decoder_blocks
from lowbit.calib.resume import BlockCheckpoints
from lowbit.core.checks import check_finite
from lowbit.errors import LowbitError
from lowbit.progress import track

Batch = tuple[torch.Tensor, dict[str, Any]]  # hidden states (b, seq, hidden) and the block's keyword inputs
Hook = Callable[[torch.Tensor], None]


class BlockMethod(Protocol):
    name: str

    def calibrate_block(self, run: "BlockRun") -> dict[str, torch.Tensor]:
        """Quantize the run's linears (via run.replace); return artifacts to save (e.g. AWQ scales)."""


class BlockRun:
    """One decoder block as a calibration method sees it."""

    def __init__(self, block: nn.Module, prefix: str, spec: ArchSpec, linears: dict[str, nn.Module], inputs: list[Batch]):
        self.block, self.prefix, self.spec = block, prefix, spec
        self.linears = linears  # local name -> module, only the layers to quantize
        self.inputs = inputs

    def full_name(self, local: str) -> str:
        return f"{self.prefix}.{local}"

    def input_groups(self) -> list[tuple[str, ...]]:
        """Target linears grouped by shared input, in forward order (the true-sequential stages)."""
        groups = [tuple(n for n in group if n in self.linears) for group in self.spec.input_groups()]
        return [g for g in groups if g]

    @torch.no_grad()
    def forward(
        self, hooks: dict[str, Hook] | None = None, batches: int | None = None, outputs: bool = True
    ) -> list[torch.Tensor]:
        """Feed the recorded inputs (the first `batches` only, if given) through the block.

        hooks: local linear name -> fn(x) called with that linear's input (..., in) on every batch.
        Returns the block's output hidden states per batch; with outputs=False, each batch stops as soon
        as every hooked linear has seen its input (the rest of the block is not run) and [] is returned.
        """
        hooks = hooks or {}
        pending: set[str] = set()

        def wrap(name: str, fn: Hook):
            def pre_hook(_module: nn.Module, args: tuple) -> None:
                fn(args[0])
                pending.discard(name)
                if not outputs and not pending:
                    raise _StopForward

            return pre_hook

        handles = [self.block.get_submodule(n).register_forward_pre_hook(wrap(n, fn)) for n, fn in hooks.items()]
        results = []
        try:
            for hidden, kwargs in self.inputs[:batches]:
                pending.update(hooks)
                try:
                    results.append(first_output(self.block(hidden, **kwargs)))
                except _StopForward:
                    pass
        finally:
            for handle in handles:
                handle.remove()
        return results if outputs else []

    @torch.no_grad()
    def module_inputs(self, local: str, batches: int | None = None) -> list[tuple[tuple, dict[str, Any]]]:
        """(args, kwargs) the block's submodule `local` receives on each recorded batch (the block stops there)."""
        feeds = [lambda h=hidden, k=kwargs: self.block(h, **k) for hidden, kwargs in self.inputs[:batches]]
        return record_inputs(self.block.get_submodule(local), feeds)

    def replace(self, local: str, module: nn.Module) -> None:
        self.block.set_submodule(local, module)
        self.linears[local] = module


@torch.no_grad()
def run_sequential(
    model: nn.Module,
    targets: dict[str, nn.Module],
    windows: torch.Tensor,
    method: BlockMethod,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    progress: bool = False,
    checkpoints: BlockCheckpoints | None = None,
) -> dict[str, torch.Tensor]:
    """Quantize every target linear block by block with `method`; returns the methods' artifacts.

    windows: (n, seqlen) calibration token ids. The model is left on the device it came from.
    checkpoints: where each finished block is recorded; blocks already finished there are restored, not redone.
    """
    spec = arch_spec(model.config.model_type)
    blocks = decoder_blocks(model, spec)
    outside = [name for name in targets if not name.startswith(f"{spec.blocks}.")]
    if outside:
        raise LowbitError(f"{method.name} calibrates decoder-block linears only, not {outside[0]}: drop it from --include")
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    _move_outside_blocks(model, spec.blocks, device)
    try:
        inputs = capture_block_inputs(model, blocks[0], windows, batch_size, device)
        start = min(checkpoints.finished(), len(blocks)) if checkpoints else 0
        artifacts: dict[str, torch.Tensor] = {}
        for i in range(start):
            artifacts |= checkpoints.restore(i, blocks[i])
        if start:
            inputs = _with_hidden(inputs, checkpoints.outputs(start - 1), device)
        for i in track(range(start, len(blocks)), f"{method.name}: blocks", progress):
            prefix = f"{spec.blocks}.{i}"
            local = {name[len(prefix) + 1 :]: m for name, m in targets.items() if name.startswith(prefix + ".")}
            run = BlockRun(blocks[i].to(device), prefix, spec, local, inputs)
            found, outputs = _calibrate_block(method, run, i)
            for out in outputs:
                check_finite(out, f"quantized outputs of block {i}")
            artifacts |= found
            inputs = [(out, kwargs) for out, (_, kwargs) in zip(outputs, run.inputs)]
            blocks[i].to(home)
            if checkpoints:
                checkpoints.save(i, blocks[i], found, outputs)
    finally:
        _move_outside_blocks(model, spec.blocks, home)
    return artifacts


def _calibrate_block(method: BlockMethod, run: BlockRun, index: int) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Let `method` quantize the block, then feed it its inputs; on out-of-memory, undo and retry with halved batches."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in run.block.state_dict().items()}
    originals = dict(run.linears)
    while True:
        try:
            found = method.calibrate_block(run) if run.linears else {}
            return found, run.forward()
        except torch.OutOfMemoryError:
            rows = max(hidden.shape[0] for hidden, _ in run.inputs)
            if rows == 1:
                raise LowbitError(
                    f"out of memory calibrating block {index} even one window at a time: "
                    "use --device cpu, fewer --nsamples or a shorter --calib-seqlen"
                ) from None
            for name, module in originals.items():
                run.replace(name, module)
            run.block.load_state_dict(state)
            run.inputs = [half for batch in run.inputs for half in split_batch(batch)]
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warnings.warn(f"out of memory on block {index}: retrying with batches of {(rows + 1) // 2} windows")


def split_batch(batch: Batch) -> list[Batch]:
    """Split a recorded batch in two along the batch dimension (keyword tensors with that leading size too)."""
    hidden, kwargs = batch
    rows = hidden.shape[0]
    if rows < 2:
        return [batch]
    cut = (rows + 1) // 2

    def part(value: Any, half: int) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            return value[:cut] if half == 0 else value[cut:]
        if isinstance(value, (tuple, list)):
            return type(value)(part(v, half) for v in value)
        return value

    return [(part(hidden, h), {k: part(v, h) for k, v in kwargs.items()}) for h in (0, 1)]


def _with_hidden(inputs: list[Batch], saved: list[torch.Tensor], device: torch.device) -> list[Batch]:
    """The recorded batches with their hidden states replaced by a finished block's saved outputs."""
    hidden = torch.cat(saved)  # (n, seq, hidden): saved batches may be split finer than the recorded ones
    sizes = [h.shape[0] for h, _ in inputs]
    if hidden.shape[0] != sum(sizes) or hidden.shape[1:] != inputs[0][0].shape[1:]:
        raise LowbitError("the saved block outputs do not match these calibration windows: delete the .work folder")
    return [(h.to(device, inputs[0][0].dtype), kwargs) for h, (_, kwargs) in zip(hidden.split(sizes), inputs)]


class _StopForward(Exception):
    """Raised by a recording hook once a module's inputs are seen: the rest of the forward is not run."""


def record_inputs(module: nn.Module, feeds: list[Callable[[], Any]]) -> list[tuple[tuple, dict[str, Any]]]:
    """Call each feed, recording the (args, kwargs) `module` receives and stopping the feed there."""
    seen: list[tuple[tuple, dict[str, Any]]] = []

    def catch(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, dict(kwargs)))
        raise _StopForward

    handle = module.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for feed in feeds:
            try:
                feed()
            except _StopForward:
                pass
    finally:
        handle.remove()
    return seen


def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device
) -> list[Batch]:
    """Run each batch of windows up to the first block and record its positional and keyword inputs."""
    feeds = [lambda b=batch: model(b.to(device), use_cache=False) for batch in windows.split(batch_size)]
    batches: list[Batch] = []
    for args, kwargs in record_inputs(first_block, feeds):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        check_finite(hidden, "calibration activations entering block 0")
        batches.append((hidden, kwargs))
    if len(batches) != len(feeds):
        raise LowbitError("the model did not reach its first decoder block: its layout does not match its model_type")
    return batches


def first_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _move_outside_blocks(model: nn.Module, blocks_path: str, device: torch.device) -> None:
    """Move everything but the decoder blocks (embeddings, rotary tables, final norm, head) to `device`."""
    module = model
    for part in blocks_path.split("."):
        for name, child in module.named_children():
            if name != part:
                child.to(device)
        for key, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None:
                getattr(module, "_parameters" if key in module._parameters else "_buffers")[key] = _moved(tensor, device)
        module = getattr(module, part)


def _moved(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    moved = tensor.to(device)
    return nn.Parameter(moved, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else moved
