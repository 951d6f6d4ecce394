"""aqlm: additive quantization with learned codebooks (Egiazarian et al., 2024), e.g. 2x8, 1x16, 1x8.

Per block, through the calibration engine: record the float block's outputs; quantize its linears in
true-sequential stages, each from its input Hessian (core.aqlm: residual k-means, least-squares codebook
updates, closed-form scales, beam search of the codes); then fine-tune the block's codebooks, scales and
norms so that it reproduces the float outputs (calib.reconstruct); pack into `AQLMLinear`.

Presets: `standard` follows the paper's search (beam 4, up to 10 rounds, every codeword of a 1x16
codebook searched: meant for a GPU); `fast` searches greedily over 2 rounds on sampled k-means points,
fine-tunes on 32 windows, and finds 1x16 codes within the sum of two 8-bit codebooks (core.aqlm).
Any search or fine-tuning field set explicitly (non-zero) overrides the preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.calib.arch import is_linear, linear_weight
from lowbit.calib.engine import BlockRun
from lowbit.calib.reconstruct import micro_batches, reconstruct_block
from lowbit.calib.stats import collect_hessians
from lowbit.calib.train import Schedule
from lowbit.core.aqlm import AQLMSearch, aqlm_quantize
from lowbit.core.checks import check_choice
from lowbit.core.threads import one_cpu_thread
from lowbit.errors import LowbitError
from lowbit.formats.aqlm import AQLMLayout
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.aqlm_linear import AQLMLinear, AQLMTrainLinear

PRESETS = {
    "standard": dict(beam=4, rounds=10, kmeans_iters=30, kmeans_points=0, cg_iters=30, finetune_steps=0,
                     finetune_epochs=2, finetune_samples=0, product_search=False),
    "fast": dict(beam=1, rounds=2, kmeans_iters=10, kmeans_points=64, cg_iters=10, finetune_steps=0,
                 finetune_epochs=1, finetune_samples=32, product_search=True),
}  # fmt: skip


@register_method("aqlm")
@dataclass(frozen=True, kw_only=True)
class AQLMConfig(MethodConfig):
    needs_calibration = True
    calibrates_blocks = True

    codebooks: int = 2  # M
    codebook_bits: int = 8  # B: 2**B codewords per codebook (<= 16)
    group_size: int = 8  # inputs per codeword
    preset: str = "standard"  # fast or standard (see the module docstring)
    beam: int = 0  # 0: the preset's
    rounds: int = 0
    kmeans_iters: int = 0
    cg_iters: int = 0
    finetune_epochs: int = -1  # passes over the fine-tuning windows; 0: no fine-tuning; -1: the preset's
    finetune_samples: int = 0  # calibration windows used for fine-tuning (0: the preset's; all under standard)
    finetune_lr: float = 1e-4
    finetune_batch: int = 1  # windows per fine-tuning step
    train_norms: bool = True
    true_sequential: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.preset, tuple(PRESETS), "aqlm preset")
        if not 1 <= self.codebooks <= 8 or not 1 <= self.codebook_bits <= 16:
            raise LowbitError(f"aqlm needs 1..8 codebooks of 1..16 bits, got {self.codebooks}x{self.codebook_bits}")
        for name in ("group_size", "finetune_batch"):
            if getattr(self, name) < 1:
                raise LowbitError(f"aqlm {name} must be a positive integer, got {getattr(self, name)}")
        for name in ("beam", "rounds", "kmeans_iters", "cg_iters", "finetune_samples"):
            if getattr(self, name) < 0:
                raise LowbitError(f"aqlm {name} must be >= 0 (0: the preset's), got {getattr(self, name)}")
        if self.finetune_epochs < -1 or not self.finetune_lr > 0:
            raise LowbitError("aqlm finetune_epochs must be >= 0 (or -1: the preset's) and finetune_lr > 0")

    def setting(self, name: str):
        """A search/fine-tuning setting: the field when set explicitly, else the preset's."""
        value = getattr(self, name, None)
        unset = value is None or value == (-1 if name == "finetune_epochs" else 0)
        return PRESETS[self.preset][name] if unset else value

    def search(self) -> AQLMSearch:
        product = self.setting("product_search") and self.codebooks == 1 and self.codebook_bits > 8
        return AQLMSearch(
            beam=self.setting("beam"), rounds=self.setting("rounds"), kmeans_iters=self.setting("kmeans_iters"),
            kmeans_points=self.setting("kmeans_points"), cg_iters=self.setting("cg_iters"),
            product_search=product and self.codebook_bits % 2 == 0, seed=self.seed,
        )  # fmt: skip

    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None) -> AQLMLinear:
        """stats: the (in, in) Hessian of the layer's inputs."""
        if stats is None:
            raise LowbitError(f"{self.name} needs calibration data: pass --calib wikitext2 (or a text file)")
        return self._quantize(weight, bias, stats).packed()

    def empty_layer(self, out_features: int, in_features: int, has_bias: bool = False) -> AQLMLinear:
        layout = AQLMLayout(out_features, in_features, self.codebooks, self.codebook_bits, self.group_size)
        return AQLMLinear(layout, has_bias, device="meta")

    def _quantize(self, weight: torch.Tensor, bias: torch.Tensor | None, H: torch.Tensor) -> AQLMTrainLinear:
        with one_cpu_thread(weight.device):
            w = aqlm_quantize(weight, H, self.codebooks, self.codebook_bits, self.group_size, self.search())
        return AQLMTrainLinear(w, bias)

    def calibrate_block(self, run: BlockRun) -> dict[str, torch.Tensor]:
        epochs = self.setting("finetune_epochs")
        samples = self.setting("finetune_samples")
        used = _batches_for(run, samples) if epochs else 0
        targets = run.forward(batches=used) if used else []
        groups = run.input_groups()
        for stage in [[g] for g in groups] if self.true_sequential else [groups]:
            for name, H in collect_hessians(run, stage).items():
                run.replace(name, self._quantize(*linear_weight(run.linears[name]), H))
        artifacts = self._finetune(run, targets, epochs) if used else {}
        for name, module in list(run.linears.items()):
            run.replace(name, module.packed())
        return artifacts

    def _finetune(self, run: BlockRun, targets: list[torch.Tensor], epochs: int) -> dict[str, torch.Tensor]:
        batches = micro_batches(run.inputs, targets, self.finetune_batch)
        samples = self.setting("finetune_samples")
        if samples:
            batches = batches[: math.ceil(samples / self.finetune_batch)]
        codebooks = [p for m in run.linears.values() for p in (m.codebooks, m.scales)]
        norms = _norm_params(run.block) if self.train_norms else []
        schedule = Schedule(lr=self.finetune_lr, steps=epochs * len(batches), grad_clip=1.0)
        losses = reconstruct_block(run, batches, [{"params": codebooks}, {"params": norms}], schedule, self.seed)
        return {f"{run.prefix}.aqlm_finetune_loss": losses}  # block output MSE before, after


def _batches_for(run: BlockRun, samples: int) -> int:
    """How many recorded batches hold the first `samples` windows (0: all)."""
    if not samples:
        return len(run.inputs)
    seen = 0
    for i, (hidden, _) in enumerate(run.inputs):
        seen += hidden.shape[0]
        if seen >= samples:
            return i + 1
    return len(run.inputs)


def _norm_params(block: nn.Module) -> list[nn.Parameter]:
    """Float parameters of the block outside its linears and quantized layers (the norms)."""
    skip = {id(p) for m in block.modules() if is_linear(m) or isinstance(m, AQLMTrainLinear) for p in m.parameters()}
    return [p for p in block.parameters() if id(p) not in skip and p.is_floating_point()]
