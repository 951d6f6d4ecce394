"""Group-wise affine (integer) quantization: w ~= scale * (q - zero), one (scale, zero) per group of inputs.

The round-to-nearest scheme of Jacob et al. (2018) applied per group of `group_size` consecutive input
columns, the layout GPTQ, AWQ and HQQ all emit. A group size that does not divide the input size is
allowed: the last group of each row is shorter (it is padded with copies of the row's last column when
qparams are chosen, which leaves min/max unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.errors import LowbitError

QPARAM_DTYPE = torch.float16  # scales and zeros are stored (and used) in fp16, as every serving format does


@dataclass
class IntWeights:
    """What an integer-quantization algorithm hands to a format: codes plus per-group qparams.

    codes: (out, in) uint8 in [0, 2**bits - 1]; scale: (out, n_groups) fp16;
    zero: (out, n_groups) fp16, fractional unless integer zeros were asked for, or None for symmetric
    (zero = 2**(bits-1)).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    bits: int
    group_size: int  # resolved: never -1 here

    def dequantize(self) -> torch.Tensor:
        return dequantize_affine(self.codes, self.scale, self.zero, self.bits, self.group_size)


def resolve_group_size(group_size: int, in_features: int) -> int:
    """-1 (per channel) and sizes larger than the row both mean one group per row."""
    return in_features if group_size == -1 or group_size > in_features else group_size


def n_groups(in_features: int, group_size: int) -> int:
    return math.ceil(in_features / group_size)


def symmetric_zero(bits: int) -> int:
    return 2 ** (bits - 1)


def to_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, in) -> (out, n_groups, group_size), padding the last group with the row's last column."""
    out, cols = w.shape
    pad = n_groups(cols, group_size) * group_size - cols
    if pad:
        w = torch.cat([w, w[:, -1:].expand(out, pad)], dim=1)
    return w.reshape(out, -1, group_size)


def expand_groups(q: torch.Tensor, group_size: int, in_features: int) -> torch.Tensor:
    """(out, n_groups) per-group values -> (out, in) per-column values."""
    out, groups = q.shape
    return q.unsqueeze(2).expand(out, groups, group_size).reshape(out, groups * group_size)[:, :in_features]


