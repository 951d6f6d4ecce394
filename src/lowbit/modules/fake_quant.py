"""Fake quantization in the shared group-wise integer format, for quantization-aware training.

    w_hat = s * (clamp(round(w / s + z), 0, 2**b - 1) - z)          per group of g inputs (core.affine)

Rounding passes gradients straight through (STE, Bengio et al., 2013); the step sizes s and zero points
z are learnable parameters as in LSQ / LSQ+ (Esser et al., 2020; Bhalgat et al., 2020), the weights
optionally so. s and z are used rounded to fp16 (gradients pass through that rounding too), and codes
and weights are computed with the same float32 operations as core.affine, so `packed()` gives an
`IntLinear` whose reference forward reproduces this module's output exactly.
With `train_weight=False` the codes are frozen and only s and z learn (EfficientQAT's E2E-QP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.core.affine import QPARAM_DTYPE, IntWeights, expand_groups, quantize_affine, symmetric_zero
from lowbit.modules.int_linear import IntLinear


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def fp16_ste(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the fp16 the format stores, identity backward."""
    return x + (x.to(QPARAM_DTYPE).float() - x).detach()


class FakeQuantLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, init: IntWeights, bias: torch.Tensor | None, train_weight: bool):
        """weight (out, in): the latent float weight; init: its starting codes' qparams (and codes)."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bits, self.group_size = init.bits, init.group_size
        self.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=train_weight)
        self.scale = nn.Parameter(init.scale.float().clone())  # (out, n_groups)
        self.zero = None if init.zero is None else nn.Parameter(init.zero.float().clone())  # (out, n_groups)
        frozen = None if train_weight else init.codes.clone()  # (out, in) uint8: the codes, when frozen
        self.register_buffer("codes", frozen)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_int_linear(cls, layer: IntLinear, train_weight: bool) -> "FakeQuantLinear":
        """Start from a packed layer: the latent weight is its dequantized weight (codes unchanged)."""
        w = layer.int_weights()
        return cls(w.dequantize(), w, layer.bias, train_weight)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-column (out, in) scale and zero as the format stores them (fp16 values, float32 tensors)."""
        scale = expand_groups(fp16_ste(self.scale), self.group_size, self.in_features)
        if self.zero is None:
            return scale, torch.full_like(scale, float(symmetric_zero(self.bits)))
        return scale, expand_groups(fp16_ste(self.zero), self.group_size, self.in_features)

    def quantized_weight(self) -> torch.Tensor:
        s, z = self.qparams()
        if self.codes is not None:
            q = self.codes.float()
        else:
            q = torch.clamp(round_ste(self.weight / s + z), 0, 2**self.bits - 1)
        return (q - z) * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight().to(x.dtype), self.bias)

    @torch.no_grad()
    def int_weights(self) -> IntWeights:
        scale = self.scale.to(QPARAM_DTYPE)
        zero = None if self.zero is None else self.zero.to(QPARAM_DTYPE)
        if self.codes is not None:
            codes = self.codes.clone()
        else:
            codes = quantize_affine(self.weight, scale, zero, self.bits, self.group_size)
        return IntWeights(codes, scale, zero, self.bits, self.group_size)

    def packed(self) -> IntLinear:
        return IntLinear.from_weights(self.int_weights(), self.bias)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """'qparams' (scale, zero) and 'weight' (empty when the codes are frozen)."""
        qparams = [self.scale] + ([] if self.zero is None else [self.zero])
        return {"qparams": qparams, "weight": [self.weight] if self.codes is None else []}
