"""Reference implementations: dequantize, then an ordinary floating-point matmul."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lowbit.core.affine import dequantize_affine, dequantize_offset, int8_absmax
from lowbit.core.aqlm import aqlm_decode
from lowbit.core.codebook import codebook_dequantize, double_dequantize
from lowbit.formats.aqlm import unpack_codes
from lowbit.formats.bitpack import unpack_bits
from lowbit.formats.nf4 import unpack_nibbles
from lowbit.formats.word_tiles import row_order


def int_group_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """x (..., in) @ dequant(W) (out, in)^T + bias; qweight in row or tile order (formats.int_group)."""
    return F.linear(x, _dequantize_int(row_order(qweight), scale, zero, bits, group_size, x.shape[-1], x.dtype), bias)


def _dequantize_int(qweight, scale, zero, bits: int, group_size: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """Packed (rows, words) int_group codes -> (rows, cols) weights in `dtype`."""
    return dequantize_affine(unpack_bits(qweight, bits, cols), scale, zero, bits, group_size).to(dtype)


def int_group_offset_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """x (..., in) @ (scale * code + offset) (out, in)^T + bias (the offset variant of int_group)."""
    w = dequantize_offset(unpack_bits(qweight, bits, x.shape[-1]), scale, offset, group_size)
    return F.linear(x, w.to(x.dtype), bias)


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
    acc = torch._int_mm(x_q, qweight.t())  # (rows, out) int32
    return acc.float() * (x_scale.float() * w_scale.float().t())  # one (rows, out) scaling pass


def int8_weight_linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """W8A16: x (rows, in) float @ (qweight (out, in) int8, row or tile order, * scale (out, 1))^T + bias."""
    w = (row_order(qweight).float() * scale.float()).to(x.dtype)
    return F.linear(x, w, bias)


def int_group_linear_t(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    bits: int,
    group_size: int,
    out_features: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Groups along the output axis: qweight packs W^T (in, out) row by row; x (..., in) @ W^T + bias."""
    y = x @ _dequantize_int(qweight, scale, zero, bits, group_size, out_features, x.dtype)  # W^T: (in, out)
    return y + bias.to(x.dtype) if bias is not None else y


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor | None:
    """LLM.int8's outlier input columns: (in,) bool where any |x| > threshold; None for threshold 0 or none."""
    if threshold <= 0:
        return None
    outliers = (x.abs() > threshold).any(dim=0)  # (in,) bool
    return outliers if outliers.any() else None


def int8_rows_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    int8_mm: Callable = w8a8_linear_emulated,
    codes_dtype: torch.dtype = torch.int8,
) -> torch.Tensor:
    """x (rows, in) quantized per row (vector-wise absmax), then int8 x int8 by `int8_mm`: (rows, out) float32.
    codes_dtype: what `int8_mm` takes."""
    x_q, x_scale = int8_absmax(x, dim=1, saturate=True, codes_dtype=codes_dtype)  # (rows, in), (rows, 1)
    return int8_mm(x_q, x_scale, qweight, scale)


def llm_int8_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    threshold: float,
    bias: torch.Tensor | None,
    int8_matmul: Callable = int8_rows_matmul,
) -> torch.Tensor:
    """LLM.int8 (Dettmers et al., 2022): x (rows, in) float, qweight (out, in) int8, scale (out, 1).

    Input columns where any |x| > threshold (threshold > 0) take a float matmul with the matching
    dequantized weight columns; the rest are quantized per row and multiplied int8 x int8 by
    `int8_matmul(x_regular, qweight, scale) -> (rows, out) float32` (exact either way: float64 here,
    torch._int_mm or the CPU int8 kernel in the selector's fast candidates). threshold 0: every column
    takes the int8 path.
    """
    return llm_int8_parts(x, qweight, scale, outlier_columns(x, threshold), bias, int8_matmul)


def llm_int8_parts(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    outliers: torch.Tensor | None,
    bias: torch.Tensor | None,
    int8_matmul: Callable,
) -> torch.Tensor:
    """llm_int8_linear once its outlier columns (outlier_columns) are known."""
    x_regular = x if outliers is None else x.masked_fill(outliers, 0)  # (rows, in)
    y = int8_matmul(x_regular, qweight, scale)  # (rows, out) float32
    if outliers is not None:
        w_out = qweight[:, outliers].float() * scale.float()  # (out, n_outliers)
        y = y + x[:, outliers].float() @ w_out.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def fourbit_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    absmax: torch.Tensor,
    absmax_scale: torch.Tensor | None,
    absmax_mean: torch.Tensor | None,
    code: torch.Tensor,
    blocksize: int,
    out_features: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """NF4/FP4 (formats.nf4): x (rows, in) @ dequant(W) (out, in)^T + bias; qweight in row or tile order; absmax
    (n_blocks,) float32, or int8 double-quantized with absmax_scale and absmax_mean; code the (16,) code table."""
    if absmax_scale is not None:
        absmax = double_dequantize(absmax, absmax_scale, absmax_mean)
    n = out_features * x.shape[-1]
    w = codebook_dequantize(unpack_nibbles(row_order(qweight).reshape(-1), n), absmax, code, blocksize)
    return F.linear(x, w.view(out_features, -1).to(x.dtype), bias)


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


def aqlm_linear(
    x: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """AQLM (formats.aqlm): x (rows, in) @ W^T + bias, W looked up from the codebooks (out, G * g)[:, :in]."""
    w = aqlm_decode(unpack_codes(codes), codebooks.float(), scales.float())[:, : x.shape[-1]]
    return F.linear(x, w.to(x.dtype), bias)
