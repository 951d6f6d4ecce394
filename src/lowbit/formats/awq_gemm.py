"""AutoAWQ's GEMM checkpoint layout (Lin et al., AWQ 2023; "version": "gemm"), 4-bit only.

One (out, in) layer, groups of g inputs (G = in / g):

    qweight  int32 (in, out / 8)   codes packed along the OUTPUT dim, 8 per word, output 8j + AWQ_ORDER[k]
                                   in nibble k of word j (the interleave the GEMM kernel reads)
    qzeros   int32 (G, out / 8)    integer zero points, the same packing, stored as they are
    scales   fp16  (G, out)

    w[o, i] = scales[i // g, o] * (code[o, i] - zero[i // g, o])

Exact only for integer zeros, out a multiple of 8 and g dividing in.
"""

from __future__ import annotations

import torch

from lowbit.core.affine import IntWeights
from lowbit.formats.bitpack import pack_bits, unpack_bits
from lowbit.formats.gptq_v1 import integer_zeros

AWQ_BITS = 4
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _interleave(x: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """(rows, out) -> the same with every run of 8 columns reordered by `order`."""
    rows, out = x.shape
    return x.reshape(rows, out // 8, 8)[:, :, list(order)].reshape(rows, out)


_INVERSE = tuple(AWQ_ORDER.index(k) for k in range(8))


def pack_awq(w: IntWeights) -> dict[str, torch.Tensor]:
    """4-bit IntWeights (integer zeros, out % 8 == 0, g | in) -> AWQ GEMM tensors."""
    zeros = integer_zeros(w).to(torch.uint8)  # (out, G)
    return {
        "qweight": pack_bits(_interleave(w.codes.T.contiguous(), AWQ_ORDER), AWQ_BITS),  # (in, out / 8)
        "qzeros": pack_bits(_interleave(zeros.T.contiguous(), AWQ_ORDER), AWQ_BITS),  # (G, out / 8)
        "scales": w.scale.T.to(torch.float16).contiguous(),  # (G, out)
    }


def unpack_awq(tensors: dict[str, torch.Tensor], group_size: int) -> IntWeights:
    """AWQ GEMM tensors -> IntWeights (out, in) with integer zeros."""
    qweight, qzeros = tensors["qweight"], tensors["qzeros"]
    out = qweight.shape[1] * 8
    codes = _interleave(unpack_bits(qweight, AWQ_BITS, out), _INVERSE).T.contiguous()  # (out, in)
    zeros = _interleave(unpack_bits(qzeros, AWQ_BITS, out), _INVERSE).T.contiguous()  # (out, G)
    scale = tensors["scales"].T.to(torch.float16).contiguous()
    return IntWeights(codes, scale, zeros.to(torch.float16), AWQ_BITS, group_size)
