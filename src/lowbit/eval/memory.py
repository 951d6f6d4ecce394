"""Exact memory accounting: bytes of every quantized layer, bits per parameter, model bytes vs fp16."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lowbit.io.checkpoint import unique_tensors
from lowbit.modules.base import QuantizedLinear


@dataclass
class MemoryReport:
    weight_bytes: int  # the whole model as held: packed layers + everything left in float
    fp16_bytes: int  # the whole model if every weight were fp16
    quantized_params: int  # weights of the quantized layers
    quantized_bytes: int  # their packed weights + qparams
    quantized_fp16_bytes: int  # the same layers in fp16
    kernel_cache_bytes: int = 0  # layouts repacked for a kernel (kernels.cpu), held beside the packed weights

    @property
    def held_bytes(self) -> int:
        """What the weights really occupy at run time: the checkpoint's bytes plus kernel layouts."""
        return self.weight_bytes + self.kernel_cache_bytes

    @property
    def bits_per_param(self) -> float:
        """Bits per weight of the quantized layers, qparams included (0 when nothing is quantized)."""
        return 8 * self.quantized_bytes / self.quantized_params if self.quantized_params else 0.0

    @property
    def quantized_fraction_of_fp16(self) -> float:
        return self.quantized_bytes / self.quantized_fp16_bytes if self.quantized_fp16_bytes else 1.0

    @property
    def saving_vs_fp16(self) -> float:
        return 1 - self.weight_bytes / self.fp16_bytes


def memory_report(model: nn.Module, foreign: dict[str, tuple[int, int]] | None = None) -> MemoryReport:
    """Counts each stored tensor once (tied embeddings once); non-persistent buffers are not weights.

    foreign: layer name -> (bytes, weights) for quantized layers another library holds (its own count);
    their tensors are not counted again.
    """
    foreign = foreign or {}
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    packed_names = {f"{name}.{buf}" for name, m in quantized.items() for buf, _ in m.named_buffers() if buf != "bias"}
    q_params = sum(m.in_features * m.out_features for m in quantized.values()) + sum(p for _, p in foreign.values())
    q_bytes = sum(m.packed_bytes() for m in quantized.values()) + sum(b for b, _ in foreign.values())
    other_bytes, other_numel = 0, 0
    for name, tensor in unique_tensors(model).items():
        if name in packed_names or not tensor.is_floating_point() or _held_by(name, foreign):
            continue
        other_bytes += tensor.numel() * tensor.element_size()
        other_numel += tensor.numel()
    return MemoryReport(
        weight_bytes=q_bytes + other_bytes,
        fp16_bytes=2 * (q_params + other_numel),
        quantized_params=q_params,
        quantized_bytes=q_bytes,
        quantized_fp16_bytes=2 * q_params,
        kernel_cache_bytes=sum(m.kernel_cache_bytes() for m in quantized.values()),
    )


def _held_by(name: str, layers: dict) -> bool:
    """Whether tensor `name` belongs to one of `layers` (module names), at any depth below it."""
    parts = name.split(".")
    return any(".".join(parts[:i]) in layers for i in range(1, len(parts)))
