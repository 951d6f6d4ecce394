"""The tensor-core kernel for AQLM with 8-bit codebooks (1x8, 2x8) at up to 8 activation rows (cuda_aqlm.cu),
compiled at first use with NVRTC (nvrtc.py).

The Triton kernels (triton_aqlm) build a lookup table per call (a separate matmul) or gather codewords from L2;
this one keeps the codebooks in shared memory, 8 copies so that a warp's loads never conflict, sums a group's
codewords as the mma's A registers and multiplies them with the activations on tensor cores in one launch. The
codes are read in their canonical layout (out, G, M). The source and its design notes are in cuda_aqlm.cu.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lowbit.kernels import nvrtc

SOURCE = Path(__file__).with_name("cuda_aqlm.cu")
MAX_ROWS = 8  # one 8-row activation fragment
SLICE = 256  # inputs a warp slice (32 groups of 8)
CODEBOOK_BYTES = 256 * 8 * 16  # one codebook's 256 codewords, 8 copies of 16 bytes


def shape_unsupported(rows: int, in_features: int, out_features: int, num_codebooks: int, nbits: int,
                      group_size: int) -> str | None:
    """Why the kernel's layout rules out a call, or None."""
    if group_size != 8 or nbits > 8 or num_codebooks not in (1, 2):
        return f"the tensor-core AQLM kernel takes 1 or 2 codebooks of <= 8 bits and codewords of 8, not " \
               f"{num_codebooks}x{nbits} with codewords of {group_size}"
    if rows > MAX_ROWS:
        return f"more than {MAX_ROWS} rows"
    if in_features % SLICE or out_features % 16:
        return f"in_features ({in_features}) must be a multiple of {SLICE} and out_features ({out_features}) of 16"
    return None


def choose_config(in_features: int, out_features: int, sms: int) -> dict:
    """Launch shape: TILES of 16 outputs per block, the most of 4, 2, 1 that still makes about a block per
    multiprocessor (90%: 4096 outputs in 128 blocks of 2 tiles on 132), and WARPS, one a 256-input slice: 8 at 4
    tiles (two 8-warp blocks share a multiprocessor), else 16 (one block, its registers fill it).

    From the H100 sweep of the Llama-3-8B shapes at one row (kern13: `kernel_sweep.py --path mma --aqlm`), the
    fastest shape of each: 4096x14336 and 4096x128256 8 warps x 4 tiles, 14336x4096 and 4096x4096 16 x 2,
    4096x1024 16 x 1. One-tile blocks (too few outputs to fill the multiprocessors otherwise) request each warp's
    first slice before copying the codebooks (EARLY: 4096x1024 1.66-1.68x -> 1.76-1.79x bf16, kern15 run 9; the
    shapes of 2 and 4 tiles ran 0.84-0.92x with it, their registers rising to 108-158)."""
    n_tiles = out_features // 16
    tiles = next(t for t in (4, 2, 1) if t == 1 or n_tiles / t >= 0.9 * sms)
    shape = {"WARPS": min(8 if tiles == 4 else 16, in_features // SLICE), "TILES": tiles}
    return (shape | {"EARLY": 1}) if tiles == 1 else shape


def specialization(num_codebooks: int, in_features: int, out_features: int, sms: int, bf16: bool = True,
                   config: dict | None = None) -> dict:
    """The -D settings of one compiled kernel: choose_config's launch shape, M and BF16, then `config`'s changes."""
    return choose_config(in_features, out_features, sms) | {"M": num_codebooks, "BF16": int(bf16)} | (config or {})


def shared_bytes(spec: dict) -> int:
    """Dynamic shared memory of a launch: the codebooks' copies, then the warps' fp32 results."""
    return spec["M"] * CODEBOOK_BYTES + 4 * spec["WARPS"] * spec["TILES"] * 32 * 4


def _kernel(device_index: int, config: tuple):
    return nvrtc.kernel(device_index, SOURCE, "lowbit_aqlm", config, shared_bytes(dict(config)))


def _compile_failure(device_index: int) -> str | None:
    """None when this device builds and loads the kernel, else why not (a plain function: torch.compile keeps its
    answer as a constant, as cuda_mma._compile_failure)."""
    return nvrtc.build_failure(device_index, SOURCE, _build_default)


_compile_failure._dynamo_marked_constant = True


def _build_default(device_index: int) -> None:
    _kernel(device_index, tuple(sorted(specialization(2, 4096, 4096, 1).items())))


def unavailable(device: torch.device, dtype: torch.dtype | None, rows: int, in_features: int, out_features: int,
                num_codebooks: int, nbits: int, group_size: int) -> str | None:
    """Why the kernel cannot run a call, or None."""
    shape_reason = shape_unsupported(rows, in_features, out_features, num_codebooks, nbits, group_size)
    return nvrtc.unavailable(device, dtype, shape_reason, _compile_failure)


def aqlm_mma(x: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor,
             bias: torch.Tensor | None, config: dict | None = None) -> torch.Tensor:
    """x (rows <= 8, in) fp16/bf16 @ W^T + bias -> (rows, out) in x's dtype; codes (out, in / 8, M) uint8, codebooks
    (M, <= 256, 8) fp16, scales (out, 1) fp16 (formats.aqlm)."""
    x = nvrtc.aligned_rows(x)
    rows, cols = x.shape
    out_features, _, m = codes.shape
    entries, group = codebooks.shape[1:]
    nbits = max(1, math.ceil(math.log2(entries)))
    reason = shape_unsupported(rows, cols, out_features, m, nbits, group)
    dtypes = (codes.dtype, codebooks.dtype, scales.dtype)
    if reason is not None or dtypes != (torch.uint8, torch.float16, torch.float16):
        raise ValueError(f"the tensor-core AQLM kernel: {reason or 'it takes uint8 codes, fp16 codebooks and scales'}")
    device = x.device
    spec = specialization(m, cols, out_features, nvrtc.multiprocessors(device.index), x.dtype == torch.bfloat16,
                          config)
    shared = shared_bytes(spec)
    nvrtc.check_shared(device.index, shared, config, "use fewer WARPS or TILES")
    y = torch.empty((rows, out_features), dtype=x.dtype, device=device)
    if rows == 0:
        return y
    kernel = _kernel(device.index, tuple(sorted(spec.items())))
    bias32 = bias.float().contiguous() if bias is not None else y
    args = [codes.contiguous(), codebooks.contiguous(), scales.contiguous().view(-1), x, bias32, y,
            rows, cols, out_features, entries, int(bias is not None)]
    with torch.cuda.device(device):
        kernel(grid=(math.ceil(out_features / 16 / spec["TILES"]), 1, 1), block=(spec["WARPS"] * 32, 1, 1),
               args=args, shared_mem=shared)
    return y
