"""Linear layer over the bitsandbytes-style 4-bit format (formats.nf4): NF4 or FP4 codes, block absmax."""

from __future__ import annotations


import torch

from lowbit.core.codebook import code_table, codebook_quantize, double_dequantize, double_quantize
from lowbit.formats.nf4 import FourBitLayout, pack_nibbles
from lowbit.modules.base import QuantizedLinear


class FourBitLinear(QuantizedLinear):
    """y = x @ (code_table[codes] * absmax[block])^T + bias (Dettmers et al., QLoRA 2023)."""

    layout_type = FourBitLayout
    op = "fourbit_linear"

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, layout: FourBitLayout) -> "FourBitLinear":
        """Quantize an (out, in) weight into `layout` (whose sizes must match it)."""
        module = cls(layout, has_bias=bias is not None, device=weight.device)
        codes, absmax = codebook_quantize(weight, code_table(layout.quant_type, weight.device), layout.blocksize)
        module.qweight = pack_nibbles(codes)
        if layout.double_quant:
            module.absmax_q, module.absmax_scale, module.absmax_mean = double_quantize(absmax)
        else:
            module.absmax = absmax
        if bias is not None:
            module.bias = bias.detach().clone()
        return module

    def block_absmax(self) -> torch.Tensor:
        """(n_blocks,) float32 absmax, double-dequantized where it is stored so."""
        if self.layout.double_quant:
            return double_dequantize(self.absmax_q, self.absmax_scale, self.absmax_mean)
        return self.absmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        flat = x.reshape(-1, lay.in_features)
        code = code_table(lay.quant_type, x.device)
        y = self.kernel(x).fn(flat, self.qweight, self.block_absmax(), code, lay.blocksize, lay.out_features, self.bias)
        return y.reshape(*x.shape[:-1], lay.out_features)
