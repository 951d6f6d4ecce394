"""Token embedding over the shared group-wise integer format: rows of the vocabulary, groups along hidden."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.formats.int_group import IntGroupLayout
from lowbit.kernels.select import select
from lowbit.modules.int_linear import IntLinear


class QuantizedEmbedding(IntLinear):
    """nn.Embedding replacement: (vocab, hidden) codes packed like IntLinear's (out=vocab, in=hidden).

    A lookup unpacks and dequantizes only the rows asked for, so it never materialises the float table.
    """

    op = "int_group_embedding"

    def __init__(self, layout: IntGroupLayout, has_bias: bool = False, device=None, dtype: str = "float32"):
        super().__init__(layout, has_bias, device)
        self.out_dtype = dtype  # dtype of the original table, which the rest of the model expects

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "dtype": self.out_dtype}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: torch.device | str = "meta") -> "QuantizedEmbedding":
        spec = dict(spec)
        has_bias, dtype = spec.pop("bias"), spec.pop("dtype")
        return cls(IntGroupLayout(**spec), has_bias, device, dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ctx = self.call_context(ids.numel(), ids.device)
        table = select(self.op, ctx, self.kernel_preference).fn(ids.reshape(-1), self.in_features, *self.weight_args())
        return table.to(getattr(torch, self.out_dtype)).reshape(*ids.shape, self.in_features)
