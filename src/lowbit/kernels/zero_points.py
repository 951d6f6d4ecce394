"""Whether a layer's zero points are whole codes: the condition of _mm_tc's 16-bit dequantization (W16).

gptq, awq and rtn with integer_zero store whole-number zeros in 0 .. 2^bits - 1; rtn's default and hqq store
fractional ones, and a symmetric layer has none (its zero is 2^(bits - 1)). The check reads the zeros once (one
device sync) and is remembered against their storage and version counter, so a write to them or a new tensor is
checked again. Where it cannot run or be remembered (during CUDA-graph capture, for an inference tensor) the
answer is False, which keeps the fp32 dequantization: slower, never wrong.
"""

from __future__ import annotations

import torch

from lowbit.kernels.settled_weights import StorageMemo, version_state

_checked = StorageMemo()


def whole_zeros(zero: torch.Tensor | None, bits: int) -> bool:
    """True when every zero point is a whole number in 0 .. 2^bits - 1 (or the layer is symmetric)."""
    if zero is None:
        return True
    state = version_state(zero)
    if state is None:
        return False
    state += (bits,)
    known = _checked.lookup(zero, state)
    if known is not None:
        return known
    if zero.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    whole = bool(((zero == zero.round()) & (zero >= 0) & (zero <= 2**bits - 1)).all())
    _checked.record(zero, state, whole)
    return whole
