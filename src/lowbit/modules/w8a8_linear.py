"""Linear layer with int8 weights (per output channel) and int8 activations (one static scale)."""

from __future__ import annotations

import torch

from lowbit.formats.int8_rows import Int8RowLayout
from lowbit.modules.int8_linear import Int8Linear


class W8A8Linear(Int8Linear):
    """y = (round(x / s_x) @ q_w^T) * s_x * s_w + bias: integer matmul, scales calibrated ahead of time."""

    op = "w8a8_linear"
    tiles_on_cuda = False  # torch._int_mm and the Triton W8A8 kernel read rows

    def __init__(self, layout: Int8RowLayout, has_bias: bool, device: torch.device | str | None = None):
        super().__init__(layout, has_bias, device)
        self.register_buffer("input_scale", torch.empty(1, dtype=torch.float32, device=device))

    @classmethod
    def from_calibrated(
        cls, qweight: torch.Tensor, scale: torch.Tensor, input_scale: float, bias: torch.Tensor | None
    ) -> "W8A8Linear":
        module = cls.from_int8(qweight, scale, bias)
        module.input_scale = torch.tensor([input_scale], dtype=torch.float32, device=qweight.device)
        return module

    def packed_bytes(self) -> int:
        return self.layout.nbytes() + self.input_scale.numel() * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        x_q = torch.round(flat.float() / self.input_scale).clamp(-127, 127).to(torch.int8)
        y = self.kernel(x).fn(x_q, self.input_scale, self.qweight, self.scale)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
