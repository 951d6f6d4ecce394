"""gptq: weight-only integer quantization with second-order error compensation (Frantar et al., 2022).

The engine (calib.engine) walks the blocks; this module accumulates each linear's input Hessian, in
true-sequential stages (q/k/v, then o, then gate/up, then down, each seeing the already quantized layers
before it) when `true_sequential` (off by default: one pass per block), and hands (weight, Hessian) to core.gptq. Emits the same packed
group-wise integer format as rtn, with integer zero points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lowbit.calib.arch import linear_weight
from lowbit.calib.engine import BlockRun
from lowbit.calib.stats import collect_hessians
from lowbit.core.checks import check_bits, check_group_size
from lowbit.core.gptq import QPARAMS, gptq_quantize
from lowbit.errors import LowbitError
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.int_linear import IntLinear


@dataclass(frozen=True, kw_only=True)
class GPTQSettings(MethodConfig):
    """GPTQ's options, shared by gptq and awq+gptq."""

    needs_calibration = True
    calibrates_blocks = True

    bits: int = 4
    group_size: int = 128  # -1: per channel; need not divide the input size
    symmetric: bool = False
    damp: float = 0.01  # fraction of the mean Hessian diagonal added to it (raised automatically if needed)
    block_size: int = 128  # columns per lazy batch update
    # Defaults: act-order + static groups + mse qparams, what GPTQModel and llm-compressor offer for low bit
    # widths. On the demo model at 3-bit g64 this gave ppl 46.2 against 75.4 for the reference GPTQ choice
    # (desc_act=false, static_groups=false, qparams=minmax), which these options keep (docs/gptq3.md).
    desc_act: bool = True  # quantize columns in order of decreasing Hessian diagonal (needs static_groups)
    static_groups: bool = True  # fix every group's qparams from the unquantized weight
    # One Hessian pass per block, as llm-compressor: the true-sequential stages (each seeing the quantized
    # layers before it) cost three extra block forwards for ppl within ~1% either way on the demo model
    # (README, issue 3: 341 vs 432 s on 2 CPU cores).
    true_sequential: bool = False
    qparams: str = "mse"  # group scale/zero: "mse" (shrunk-range grid search, core.affine.mse_qparams) or "minmax"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits, 2, 8, self.name)
        check_group_size(self.group_size)
        if not 0 < self.damp <= 1:
            raise LowbitError(f"damp must be in (0, 1], got {self.damp}")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise LowbitError(f"block_size must be a positive integer, got {self.block_size!r}")
        if self.desc_act and not self.static_groups:
            raise LowbitError("desc_act=true needs static_groups=true (lowbit's format keeps groups in column order): "
                              "pass desc_act=false with static_groups=false")
        if self.qparams not in QPARAMS:
            raise LowbitError(f"qparams must be one of {', '.join(QPARAMS)}, got {self.qparams!r}")

    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None) -> IntLinear:
        """stats: the (in, in) Hessian of the layer's inputs."""
        if stats is None:
            raise LowbitError(f"{self.name} needs calibration data: pass --calib wikitext2 (or a text file)")
        w = gptq_quantize(
            weight, stats, self.bits, self.group_size, self.symmetric,
            self.damp, self.block_size, self.desc_act, self.static_groups, self.qparams,
        )
        return IntLinear.from_weights(w, bias)

    def empty_layer(self, out_features: int, in_features: int, has_bias: bool = False) -> IntLinear:
        return IntLinear.empty(out_features, in_features, self.bits, self.group_size, self.symmetric, has_bias)

    def gptq_block(self, run: BlockRun, layer_config: Callable[[str], MethodConfig] | None = None) -> None:
        """Quantize every linear of the block, stage by stage, each from its Hessian.

        layer_config: full layer name -> the settings for that layer (per-layer configs such as mixed
        precision); by default every layer takes this config's.
        """
        groups = run.input_groups()
        for stage in [[g] for g in groups] if self.true_sequential else [groups]:
            for name, H in collect_hessians(run, stage).items():
                weight, bias = linear_weight(run.linears[name])
                config = layer_config(run.full_name(name)) if layer_config else self
                run.replace(name, config.quantize_layer(weight, bias, H))


@register_method("gptq")
@dataclass(frozen=True, kw_only=True)
class GPTQConfig(GPTQSettings):
    def calibrate_block(self, run: BlockRun) -> dict[str, torch.Tensor]:
        self.gptq_block(run)
        return {}
