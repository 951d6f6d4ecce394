"""Linear layer over the bitsandbytes-style 4-bit format (formats.nf4): NF4 or FP4 codes, block absmax."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.core.codebook import code_table, codebook_quantize, double_quantize
from lowbit.formats.nf4 import FourBitLayout, pack_nibbles
from lowbit.kernels.cuda_mma import fourbit_unsupported, tile_chunk
from lowbit.modules.base import QuantizedLinear


class FourBitLinear(QuantizedLinear):
    """y = x @ (code_table[codes] * absmax[block])^T + bias (Dettmers et al., QLoRA 2023)."""

    layout_type = FourBitLayout
    op = "fourbit_linear"

    def __init__(self, layout: FourBitLayout, has_bias: bool, device: torch.device | str | None = None):
        super().__init__(layout, has_bias, device)
        self._code_tables: dict[torch.device, torch.Tensor] = {}  # device -> (16,) code table, see code_table()

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

    def weight_args(self) -> tuple:
        """(qweight, absmax, None, None), or (qweight, absmax_q, absmax_scale, absmax_mean) double-quantized."""
        if self.layout.double_quant:
            return (self.qweight, self.absmax_q, self.absmax_scale, self.absmax_mean)
        return (self.qweight, self.absmax, None, None)

    def format_context(self) -> dict[str, Any]:
        return {"bits": 4, "group_size": self.layout.blocksize, "tile_chunk": self.layout.tile_chunk}

    def cuda_tile_chunk(self) -> int:
        return cuda_tile_chunk(self.layout)

    def code_table(self, device: torch.device) -> torch.Tensor:
        """The (16,) float32 code table on `device`, made once per device (no host copy per call, none inside a
        CUDA graph capture; a plain dict, which torch.compile traces without a graph break)."""
        if device not in self._code_tables:
            self._code_tables[device] = code_table(self.layout.quant_type, device)
        return self._code_tables[device]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        flat = x.reshape(-1, lay.in_features)
        y = self.run_kernel(flat, self.code_table(x.device), lay.blocksize, lay.out_features)
        return y.reshape(*x.shape[:-1], lay.out_features)


def cuda_tile_chunk(layout: FourBitLayout) -> int:
    """The tile chunk an NF4/FP4 layer holds on CUDA: the tensor-core kernel's where it takes the layer (its loads
    then read consecutive bytes: NF4 1.15-1.22x faster at one row on the three large Llama-3-8B shapes,
    docs/kern17.md), else 0."""
    if fourbit_unsupported(layout.in_features, layout.blocksize):
        return 0
    return tile_chunk(4, layout.in_features, layout.out_features, layout.blocksize)
