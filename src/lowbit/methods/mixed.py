"""mixed: one base method, a bit width per layer (mixed precision under a memory budget).

The config holds the base method's settings and each layer's bit width. Every layer is quantized by the
base method at its own width into the base's own format, so the saved model loads like any other; its
`lowbit.json` records the base settings and the width of every layer (checkpoint format 2). The widths
are chosen by `lowbit quantize --method auto` (recommend.auto: per-layer sensitivity, then a knapsack under
the budget), in the spirit of HAWQ (Dong et al., 2019) for LLM weight quantization.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

import torch

from lowbit.calib.engine import BlockRun
from lowbit.errors import LowbitError
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.base import QuantizedLinear

MIXABLE_CALIBRATED = ("gptq",)  # calibrated methods whose block loop quantizes each linear on its own


@register_method("mixed")
@dataclass(frozen=True, kw_only=True)
class MixedConfig(MethodConfig):
    format_version = 2

    base: dict = field(default_factory=dict)  # the base method's config (its to_dict())
    layer_bits: dict = field(default_factory=dict)  # full layer name -> bit width

    def __post_init__(self) -> None:
        super().__post_init__()
        base = self.base_config
        if not self.layer_bits:
            raise LowbitError("mixed needs a bit width per layer: make it with `lowbit quantize --method auto`")
        for bits in set(self.layer_bits.values()):
            dataclasses.replace(base, bits=bits)  # the base method validates each width

    @cached_property
    def base_config(self) -> MethodConfig:
        base = MethodConfig.from_dict(self.base)
        if base.name == "mixed" or "bits" not in {f.name for f in dataclasses.fields(base)}:
            raise LowbitError(f"mixed precision needs a base method with a bit width, not {base.name}")
        if base.needs_calibration and base.name not in MIXABLE_CALIBRATED:
            raise LowbitError(f"{base.name} cannot take a bit width per layer: use rtn, hqq or gptq as the base")
        if base.embedding_bits or base.head_bits:
            raise LowbitError("mixed precision covers the linear layers only: drop embedding_bits/head_bits")
        return base

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.base_config.needs_calibration

    @property
    def calibrates_blocks(self) -> bool:  # type: ignore[override]
        return self.base_config.calibrates_blocks

    def layer_config(self, name: str) -> MethodConfig:
        if name not in self.layer_bits:
            raise LowbitError(f"layer {name} has no bit width in this mixed config: it was made for another model")
        return dataclasses.replace(self.base_config, bits=self.layer_bits[name])

    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None) -> QuantizedLinear:
        raise LowbitError("mixed quantizes each layer by name (layer_config): use lowbit.quantize")

    def calibrate_block(self, run: BlockRun) -> dict[str, torch.Tensor]:
        self.base_config.gptq_block(run, self.layer_config)
        return {}

    def summary(self) -> str:
        """e.g. 'hqq g64: 2-bit x40, 3-bit x110, 4-bit x60'."""
        counts = Counter(self.layer_bits.values())
        widths = ", ".join(f"{b}-bit x{counts[b]}" for b in sorted(counts))
        group = getattr(self.base_config, "group_size", None)
        return f"{self.base_config.name}{f' g{group}' if group else ''}: {widths}"
