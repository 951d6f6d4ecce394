"""What every quantized layer shares: buffers described by a layout, a JSON spec to rebuild it, byte counts."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from lowbit.kernels.select import CallContext, Candidate, check_preference, select


class QuantizedLinear(nn.Module):
    """Base of the quantized replacements for nn.Linear (and GPT-2's Conv1D, transposed).

    Subclasses set `op` (the kernel op they call) and `layout_type` (the layout dataclass whose buffers
    __init__ registers and whose fields, with `bias`, make up `spec()` / `from_spec()`). All state is
    buffers, so `state_dict` is the packed checkpoint and meta-device construction is free.
    """

    op: ClassVar[str]
    layout_type: ClassVar[type]  # the layout dataclass (formats/) whose fields make up the spec
    kernel_preference: str = "auto"

    def __init__(self, layout: Any, has_bias: bool, device: torch.device | str | None = None):
        super().__init__()
        self.layout = layout
        self.in_features = layout.in_features
        self.out_features = layout.out_features
        for name, (shape, dtype) in layout.buffer_shapes().items():
            self.register_buffer(name, torch.empty(shape, dtype=dtype, device=device))
        bias = torch.empty(layout.out_features, device=device) if has_bias else None
        self.register_buffer("bias", bias)

    def spec(self) -> dict[str, Any]:
        """JSON constructor arguments: the layout's fields plus whether there is a bias."""
        return {**dataclasses.asdict(self.layout), "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: torch.device | str = "meta") -> "QuantizedLinear":
        """An empty module (on `device`) for the spec; a malformed spec raises KeyError or TypeError."""
        fields = {k: v for k, v in spec.items() if k != "bias"}
        return cls(cls.layout_type(**fields), spec["bias"], device)

    def kernel(self, x: torch.Tensor) -> Candidate:
        rows = x.numel() // x.shape[-1]
        bits = getattr(self.layout, "bits", None)
        ctx = CallContext(x.device, rows, self.in_features, self.out_features, x.dtype, bits)
        return select(self.op, ctx, self.kernel_preference)

    def packed_bytes(self) -> int:
        """Bytes of the quantized weight and its qparams (bias excluded: it is not quantized)."""
        return self.layout.nbytes()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.spec().items())


def set_kernel_preference(model: nn.Module, preference: str) -> int:
    """Make every quantized layer of `model` ask the selector for `preference`; returns how many layers."""
    check_preference(preference)
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    for layer in layers:
        layer.kernel_preference = preference
    return len(layers)
