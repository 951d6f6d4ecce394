"""GPTQ's checkpoint layout (v1, the common one; Frantar et al., 2022, as AutoGPTQ / GPTQModel store it).

One (out, in) layer, b bits, groups of g inputs (G = ceil(in / g)):

    qweight  int32 (in * b / 32, out)   codes packed along the input dim, low bits first (column o of
                                        qweight is row o of lowbit's qweight: the same bit stream)
    qzeros   int32 (G, out * b / 32)    zero - 1 (v1) or zero (v2), packed along the output dim
    scales   fp16  (G, out)
    g_idx    int32 (in,)                group of each input; i // g unless activation order reordered them

    w[o, i] = scales[g_idx[i], o] * (code[o, i] - zero[g_idx[i], o])

Exact only for integer zero points in [1, 2**b - 1] (v1 stores zero - 1 in b bits) and for in and out
multiples of 32 / gcd(b, 32) (whole words, no padding).
"""

from __future__ import annotations

import torch

from lowbit.core.affine import IntWeights, symmetric_zero
from lowbit.formats.bitpack import pack_bits, unpack_bits

V1_ZERO_OFFSET = 1  # v1 stores zero - 1; v2 (GPTQModel's internal "gptq_v2") stores the zero itself


def integer_zeros(w: IntWeights) -> torch.Tensor:
    """(out, G) float32 zero points, the symmetric ones made explicit."""
    if w.zero is None:
        return torch.full(w.scale.shape, float(symmetric_zero(w.bits)))
    return w.zero.float()


def pack_gptq(w: IntWeights, zero_offset: int = V1_ZERO_OFFSET) -> dict[str, torch.Tensor]:
    """IntWeights (integer zeros, whole words: see the module docstring) -> GPTQ tensors."""
    out, cols = w.codes.shape
    zeros = (integer_zeros(w) - zero_offset).to(torch.uint8)  # (out, G)
    return {
        "qweight": pack_bits(w.codes, w.bits).T.contiguous(),  # (in * b / 32, out)
        "qzeros": pack_bits(zeros.T.contiguous(), w.bits),  # (G, out * b / 32)
        "scales": w.scale.T.to(torch.float16).contiguous(),  # (G, out)
        "g_idx": torch.arange(cols, dtype=torch.int32) // w.group_size,  # (in,)
    }


def unpack_gptq(
    tensors: dict[str, torch.Tensor], bits: int, group_size: int, zero_offset: int = V1_ZERO_OFFSET
) -> IntWeights:
    """GPTQ tensors (groups in column order: the caller checks g_idx) -> IntWeights with integer zeros."""
    qweight, qzeros = tensors["qweight"], tensors["qzeros"]
    cols, out = qweight.shape[0] * 32 // bits, qweight.shape[1]
    codes = unpack_bits(qweight.T.contiguous(), bits, cols)  # (out, in)
    zeros = unpack_bits(qzeros, bits, out).T.float() + zero_offset  # (out, G)
    return IntWeights(codes, tensors["scales"].T.to(torch.float16).contiguous(), zeros.to(torch.float16), bits, group_size)