def affine_qparams(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool, integer_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min-max qparams per group. Returns scale (out, n_groups) and zero (out, n_groups) or None.

    Asymmetric, float zero (default): the group's min maps to code 0 and its max to 2**bits - 1 exactly.
    Asymmetric, integer zero (GPTQ's convention, which the GPTQ/AWQ export formats need): the range is
    widened to contain 0 and the zero point is rounded to an integer in [0, 2**bits - 1].
    Symmetric: restricted range +-(2**(bits-1) - 1) steps around the implicit zero 2**(bits-1).
    """
    g = to_groups(w.float(), group_size)
    return range_qparams(g.amin(dim=2), g.amax(dim=2), bits, symmetric, integer_zero)


def range_qparams(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool, integer_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """affine_qparams from per-group minima and maxima (out, n_groups) instead of the weights."""
    maxq = 2**bits - 1
    if symmetric:
        absmax = torch.maximum(lo.abs(), hi.abs())
        return _storable_scale(absmax / max(symmetric_zero(bits) - 1, 1)), None
    if integer_zero:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = _storable_scale((hi - lo) / maxq)
    zero = -lo / scale.float()
    if integer_zero:
        zero = torch.round(zero).clamp(0, maxq)
    return scale, zero.to(QPARAM_DTYPE)


def mse_qparams(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool, integer_zero: bool = False,
    grid: int = 100, max_shrink: float = 0.8, norm: float = 2.4,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-group qparams of the range shrunk by the factor in {1, 1 - 1/grid, ..., 1 - max_shrink} that
    minimises sum |w - dequant(quant(w))|^norm: the `mse` option of the GPTQ reference code (Frantar et al.,
    2022; GPTQModel's `mse`), which trades clipped outliers for a finer grid. Same shapes as affine_qparams."""
    g = to_groups(w.float(), group_size)  # (out, n_groups, group_size)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    best = torch.full_like(lo, float("inf"))
    scale, zero = range_qparams(lo, hi, bits, symmetric, integer_zero)
    real = real_columns(w.shape[1], group_size, g.device)  # None, or 1/0 per column of the padded groups
    err = torch.empty_like(g)  # |w - dequant(quant(w))|^norm of one candidate, computed in place
    for step in range(int(max_shrink * grid)):
        p = 1 - step / grid
        s, z = range_qparams(p * lo, p * hi, bits, symmetric, integer_zero)
        s3 = s.float().unsqueeze(2)
        z3 = symmetric_zero(bits) if z is None else z.float().unsqueeze(2)
        torch.div(g, s3, out=err).add_(z3).round_().clamp_(0, 2**bits - 1)  # codes, as quantize_affine
        err.sub_(z3).mul_(s3).sub_(g).abs_().pow_(norm)  # as dequantize_affine, then the error
        total = (err if real is None else err.mul_(real)).sum(dim=2)  # (out, n_groups); padding adds nothing
        better = total < best
        best = torch.where(better, total, best)
        scale = torch.where(better, s, scale)
        zero = None if z is None else torch.where(better, z, zero)
    return scale, zero


def real_columns(cols: int, group_size: int, device: torch.device) -> torch.Tensor | None:
    """(1, n_groups, group_size) mask: 1 on the row's columns, 0 on to_groups' padding; None without padding."""
    groups = n_groups(cols, group_size)
    if groups * group_size == cols:
        return None
    return (torch.arange(groups * group_size, device=device) < cols).float().view(1, groups, group_size)


def _storable_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round to the storage dtype, keeping constant groups (scale 0) away from division by zero."""
    finfo = torch.finfo(QPARAM_DTYPE)
    if scale.max() > finfo.max:
        raise LowbitError("weights too large for fp16 quantization scales (|w| > 1e6): rescale the model first")
    return scale.clamp(min=finfo.tiny).to(QPARAM_DTYPE)


def _per_column(
    scale: torch.Tensor, zero: torch.Tensor | None, bits: int, group_size: int, cols: int
) -> tuple[torch.Tensor, torch.Tensor | int]:
    """Per-group scale and zero expanded to one value per column (the symmetric zero is a constant)."""
    s = expand_groups(scale.float(), group_size, cols)
    return s, symmetric_zero(bits) if zero is None else expand_groups(zero.float(), group_size, cols)


def quantize_affine(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int, group_size: int
) -> torch.Tensor:
    """(out, in) float -> (out, in) uint8 codes for the given per-group qparams."""
    s, z = _per_column(scale, zero, bits, group_size, w.shape[1])
    return torch.clamp(torch.round(w.float() / s + z), 0, 2**bits - 1).to(torch.uint8)


def dequantize_affine(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int, group_size: int
) -> torch.Tensor:
    """(out, in) codes -> (out, in) float32 weights."""
    s, z = _per_column(scale, zero, bits, group_size, codes.shape[1])
    return (codes.float() - z) * s


def dequantize_offset(
    codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group_size: int
) -> torch.Tensor:
    """(out, in) codes -> (out, in) float32 weights w = scale * code + offset (the "min" form of GGUF's
    Q4_1/Q5_1, llama.cpp): in float32 the product is exact, so the one rounding is llama.cpp's own."""
    cols = codes.shape[1]
    return codes.float() * expand_groups(scale.float(), group_size, cols) + expand_groups(offset.float(), group_size, cols)


def rtn_quantize(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool, integer_zero: bool = False
) -> IntWeights:
    """Round-to-nearest with min-max qparams: the baseline every other method must beat."""
    group_size = resolve_group_size(group_size, w.shape[1])
    scale, zero = affine_qparams(w, bits, group_size, symmetric, integer_zero)
    return IntWeights(quantize_affine(w, scale, zero, bits, group_size), scale, zero, bits, group_size)


def int8_absmax(
    x: torch.Tensor, dim: int = -1, saturate: bool = False, codes_dtype: torch.dtype = torch.int8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 along `dim` (LLM.int8's vector-wise scheme): q = round(x / s), s = absmax / 127.

    Returns q (same shape, int8 values in `codes_dtype`) and s (x's shape with `dim` kept as size 1, fp16
    storage precision). saturate: clamp scales to fp16's range instead of raising on overflow; for
    activations at run time, where the range check's host sync would cost as much as the int8 matmul at
    one row. codes_dtype: bf16 holds every int8 value exactly, for kernels that take bf16 activations.
    """
    xf = x.float()
    scale = xf.abs().amax(dim=dim, keepdim=True) / 127
    if saturate:
        finfo = torch.finfo(QPARAM_DTYPE)
        scale = scale.clamp_(min=finfo.tiny, max=finfo.max).to(QPARAM_DTYPE)
    else:
        scale = _storable_scale(scale)
    return torch.div(xf, scale.float()).round_().clamp_(-127, 127).to(codes_dtype), scale
