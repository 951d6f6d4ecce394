"""The AQLM additive-codebook format (Egiazarian et al., 2024): codes, fp16 codebooks, per-row scales.

One (out, in) layer with M codebooks of K = 2**B codewords of g inputs, G = ceil(in / g) groups per row
(the last one zero-padded):

    codes      uint8 (out, G, M)   B <= 8
               int16 (out, G, M)   9 <= B <= 16: the code's low 16 bits (codes >= 2**15 read as negative;
                                   `unpack_codes` masks them back to 0..K-1)
    codebooks  fp16  (M, K, g)
    scales     fp16  (out, 1)

    w[o, j*g:(j+1)*g] = scales[o] * sum_m codebooks[m, codes[o, j, m]]        (columns >= in dropped)

Bytes: out * G * M * (1 or 2) + 2 * M * K * g + 2 * out. Bits per weight: 8 * bytes / (out * in); e.g.
a 4096 x 4096 layer in 2x8 is 2.0 + 0.0039 + 0.0039 = 2.008 bits, in 1x16 2.0 + 0.5 + 0.0039 = 2.504;
codebooks weigh much more on small layers (1x16 on 576 x 576: 2.0 + 25.28 + 0.03 = 27.31 bits per weight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.core.affine import QPARAM_DTYPE
from lowbit.core.aqlm import AQLMWeights


@dataclass(frozen=True)
class AQLMLayout:
    out_features: int
    in_features: int
    num_codebooks: int
    nbits: int  # per codebook: K = 2**nbits codewords
    group_size: int  # inputs per codeword

    @property
    def n_groups(self) -> int:
        return math.ceil(self.in_features / self.group_size)

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.uint8 if self.nbits <= 8 else torch.int16

    def buffer_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {
            "codes": ((self.out_features, self.n_groups, self.num_codebooks), self.code_dtype),
            "codebooks": ((self.num_codebooks, 2**self.nbits, self.group_size), QPARAM_DTYPE),
            "scales": ((self.out_features, 1), QPARAM_DTYPE),
        }

    def nbytes(self) -> int:
        return sum(math.prod(shape) * dtype.itemsize for shape, dtype in self.buffer_shapes().values())


def pack_aqlm(w: AQLMWeights, layout: AQLMLayout) -> dict[str, torch.Tensor]:
    codes = w.codes if layout.nbits <= 8 else torch.where(w.codes >= 2**15, w.codes - 2**16, w.codes)
    return {
        "codes": codes.to(layout.code_dtype).contiguous(),
        "codebooks": w.codebooks.to(QPARAM_DTYPE).contiguous(),
        "scales": w.scales.to(QPARAM_DTYPE).contiguous(),
    }


def unpack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Stored codes (uint8 or int16) -> int64 codes in [0, K)."""
    return codes.long() & 0xFFFF if codes.dtype == torch.int16 else codes.long()


def unpack_aqlm(packed: dict[str, torch.Tensor], layout: AQLMLayout) -> AQLMWeights:
    codebooks, scales = packed["codebooks"].float(), packed["scales"].float()
    return AQLMWeights(unpack_codes(packed["codes"]), codebooks, scales, layout.in_features)
