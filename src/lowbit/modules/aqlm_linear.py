"""Linear layer over the AQLM additive-codebook format (formats.aqlm), run through the kernel selector."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.core.aqlm import AQLMWeights, aqlm_decode
from lowbit.formats.aqlm import AQLMLayout, pack_aqlm, unpack_aqlm
from lowbit.modules.base import QuantizedLinear


class AQLMLinear(QuantizedLinear):
    """y = x @ W^T + bias, W[o, group j] = scales[o] * sum_m codebooks[m, codes[o, j, m]]."""

    layout_type = AQLMLayout
    op = "aqlm_linear"

    @classmethod
    def from_weights(cls, w: AQLMWeights, bias: torch.Tensor | None) -> "AQLMLinear":
        out, _, m = w.codes.shape
        k, g = w.codebooks.shape[1:]
        layout = AQLMLayout(out, w.in_features, m, k.bit_length() - 1, g)
        module = cls(layout, has_bias=bias is not None, device=w.codes.device)
        for name, tensor in pack_aqlm(w, layout).items():
            setattr(module, name, tensor)
        if bias is not None:
            module.bias = bias.detach().clone()
        return module

    def aqlm_weights(self) -> AQLMWeights:
        return unpack_aqlm(dict(self.named_buffers(recurse=False)), self.layout)

    def weight_args(self) -> tuple:
        return (self.codes, self.codebooks, self.scales)

    def format_context(self) -> dict[str, Any]:
        return {"bits": self.layout.nbits, "group_size": self.layout.group_size,
                "codebooks": self.layout.num_codebooks}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.run_kernel(x.reshape(-1, self.in_features))
        return y.reshape(*x.shape[:-1], self.out_features)


class AQLMTrainLinear(nn.Module):
    """The same layer with float32 codebooks and scales as parameters (codes fixed), for block fine-tuning."""

    def __init__(self, w: AQLMWeights, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = w.in_features, w.codes.shape[0]
        self.register_buffer("codes", w.codes)  # (out, G, M) int64
        self.codebooks = nn.Parameter(w.codebooks.float().clone())  # (M, K, g)
        self.scales = nn.Parameter(w.scales.float().clone())  # (out, 1)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = aqlm_decode(self.codes, self.codebooks, self.scales)[:, : self.in_features]
        return F.linear(x, w.to(x.dtype), self.bias)

    def packed(self) -> AQLMLinear:
        w = AQLMWeights(self.codes, self.codebooks.detach(), self.scales.detach(), self.in_features)
        return AQLMLinear.from_weights(w, self.bias)
