"""The GPU kernels (Triton's, and cuda_mma's CUDA one) as torch.library custom ops (with fake implementations
for torch.compile and CUDA graphs), and the checks that tell the selector when they cannot run.

Triton itself is imported only inside the ops' real implementations. On a machine without CUDA the ops
run under Triton's interpreter when TRITON_INTERPRET=1 (how the CPU tests exercise them).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from typing import Optional

import torch

TRITON_BITS = (2, 3, 4, 8)
_FLOAT16 = (torch.float16, torch.bfloat16)
GEMV_MAX_ROWS = 1  # the CUDA-core matrix-vector kernel up to this many rows, tensor cores above (H100: at 4
# rows it ran 0.88x bf16 against the tensor-core kernel's 1.64x, benchmarks/results/issue6-h100-run4-sweep-decode.log)
FOURBIT_MV_ROWS = 1  # NF4/FP4: the matrix-vector kernel up to this many rows, then tensor cores up to
FOURBIT_TC_ROWS = 1024  # this many (programs of up to 128 rows), the reference path above; dequant_cublas takes over
# from select.DEQUANT_MIN_ROWS_FOURBIT rows except on layers over select.DEQUANT_MAX_WEIGHTS (kern33)
AQLM_MAX_ROWS = 16  # the AQLM kernels up to this many rows (each row re-reads the codes), the reference path above
AQLM_LUT_MIN_OUT = 4096  # per-call tables from this many outputs (H100, 1 row, 4096x1024: 0.47x bf16 vs gathers' 1.10x)


def gemv_tile_units(bits: int, group_size: int, in_features: int, target_k: int = 128) -> int | None:
    """Units per K tile of the matrix-vector kernel (a tile lies in one group), or None if the group forbids.

    A unit holds 32 / gcd(bits, 32) codes (triton_int.unit_shape); a tile is K = units * codes inputs.
    """
    codes = 32 // math.gcd(bits, 32)
    if group_size >= in_features:
        return max(target_k // codes, 1)
    k = next((k for k in (target_k, 256, 128, 64, 32) if k <= group_size and group_size % k == 0), None)
    return None if k is None or k % codes else k // codes


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def triton_unavailable(device: torch.device) -> str | None:
    """None when Triton kernels can run on `device`, else the reason."""
    return _platform_unavailable(device.type, device.index or 0)


def _platform_unavailable(device_type: str, index: int) -> str | None:
    """triton_unavailable's answer; torch.compile evaluates it once while tracing and keeps it as a constant
    (Dynamo cannot trace importlib or the CUDA capability query without a graph break)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device_type == "cuda":
        if _cuda_capability(index) < (8, 0):
            return "Triton kernels need compute capability 8.0 or newer (bf16 tensor cores)"
        return None
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"Triton kernels run on CUDA devices (or under TRITON_INTERPRET=1), not {device_type}"


# What torch.compiler.assume_constant_result sets, set here directly: the decorator imports Dynamo (and with it
# Triton) when lowbit is imported.
_platform_unavailable._dynamo_marked_constant = True


def int_group_unavailable(device: torch.device, dtype: torch.dtype | None, bits: int | None) -> str | None:
    """Why the group-wise integer kernels cannot run a call, or None."""
    if dtype not in _FLOAT16:
        return f"Triton kernels take fp16/bf16 activations, not {dtype}"
    if bits not in TRITON_BITS:
        return f"Triton kernels cover {TRITON_BITS} bits, not {bits}"
    return triton_unavailable(device)


def _matmul(path: str):
    """The entry point for `path`: "mv" (Triton, CUDA-core matrix-vector), "tc" (Triton, tensor cores), "mma"
    (CUDA, 2-, 4- and 8-bit codes on tensor cores for up to 16 rows: cuda_mma) or "dq" (Triton dequantization,
    then cuBLAS: triton_dequant)."""
    if path == "dq":
        from lowbit.kernels.triton_dequant import dequant_matmul

        return dequant_matmul
    if path == "mma":
        from lowbit.kernels.cuda_mma import mma_matmul

        return mma_matmul
    if path == "mv":
        from lowbit.kernels.triton_gemv import int_group_gemv

        return int_group_gemv
    from lowbit.kernels.triton_int import int_group_matmul

    return int_group_matmul


# The kernel argument is `path`, as in fourbit_mm and aqlm_mm: Inductor's fallback for custom ops takes a
# `kernel` keyword itself and fails to compile an op with an argument of that name.
@torch.library.custom_op("lowbit::int_group_mm", mutates_args=())
def int_group_mm(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], bits: int, group_size: int, path: str = "tc",
) -> torch.Tensor:
    """x (rows, in) @ dequant(qweight, scale, zero)^T + bias -> (rows, out); path "tc", "mv", "mma" or "dq"."""
    return _matmul(path)(x, qweight, scale, zero, bias, bits, group_size)


