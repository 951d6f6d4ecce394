"""torch's packed int4 matmuls (CPU, and CUDA's tinygemm) and its CPU int8 weight-only matmul, fed from
lowbit's canonical formats.

`torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, G, sz)` computes x @ W^T with

    W[n, k] = (q[n, k] - 8) * sz[k // G, n, 0] + sz[k // G, n, 1]        q in [0, 15]

for G in {32, 64, 128, 256}, N a multiple of 16 and K a multiple of G (the layout of gpt-fast and
torchao's int4 weight-only). lowbit's group-wise format is w = s * (q - z) with fp16 s and float z per
group of g inputs (formats.int_group). Codes of b <= 4 bits run as one plane, shifted so that their
midpoint 2**(b-1) lands on the kernel's 8 (which keeps the bf16 zero small, hence exact to bf16):

    q' = q + 8 - 2**(b-1),  scale = s,  zero = s * (2**(b-1) - z)                (exact algebra)

and codes of 5..8 bits split into two 4-bit planes, q = 16 * hi + lo, summed, hi shifted the same way:

    hi' = hi + 8 - 2**(b-5):  W = 16 s * (hi' - 8) + s * (lo - 8) + s * (2**(b-1) + 8 - z)
        plane hi: scale 16 s, zero s * (2**(b-1) + 8 - z);  plane lo: scale s, zero 0.

The offset variant (w = s * q + m, formats.int_group) takes the same planes with s * (c - z) replaced
by s * c + m (c = 2**(b-1), or 2**(b-1) + 8 for the hi plane).

A lowbit group of g columns maps onto kernel groups of G columns when G divides g (or there is only one
group per row), so any g that is a multiple of 32 runs; the input is zero-padded to a multiple of G and
the output rows to a multiple of 16. `_weight_int8pack_mm(x, q, s)` is x @ (q * s[:, None])^T for int8
q (W8A16 with per-row scales, Int8Linear's format) and needs no repacking.

Both kernels are fast on this CPU only with bf16 activations (their fp32 and fp16 paths are 10-40x
slower, measured on AVX-512 with torch 2.13), so inputs are cast to bf16 and the result back: these
paths are W4A16 / W8A16 in the usual sense, with bf16 rounding of the activations. Repacking happens once
per layer (`prepare_*`, cached by the module); the checkpoint keeps the canonical format.

LLM.int8 (int8 x int8) runs on the same int8 kernel with its activation codes held in bf16 (exact for
|q| <= 127). `int8_cpp` does the per-row activation quantization, the kernel call, the row scales and the
bias in one C++ op (kernels/int8_rows.cpp, built by kernels/cpp_ops.py): at one row the eager sequence of
about ten small ops (`int8_cpu`) cost as much as the matmul itself (torch.profiler, demo model).

On CUDA the same repacking feeds `_weight_int4pack_mm` (tinygemm, what gpt-fast and torchao run), bf16
activations only, codes of up to 4 bits: the selector takes it where it measured faster than lowbit's
Triton kernel (few rows, see kernels/select.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from lowbit.core.affine import n_groups, symmetric_zero
from lowbit.formats.bitpack import unpack_bits
from lowbit.formats.word_tiles import row_order
from lowbit.kernels import cpp_ops, reference

KERNEL_DTYPE = torch.bfloat16
INT4_GROUPS = (256, 128, 64, 32)  # group sizes _weight_int4pack_mm_for_cpu accepts, largest first
N_MULTIPLE = 16  # output rows of the int4 CPU layout come in multiples of 16
PACK_ROWS = 1024  # rows repacked at a time; a multiple of N_MULTIPLE
INT8_K_MULTIPLE = 16  # the bf16 int8 kernel returns garbage (or crashes) when in_features is not a multiple


def int4_kernel_group(group_size: int, in_features: int) -> int | None:
    """The kernel group G serving lowbit groups of `group_size`, or None when none fits."""
    single = n_groups(in_features, group_size) == 1
    padded32 = -(-in_features // 32) * 32
    for g in INT4_GROUPS:
        if (single and padded32 % g == 0) or (not single and group_size % g == 0):
            return g
    return None


@dataclass(frozen=True)
class Int4CpuWeights:
    """One layer in the int4 CPU layout: one plane (bits <= 4) or two (hi, lo) for 5..8 bits."""

    planes: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (packed (N_pad, K_pad/2) uint8, sz (K_pad/G, N_pad, 2))
    kernel_group: int
    in_features: int
    padded_in: int
    out_features: int

    def tensors(self) -> list[torch.Tensor]:
        return [t for plane in self.planes for t in plane]


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(t, (0, 0, 0, rows - t.shape[0]))


def _pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """codes (rows, K_pad) in [0, 15] -> the kernel's packed layout, rows padded to a multiple of 16."""
    codes = _pad_rows(codes, -(-codes.shape[0] // N_MULTIPLE) * N_MULTIPLE).to(torch.int32)
    if codes.is_cuda:  # bytes of two codes, high nibble first; K tiles of 16 * inner_k_tiles
        pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # (rows, K_pad / 2)
        return torch.ops.aten._convert_weight_to_int4pack(pairs, _inner_k_tiles(codes.shape[1]))
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)


def _inner_k_tiles(k_pad: int) -> int:
    return next(t for t in (8, 4, 2) if k_pad % (16 * t) == 0)


def _scales_zeros(scale: torch.Tensor, zero: torch.Tensor, n_pad: int) -> torch.Tensor:
    """scale, zero (N, K_pad / G) float32 -> (K_pad / G, N_pad, 2) in the kernel dtype."""
    sz = torch.stack([_pad_rows(scale, n_pad).t(), _pad_rows(zero, n_pad).t()], dim=-1)
    return sz.to(KERNEL_DTYPE).contiguous()


@torch.no_grad()
def prepare_int4_cpu(
    ctx, qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int, group_size: int
) -> Int4CpuWeights:
    """Repack a canonical int_group layer (formats.int_group) into the int4 CPU layout (once per layer)."""
    def plane_zero(s: torch.Tensor, c: int, group_of: torch.Tensor) -> torch.Tensor:
        return s * (c - (symmetric_zero(bits) if zero is None else zero.float()[:, group_of]))

    return _prepare(ctx, qweight, scale, bits, group_size, plane_zero)


@torch.no_grad()
def prepare_int4_cpu_offset(
    ctx, qweight: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int, group_size: int
) -> Int4CpuWeights:
    """Repack an offset int_group layer (w = s * q + m) into the int4 CPU layout (once per layer)."""
    offsets = offset.float()
    return _prepare(ctx, qweight, scale, bits, group_size, lambda s, c, group_of: s * c + offsets[:, group_of])


def _prepare(ctx, qweight: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int, plane_zero) -> Int4CpuWeights:
    """The repacking both variants share; `plane_zero(s, c, group_of)` is a plane's zero term (N, K_pad / G).

    Rows are unpacked and packed PACK_ROWS at a time (the packed layout concatenates along rows), which
    bounds the transient memory of unpacking a large layer such as an output head.
    """
    k, n = ctx.in_features, ctx.out_features
    g_kernel = int4_kernel_group(group_size, k)
    k_pad = -(-k // g_kernel) * g_kernel
    mid = symmetric_zero(bits)
    packed: list[list[torch.Tensor]] = [[], []]
    for rows in row_order(qweight).split(PACK_ROWS):
        codes = F.pad(unpack_bits(rows, bits, k), (0, k_pad - k))  # (rows, K_pad) uint8; padding meets x = 0
        parts = [codes + (8 - mid)] if bits <= 4 else [(codes >> 4) + (8 - mid // 16), codes & 15]
        for plane, part in zip(packed, parts):
            plane.append(_pack_codes(part))
    group_of = ((torch.arange(k_pad // g_kernel) * g_kernel) // group_size).clamp(max=scale.shape[1] - 1)
    s = scale.float()[:, group_of]  # (N, K_pad / G)
    n_pad = -(-n // N_MULTIPLE) * N_MULTIPLE
    if bits <= 4:
        sz = [_scales_zeros(s, plane_zero(s, mid, group_of), n_pad)]
    else:
        hi_zero = plane_zero(s, mid + 8, group_of)
        sz = [_scales_zeros(16 * s, hi_zero, n_pad), _scales_zeros(s, torch.zeros_like(s), n_pad)]
    planes = tuple((torch.cat(p), plane_sz) for p, plane_sz in zip(packed, sz))
    return Int4CpuWeights(planes, g_kernel, k, k_pad, n)


def int4_cpu_linear(x: torch.Tensor, w: Int4CpuWeights, bias: torch.Tensor | None) -> torch.Tensor:
    """x (rows, in) @ W^T + bias through _weight_int4pack_mm_for_cpu, bf16 inside."""
    xb = F.pad(x.to(KERNEL_DTYPE), (0, w.padded_in - w.in_features))
    y = None
    for packed, sz in w.planes:
        mm = torch.ops.aten._weight_int4pack_mm if xb.is_cuda else torch.ops.aten._weight_int4pack_mm_for_cpu
        part = mm(xb, packed, w.kernel_group, sz).float()
        y = part if y is None else y + part
    y = y[:, : w.out_features]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@dataclass(frozen=True)
class Int8CpuWeights:
    qweight: torch.Tensor  # (out, in) int8: the module's own buffer, not a copy
    scale: torch.Tensor  # (out,) bf16

    def tensors(self) -> list[torch.Tensor]:
        return [self.qweight, self.scale]


def prepare_int8_cpu(ctx, qweight: torch.Tensor, scale: torch.Tensor) -> Int8CpuWeights:
    """The kernel reads the module's own int8 buffer, copied only when it is not 64-byte aligned (tensors
    loaded from safetensors can sit at any offset, and the kernel's vector loads then crash); a tile-order buffer
    (formats.int8_rows) is read in row order."""
    qweight = row_order(qweight)
    aligned = qweight.is_contiguous() and qweight.data_ptr() % 64 == 0
    return Int8CpuWeights(qweight if aligned else qweight.clone(), scale.reshape(-1).to(KERNEL_DTYPE))


def int8_cpu_linear(x: torch.Tensor, w: Int8CpuWeights, bias: torch.Tensor | None) -> torch.Tensor:
    """W8A16: x (rows, in) @ (q * s)^T + bias through _weight_int8pack_mm, bf16 inside."""
    y = torch.ops.aten._weight_int8pack_mm(x.to(KERNEL_DTYPE).contiguous(), w.qweight, w.scale).float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _int8pack_mm(x_q: torch.Tensor, x_scale: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 x int8 through _weight_int8pack_mm: the activation codes come as bf16 (exact, |q| <= 127), the
    kernel accumulates in fp32 and returns (x_q @ q^T) * s_w in bf16; the row scales are applied after."""
    y = torch.ops.aten._weight_int8pack_mm(x_q, qweight, scale.reshape(-1))  # (rows, out) bf16
    return y.float() * x_scale.float()


def llm_int8_cpu_linear(
    x: torch.Tensor, w: Int8CpuWeights, threshold: float, bias: torch.Tensor | None
) -> torch.Tensor:
    """LLM.int8 (reference.llm_int8_linear) with its int8 x int8 part on the int8 weight-only kernel:
    faster than _int_mm at decode sizes on CPU, with the bf16 output rounding of int8_cpu."""
    int8_matmul = partial(reference.int8_rows_matmul, int8_mm=_int8pack_mm, codes_dtype=KERNEL_DTYPE)
    return reference.llm_int8_linear(x, w.qweight, w.scale.reshape(-1, 1), threshold, bias, int8_matmul)


def llm_int8_cpp_linear(
    x: torch.Tensor, w: Int8CpuWeights, threshold: float, bias: torch.Tensor | None
) -> torch.Tensor:
    """llm_int8_cpu_linear with activation quantization, int8 kernel, row scales and bias in one C++ op
    (kernels/int8_rows.cpp, the same arithmetic); outlier columns, when a call has any, as before."""
    op = torch.ops.lowbit_cpu.int8_rows_linear
    outliers = reference.outlier_columns(x, threshold)
    if outliers is None:
        return op(x, w.qweight, w.scale, bias, x.dtype)

    def int8_matmul(x_regular: torch.Tensor, qweight: torch.Tensor, _scale: torch.Tensor) -> torch.Tensor:
        return op(x_regular, qweight, w.scale, None, torch.float32)

    return reference.llm_int8_parts(x, w.qweight, w.scale.reshape(-1, 1), outliers, bias, int8_matmul)


def _cpu_op_missing(ctx, op: str) -> str | None:
    if ctx.device.type != "cpu":
        return f"CPU kernel, input is on {ctx.device.type}"
    if not hasattr(torch.ops.aten, op):
        return f"this torch has no aten.{op}"
    return None


def _int4_unavailable(ctx) -> str | None:
    missing = _cpu_op_missing(ctx, "_weight_int4pack_mm_for_cpu")
    if missing:
        return missing
    if ctx.bits is None or ctx.group_size is None:
        return "the call carries no bits/group size"
    if int4_kernel_group(ctx.group_size, ctx.in_features) is None:
        return f"group size {ctx.group_size} is not a multiple of 32 (the int4 kernel takes groups of 32..256)"
    return None


def int4_cpu_unavailable(ctx) -> str | None:
    """One 4-bit plane: codes of 2..4 bits."""
    if ctx.bits is not None and ctx.bits > 4:
        return f"{ctx.bits}-bit codes need two planes (int4x2_cpu)"
    return _int4_unavailable(ctx)


TINYGEMM_MAX_ROWS = 1  # CUDA: tinygemm up to this many rows, lowbit's Triton kernel above (H100 sweep)


def int4_cuda_unavailable(ctx) -> str | None:
    """tinygemm on CUDA: one 4-bit plane, bf16 activations (fp16 would be rounded to bf16)."""
    if ctx.device.type != "cuda" or not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
        return f"CUDA kernel, input is on {ctx.device.type}"
    if ctx.dtype != torch.bfloat16:
        return f"tinygemm takes bf16 activations, not {ctx.dtype}"
    if ctx.bits is not None and ctx.bits > 4:
        return f"{ctx.bits}-bit codes need two 4-bit planes (twice the work)"
    if ctx.group_size is None or int4_kernel_group(ctx.group_size, ctx.in_features) is None:
        return f"group size {ctx.group_size} is not a multiple of 32 (the int4 kernel takes groups of 32..256)"
    return None


def int4_cuda_unsuited(ctx) -> str | None:
    if ctx.rows > TINYGEMM_MAX_ROWS:
        return f"more than {TINYGEMM_MAX_ROWS} rows: lowbit's Triton kernel is faster"
    return None


def int4x2_cpu_unavailable(ctx) -> str | None:
    """Two 4-bit planes: codes of 5..8 bits."""
    if ctx.bits is not None and not 4 < ctx.bits <= 8:
        return f"{ctx.bits}-bit codes are not 5..8 bits"
    return _int4_unavailable(ctx)


def _torch_older_than(major: int, minor: int) -> bool:
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return version < (major, minor)


def int8_cpu_unavailable(ctx) -> str | None:
    missing = _cpu_op_missing(ctx, "_weight_int8pack_mm")
    if missing:
        return missing
    if _torch_older_than(2, 13):
        return "torch < 2.13: its CPU _weight_int8pack_mm crashed (segfault seen with torch 2.11)"
    if ctx.in_features % INT8_K_MULTIPLE:
        return f"in_features {ctx.in_features} is not a multiple of {INT8_K_MULTIPLE} (bf16 int8 kernel)"
    return None


def int8_cpp_unavailable(ctx) -> str | None:
    """The C++ op calls the same int8 kernel: int8_cpu's conditions, and a built library."""
    return int8_cpu_unavailable(ctx) or cpp_ops.build_failure()
