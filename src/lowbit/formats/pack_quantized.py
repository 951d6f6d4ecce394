"""compressed-tensors' "pack-quantized" layout (vLLM's native integer format; compressed-tensors >= 0.9).

One (out, in) layer, b bits (1..8), groups of g inputs (G = ceil(in / g); per channel: G = 1):

    weight_packed      int32 (out, ceil(in * b / 32))   signed codes + 2**(b-1) (= lowbit's unsigned
                                                        codes), a dense little-endian stream per row
    weight_scale       fp16  (out, G)
    weight_zero_point  int32 (ceil(out * b / 32), G)    asymmetric only: zero points, the same offset,
                                                        packed along the output dim
    weight_shape       int64 (2,)                       (out, in)

    w[o, i] = weight_scale[o, i // g] * (code[o, i] - zero[o, i // g]); symmetric: zero = 2**(b-1)

Exact only for integer zero points.
"""

from __future__ import annotations

import torch

from lowbit.core.affine import IntWeights
from lowbit.formats.bitpack import pack_dense, unpack_dense


def pack_ct(w: IntWeights) -> dict[str, torch.Tensor]:
    """IntWeights (integer zeros) -> pack-quantized tensors (a zero point only when asymmetric)."""
    out, cols = w.codes.shape
    tensors = {
        "weight_packed": pack_dense(w.codes, w.bits),  # (out, ceil(in * b / 32))
        "weight_scale": w.scale.to(torch.float16).contiguous(),  # (out, G)
        "weight_shape": torch.tensor([out, cols], dtype=torch.int64),
    }
    if w.zero is not None:
        zeros = w.zero.float().to(torch.uint8).T.contiguous()  # (G, out)
        tensors["weight_zero_point"] = pack_dense(zeros, w.bits).T.contiguous()  # (ceil(out * b / 32), G)
    return tensors


def unpack_ct(tensors: dict[str, torch.Tensor], bits: int, group_size: int) -> IntWeights:
    """pack-quantized tensors -> IntWeights (zero None when the layer is symmetric)."""
    out, cols = (int(v) for v in tensors["weight_shape"].tolist())
    codes = unpack_dense(tensors["weight_packed"], bits, cols)  # (out, in)
    zero = None
    if "weight_zero_point" in tensors:
        zero = unpack_dense(tensors["weight_zero_point"].T.contiguous(), bits, out).T.to(torch.float16)  # (out, G)
    return IntWeights(codes, tensors["weight_scale"].to(torch.float16).contiguous(), zero, bits, group_size)