@int_group_mm.register_fake
def _(x, qweight, scale, zero, bias, bits, group_size, path="tc"):
    return x.new_empty((x.shape[0], scale.shape[0]))  # scale (out, groups): qweight may be in tile order


@torch.library.custom_op("lowbit::int8_weight_mm", mutates_args=())
def int8_weight_mm(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor], path: str = "tc"
) -> torch.Tensor:
    """W8A16: x (rows, in) @ (qweight (out, in) int8 * scale (out, 1))^T + bias -> (rows, out); qweight in row or
    tile order (formats.int8_rows)."""
    words = qweight.contiguous().view(torch.int32)  # four int8 codes per word, low byte first
    return _matmul(path)(x, words, scale, None, bias, 8, x.shape[-1], signed8=True)  # one group a row


@int8_weight_mm.register_fake
def _(x, qweight, scale, bias, path="tc"):
    return x.new_empty((x.shape[0], scale.shape[0]))  # scale (out, 1): qweight may be in tile order


@torch.library.custom_op("lowbit::w8a8_mm", mutates_args=())
def w8a8_mm(x_q: torch.Tensor, x_scale: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """(rows, in) int8 x (out, in) int8 -> (rows, out) float32, scales applied."""
    from lowbit.kernels.triton_w8a8 import w8a8_matmul

    return w8a8_matmul(x_q, x_scale, qweight, w_scale)


@w8a8_mm.register_fake
def _(x_q, x_scale, qweight, w_scale):
    return x_q.new_empty((x_q.shape[0], qweight.shape[0]), dtype=torch.float32)


# Entry points with the reference functions' signatures, for the selector's table.
def int_group_linear(x, qweight, scale, zero, bits, group_size, bias):
    return int_group_mm(x, qweight, scale, zero, bias, bits, group_size)


def int_group_linear_mma(x, qweight, scale, zero, bits, group_size, bias):
    return int_group_mm(x, qweight, scale, zero, bias, bits, group_size, "mma")


def int8_weight_linear(x, qweight, scale, bias):
    return int8_weight_mm(x, qweight, scale, bias)


def int8_weight_linear_mma(x, qweight, scale, bias):
    return int8_weight_mm(x, qweight, scale, bias, "mma")


def int_group_linear_dq(x, qweight, scale, zero, bits, group_size, bias):
    return int_group_mm(x, qweight, scale, zero, bias, bits, group_size, "dq")


def int8_weight_linear_dq(x, qweight, scale, bias):
    return int8_weight_mm(x, qweight, scale, bias, "dq")


def int_group_linear_mv(x, qweight, scale, zero, bits, group_size, bias):
    return int_group_mm(x, qweight, scale, zero, bias, bits, group_size, "mv")


def int8_weight_linear_mv(x, qweight, scale, bias):
    return int8_weight_mm(x, qweight, scale, bias, "mv")


def fourbit_unavailable(
    device: torch.device, dtype: torch.dtype | None, in_features: int, blocksize: int
) -> str | None:
    """Why the NF4/FP4 matrix-vector kernel cannot run a call, or None."""
    if dtype not in _FLOAT16:
        return f"Triton kernels take fp16/bf16 activations, not {dtype}"
    if in_features % 8 or blocksize % 8:
        return f"in_features ({in_features}) and blocksize ({blocksize}) must be multiples of 8"
    return triton_unavailable(device)


def aqlm_unavailable(
    device: torch.device, dtype: torch.dtype | None, kernel: str, nbits: int, group_size: int
) -> str | None:
    """Why the AQLM kernel `kernel` ("lut" or "gather") cannot run a call, or None."""
    if dtype not in _FLOAT16:
        return f"Triton kernels take fp16/bf16 activations, not {dtype}"
    if kernel == "lut" and nbits > 8:
        return f"a lookup table per call is for codebooks of <= 8 bits, not {nbits}"
    if group_size & (group_size - 1) or group_size > 64:
        return f"codeword length {group_size} is not a power of 2 up to 64"
    return triton_unavailable(device)


@torch.library.custom_op("lowbit::fourbit_mm", mutates_args=())
def fourbit_mm(
    x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor, absmax_scale: Optional[torch.Tensor],
    absmax_mean: Optional[torch.Tensor], code: torch.Tensor, blocksize: int, out_features: int,
    bias: Optional[torch.Tensor], path: str,
) -> torch.Tensor:
    """NF4/FP4 (formats.nf4): x (rows, in) @ dequant(W)^T + bias -> (rows, out); absmax fp32, or int8 with its
    double-quantization scale and mean; code the (16,) code table; path "mv" or "tc" (Triton), "mma"
    (cuda_mma.cu) or "dq" (Triton dequantization, then cuBLAS: triton_dequant)."""
    if path == "dq":
        from lowbit.kernels.triton_dequant import fourbit_dequant_matmul

        return fourbit_dequant_matmul(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features,
                                      bias)
    if path == "mma":
        from lowbit.kernels.cuda_mma import fourbit_mma

        return fourbit_mma(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias)
    from lowbit.kernels.triton_fourbit import fourbit_matmul

    return fourbit_matmul(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias, path)


@fourbit_mm.register_fake
def _(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias, path):
    return x.new_empty((x.shape[0], out_features))


@torch.library.custom_op("lowbit::aqlm_mm", mutates_args=())
def aqlm_mm(
    x: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor],
    path: str,
) -> torch.Tensor:
    """AQLM (formats.aqlm): x (rows, in) @ W^T + bias -> (rows, out); path "lut" (tables per call) or "gather"
    (Triton), or "mma" (cuda_aqlm.cu: codebooks in shared memory, tensor cores)."""
    if path == "mma":
        from lowbit.kernels.cuda_aqlm import aqlm_mma

        return aqlm_mma(x, codes, codebooks, scales, bias)
    from lowbit.kernels.triton_aqlm import aqlm_gemv

    return aqlm_gemv(x, codes, codebooks, scales, bias, path)


