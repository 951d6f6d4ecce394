"""Reference implementations: dequantize, then an ordinary floating-point matmul."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.core.affine import dequantize_affine
from lowbit.formats.bitpack import unpack_bits


def int_group_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """x (..., in) @ dequant(W) (out, in)^T + bias."""
    codes = unpack_bits(qweight, bits, x.shape[-1])
    w = dequantize_affine(codes, scale, zero, bits, group_size).to(x.dtype)
    return F.linear(x, w, bias)


def w8a8_linear_emulated(
    x_q: torch.Tensor, x_scale: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor
) -> torch.Tensor:
    """(rows, in) int8 x (out, in) int8 -> (rows, out) float32, accumulating in float64 (exact for int8)."""
    acc = x_q.double() @ qweight.double().t()
    return (acc * x_scale.double() * w_scale.double().t()).float()


def w8a8_linear_int_mm(
    x_q: torch.Tensor, x_scale: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor
) -> torch.Tensor:
    """The same product through torch._int_mm (int8 x int8 -> int32)."""
    acc = torch._int_mm(x_q, qweight.t())
    return acc.float() * x_scale.float() * w_scale.float().t()


def int8_weight_linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """W8A16: x (rows, in) float @ (qweight (out, in) int8 * scale (out, 1))^T + bias."""
    w = (qweight.float() * scale.float()).to(x.dtype)
    return F.linear(x, w, bias)


def int_group_embedding(
    ids: torch.Tensor,
    hidden: int,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """ids (n,) -> (n, hidden) float32 rows of the dequantized (vocab, hidden) table; only those rows unpacked."""
    codes = unpack_bits(qweight[ids], bits, hidden)  # (n, hidden)
    rows_zero = None if zero is None else zero[ids]
    return dequantize_affine(codes, scale[ids], rows_zero, bits, group_size)
