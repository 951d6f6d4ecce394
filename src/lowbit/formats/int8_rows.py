"""Row-wise symmetric int8 weights (ptq's W8A8; later eetq and LLM.int8 share it).

    qweight  int8  (out, in)     round(w / scale), in [-127, 127]
    scale    fp16  (out, 1)      absmax of the row / 127

Bytes: out * in + 2 * out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.affine import QPARAM_DTYPE


@dataclass(frozen=True)
class Int8RowLayout:
    out_features: int
    in_features: int

    def buffer_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {
            "qweight": ((self.out_features, self.in_features), torch.int8),
            "scale": ((self.out_features, 1), QPARAM_DTYPE),
        }

    def nbytes(self) -> int:
        return self.out_features * self.in_features + 2 * self.out_features