@aqlm_mm.register_fake
def _(x, codes, codebooks, scales, bias, path):
    return x.new_empty((x.shape[0], codes.shape[0]))


def fourbit_linear_mv(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias):
    return fourbit_mm(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias, "mv")


def fourbit_linear_tc(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias):
    return fourbit_mm(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias, "tc")


def fourbit_linear_dq(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias):
    return fourbit_mm(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias, "dq")


def fourbit_linear_mma(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias):
    return fourbit_mm(x, qweight, absmax, absmax_scale, absmax_mean, code, blocksize, out_features, bias, "mma")


def aqlm_linear_lut(x, codes, codebooks, scales, bias):
    return aqlm_mm(x, codes, codebooks, scales, bias, "lut")


def aqlm_linear_gather(x, codes, codebooks, scales, bias):
    return aqlm_mm(x, codes, codebooks, scales, bias, "gather")


def aqlm_linear_mma(x, codes, codebooks, scales, bias):
    return aqlm_mm(x, codes, codebooks, scales, bias, "mma")


@torch.library.custom_op("lowbit::decode_attention", mutates_args=("k_cache", "v_cache"))
def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
) -> torch.Tensor:
    """One decode step's attention (triton_attention): q (batch, heads * D), k and v (batch, kv * D) before RoPE,
    caches (batch, kv, T, D) written at pos (a (1,) tensor), cos and sin (1, D / 2) -> (batch, heads * D)."""
    problem = decode_attention_unsupported(q, k, v, k_cache, v_cache)
    if problem:
        raise ValueError(problem)
    from lowbit.kernels.triton_attention import decode_attention as launch

    return launch(q, k, v, k_cache, v_cache, cos, sin, pos)


@decode_attention.register_fake
def _(q, k, v, k_cache, v_cache, cos, sin, pos):
    return q.new_empty(q.shape)


def decode_attention_unsupported(q, k, v, k_cache, v_cache) -> str | None:
    """Why decode_attention cannot take these tensors, or None."""
    batch, kv, _, dim = k_cache.shape
    if dim & (dim - 1) or dim < 16:
        return f"decode attention needs a power-of-2 head dim of at least 16, not {dim}"
    if q.shape[0] != batch or q.shape[1] % (kv * dim) or k.shape != (batch, kv * dim) or v.shape != k.shape:
        return (f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit a cache of {batch} sequences, "
                f"{kv} KV heads of {dim}: pass q (batch, heads * {dim}), k and v (batch, {kv * dim})")
    if q.dtype not in _FLOAT16 or any(t.dtype != q.dtype for t in (k, v, k_cache, v_cache)):
        return f"decode attention takes fp16/bf16 q, k, v and caches of one dtype, not {q.dtype} and {k_cache.dtype}"
    if v_cache.shape != k_cache.shape or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        return "the K and V caches must be contiguous tensors of one shape (batch, kv heads, positions, head dim)"
    if any(t.stride(1) != 1 for t in (q, k, v)):
        return "q, k and v need contiguous rows (a row's stride may differ, an element's must be 1)"
    return triton_unavailable(q.device)
