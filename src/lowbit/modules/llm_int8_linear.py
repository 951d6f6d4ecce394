"""Linear layer in the style of bitsandbytes' LLM.int8 (Dettmers et al., 2022): int8 weights, int8 x
int8 matmul with vector-wise scales, and a float path for outlier activation columns.

Stores the row-wise int8 format (formats.int8_rows); the threshold is part of the spec.
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.modules.int8_linear import Int8Linear


class LLMInt8Linear(Int8Linear):
    """y = int8(x_regular) @ q_w^T * s_x s_w + x_outliers @ W[:, outliers]^T + bias."""

    op = "llm_int8_linear"
    tiles_on_cuda = False  # its int8 x int8 paths read rows

    def __init__(
        self, layout: Int8RowLayout, has_bias: bool, device: torch.device | str | None = None, threshold: float = 6.0
    ):
        super().__init__(layout, has_bias, device)
        self.threshold = threshold

    def spec(self) -> dict[str, Any]:
        return super().spec() | {"threshold": self.threshold}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: torch.device | str = "meta") -> "LLMInt8Linear":
        module = super().from_spec({k: v for k, v in spec.items() if k != "threshold"}, device)
        module.threshold = float(spec["threshold"])
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.run_kernel(x.reshape(-1, self.in_features), self.threshold)
        return y.reshape(*x.shape[:-1], self.out_features)
