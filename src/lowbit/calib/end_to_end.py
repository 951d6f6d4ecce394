"""End-to-end training of a fake-quantized model (QAT's E2E-QP, EfficientQAT, Chen et al., 2024).

Trains the parameters of every `FakeQuantLinear` of the model (scales and zeros; latent weights when they
are trainable) on the training windows, with next-token cross-entropy or with KL(teacher || model) to the
unquantized model; everything else stays frozen. The window order of epoch e is a permutation seeded
with seed + e, so a run resumed from a checkpoint sees exactly the windows it would have seen.
Checkpoints (`e2e_state.pt` in the checkpoint folder) hold the trained tensors, the optimizer and the
step, written atomically; a folder holding another run's checkpoint is refused.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.calib.train import Schedule, Trainer
from lowbit.errors import LowbitError
from lowbit.modules.fake_quant import FakeQuantLinear
from lowbit.progress import loss_bar

CHECKPOINT_FILE = "e2e_state.pt"


@dataclass(frozen=True)
class E2ESettings:
    schedule: Schedule  # steps = epochs * ceil(windows / batch)
    batch: int  # windows per step
    loss: str  # "kl" or "ce"
    weight_lr_scale: float = 1.0  # latent weights' learning rate relative to the qparams'
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50


def window_loss(model: nn.Module, batch: torch.Tensor, teacher: nn.Module | None) -> torch.Tensor:
    """Next-token cross-entropy (no teacher) or KL(teacher || model), averaged over predicted positions."""
    logits = model(batch, use_cache=False).logits[:, :-1].float()  # (b, seq - 1, vocab)
    logp = F.log_softmax(logits, dim=-1).flatten(0, 1)
    if teacher is None:
        return F.nll_loss(logp, batch[:, 1:].reshape(-1))
    with torch.no_grad():
        ref = F.log_softmax(teacher(batch, use_cache=False).logits[:, :-1].float(), dim=-1).flatten(0, 1)
    return F.kl_div(logp, ref, log_target=True, reduction="batchmean")


def train_end_to_end(
    model: nn.Module, windows: torch.Tensor, teacher: nn.Module | None, settings: E2ESettings, progress: bool = False
) -> list[float]:
    """Train the model's FakeQuantLinear parameters; returns the loss of every step run (resumed steps excluded)."""
    if settings.loss == "kl" and teacher is None:
        raise LowbitError("e2e_loss=kl needs the unquantized model as a teacher: use e2e_loss=ce")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)}
    if not layers:
        raise LowbitError("the model has no fake-quantized layers to train")
    parts = [m.parameter_groups() for m in layers.values()]
    groups = [{"params": [p for part in parts for p in part["qparams"]]},
              {"params": [p for part in parts for p in part["weight"]], "lr_scale": settings.weight_lr_scale}]  # fmt: skip
    trainable = {id(p) for g in groups for p in g["params"]}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    trainer = Trainer(groups, settings.schedule)
    folder = Path(settings.checkpoint_dir) if settings.checkpoint_dir else None
    fingerprint = _fingerprint(layers, windows, settings)
    if folder is not None and (folder / CHECKPOINT_FILE).is_file():
        _resume(folder / CHECKPOINT_FILE, layers, trainer, fingerprint)
    device = next(model.parameters()).device
    per_epoch = -(-windows.shape[0] // settings.batch)
    losses = []
    try:
        with torch.enable_grad(), loss_bar("qat e2e", settings.schedule.steps, progress, trainer.done) as update:
            while trainer.done < settings.schedule.steps:
                epoch, i = divmod(trainer.done, per_epoch)
                order = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(settings.seed + epoch))
                batch = windows[order[i * settings.batch : (i + 1) * settings.batch]].to(device)
                losses.append(trainer.step(window_loss(model, batch, teacher)))
                update(losses[-1])
                if folder is not None and (trainer.done % settings.checkpoint_every == 0 or trainer.done == settings.schedule.steps):
                    _save(folder, layers, trainer, fingerprint)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return losses


def _fingerprint(layers: dict[str, FakeQuantLinear], windows: torch.Tensor, settings: E2ESettings) -> str:
    """sha256 of what decides the training: settings, windows, and the layers' names, shapes and kind."""
    digest = hashlib.sha256(f"{settings.schedule}|{settings.batch}|{settings.loss}|{settings.seed}".encode())
    digest.update(windows.cpu().contiguous().numpy().tobytes())
    for name, m in layers.items():
        digest.update(f"{name}:{tuple(m.weight.shape)}:{m.codes is None}".encode())
    return digest.hexdigest()


def _save(folder: Path, layers: dict[str, FakeQuantLinear], trainer: Trainer, fingerprint: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{n}.{k}": v.detach().cpu() for n, m in layers.items() for k, v in m.state_dict().items()}
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save({"fingerprint": fingerprint, "layers": tensors, "trainer": trainer.state_dict()}, tmp)
    os.replace(tmp, folder / CHECKPOINT_FILE)


def _resume(path: Path, layers: dict[str, FakeQuantLinear], trainer: Trainer, fingerprint: str) -> None:
    try:
        state = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise LowbitError(f"cannot read the QAT checkpoint {path} ({err}): delete it to start afresh")
    if state.get("fingerprint") != fingerprint:
        raise LowbitError(f"{path} was written by a QAT run with other settings or data: delete it to start afresh")
    for name, module in layers.items():
        prefix = name + "."
        module.load_state_dict({k[len(prefix) :]: v for k, v in state["layers"].items() if k.startswith(prefix)})
    trainer.load_state_dict(state["trainer"])
