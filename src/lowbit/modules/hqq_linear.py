"""Linear layer for HQQ's two layouts the shared IntLinear does not cover (formats.int_group_meta).

Axis-1 HQQ without 8-bit qparams is exactly the shared format, and methods.hqq emits `IntLinear` for it.
"""

from __future__ import annotations


import torch

from lowbit.core.affine import IntWeights
from lowbit.formats.int_group import pack_int
from lowbit.formats.int_group_meta import QPARAM_NAMES, IntGroupMetaLayout, dequantize_qparam
from lowbit.modules.base import QuantizedLinear


class HQQLinear(QuantizedLinear):
    """y = x @ W^T + b with W dequantized from codes grouped along `axis`, qparams fp16 or 8-bit."""

    layout_type = IntGroupMetaLayout
    op = "int_group_linear"

    def __init__(self, layout: IntGroupMetaLayout, has_bias: bool, device: torch.device | str | None = None):
        super().__init__(layout, has_bias, device)
        if layout.axis == 0:
            self.op = "int_group_linear_t"

    @classmethod
    def from_weights(
        cls, w: IntWeights, bias: torch.Tensor | None, axis: int, qparams8: dict[str, dict[str, torch.Tensor]] | None
    ) -> "HQQLinear":
        """w holds the codes of W (axis 1) or of W^T (axis 0); qparams8 the 8-bit form of w's scale and
        zero (`quantize_qparam` of each), whose dequantized values w's codes were computed against."""
        rows, cols = w.codes.shape
        out, cols_in = (rows, cols) if axis == 1 else (cols, rows)
        layout = IntGroupMetaLayout(out, cols_in, w.bits, w.group_size, axis, qparams8 is not None)
        module = cls(layout, has_bias=bias is not None, device=w.codes.device)
        packed = pack_int(w)
        for p, parts in (qparams8 or {}).items():
            del packed[p]
            packed |= {f"{p}_{part}": tensor for part, tensor in parts.items()}
        for name, tensor in packed.items():
            setattr(module, name, tensor)
        if bias is not None:
            module.bias = bias.detach().clone()
        return module

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, n_groups) fp16 scale and zero, dequantized from 8 bits where they are stored so."""
        if not self.layout.quant_qparams:
            return self.scale, self.zero
        parts = [[getattr(self, f"{p}_{part}") for part in ("codes", "scale", "zero")] for p in QPARAM_NAMES]
        return dequantize_qparam(*parts[0]), dequantize_qparam(*parts[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        scale, zero = self.qparams()
        flat = x.reshape(-1, lay.in_features)
        fn = self.kernel(x).fn
        if lay.axis == 1:
            y = fn(flat, self.qweight, scale, zero, lay.bits, lay.group_size, self.bias)
        else:
            y = fn(flat, self.qweight, scale, zero, lay.bits, lay.group_size, lay.out_features, self.bias)
        return y.reshape(*x.shape[:-1], lay.out_features)
