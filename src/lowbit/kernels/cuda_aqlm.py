"""The tensor-core kernel for AQLM at up to 8 activation rows (cuda_aqlm.cu): 8-bit codebooks (1x8, 2x8) and one
16-bit codebook (1x16), compiled at first use with NVRTC (nvrtc.py).

The Triton kernels (triton_aqlm) build a lookup table per call (a separate matmul) or gather codewords from L2;
this one keeps 8-bit codebooks in shared memory, 8 copies so that a warp's loads never conflict, sums a group's
codewords as the mma's A registers and multiplies them with the activations on tensor cores in one launch. A
16-bit codebook (1 MiB) is read from L2 (BUCKETS 1) or split in code ranges that fit a block's shared memory, each
block adding up the codes of its range (BUCKETS 5, lowbit_aqlm_split). The codes are read in their canonical layout
(out, G, M). The source and its design notes are in cuda_aqlm.cu.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lowbit.kernels import nvrtc
from lowbit.kernels.split_counters import counters_for

SOURCE = Path(__file__).with_name("cuda_aqlm.cu")
MAX_ROWS = 8  # one 8-row activation fragment
SLICE = 256  # inputs a warp slice (32 groups of 8)
CODEBOOK_BYTES = 256 * 8 * 16  # one 8-bit codebook's 256 codewords, 8 copies of 16 bytes
BOOK16_WORDS = 65536  # a 16-bit codebook's codewords, 16 bytes each
SPLIT_STATIC_BYTES = 1024  # lowbit_aqlm_split's static shared memory (add_up_ranges' arrival flags)


def shape_unsupported(rows: int, in_features: int, out_features: int, num_codebooks: int, nbits: int,
                      group_size: int) -> str | None:
    """Why the kernel's layout rules out a call, or None."""
    if group_size != 8 or nbits > 16 or num_codebooks not in (1, 2) or (nbits > 8 and num_codebooks != 1):
        return f"the tensor-core AQLM kernel takes 1 or 2 codebooks of <= 8 bits or one of <= 16 and codewords of " \
               f"8, not {num_codebooks}x{nbits} with codewords of {group_size}"
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


def choose_book16_config(in_features: int, out_features: int, sms: int, shared_limit: int = 227 * 1024) -> dict:
    """Launch shape for one 16-bit codebook (1x16). Layers of at most 2**24 weights read codewords from L2 (16 warps,
    one tile); larger ones split the codes in 5 ranges, one a block's shared memory (16 warps, two tiles), where a
    block may have the 222 KB that takes (an H100's 227 KB; else L2). L2 launches of no more blocks than
    multiprocessors build for one block a multiprocessor (MIN_BLOCKS 1: 58 -> 122 registers on 4096x1024).

    From the H100 sweep at one row (kern16 run 6: `kernel_sweep.py --path mma --aqlm 1x16`), x bf16: L2 1.09 on
    4096x1024 and 0.87 on 4096x4096 (split 0.59 / 0.78); split 0.87 on 4096x14336, 0.93 on 14336x4096 and 0.99 on
    4096x128256 (L2 0.71-0.80). MIN_BLOCKS 1 (kern31): 4096x1024 1.24x against 1.12x; 4096x4096's 256 blocks 0.86x
    against 0.89x."""
    warps = min(16, in_features // SLICE)
    split = {"WARPS": warps, "TILES": 2, "BUCKETS": 5, "BOOK16": 1}
    if in_features * out_features <= 2**24 or block_shared_bytes(split) > shared_limit:
        from_l2 = {"WARPS": warps, "TILES": 1, "BUCKETS": 1}
        return from_l2 | ({"MIN_BLOCKS": 1} if grid_blocks(from_l2, out_features, sms) <= sms else {})
    return {"WARPS": warps, "TILES": 2, "BUCKETS": 5}


def specialization(num_codebooks: int, in_features: int, out_features: int, sms: int, bf16: bool = True,
                   config: dict | None = None, nbits: int = 8, shared_limit: int = 227 * 1024) -> dict:
    """The -D settings of one compiled kernel: the launch shape chosen for the codebooks' width (and the device's
    shared memory a block), M, BOOK16 (codes of more than 8 bits) and BF16, then `config`'s changes."""
    if nbits > 8:
        shape = choose_book16_config(in_features, out_features, sms, shared_limit) | {"BOOK16": 1}
    else:
        shape = choose_config(in_features, out_features, sms)
    return shape | {"M": num_codebooks, "BF16": int(bf16)} | (config or {})


def shared_bytes(spec: dict) -> int:
    """Dynamic shared memory of a launch: the codebooks (8-bit: 8 copies; 16-bit: a range of 1 / BUCKETS of it,
    none at BUCKETS 1), then the warps' fp32 results."""
    if spec.get("BOOK16"):
        book = 16 * math.ceil(BOOK16_WORDS / spec["BUCKETS"]) if _split(spec) else 0
    else:
        book = spec["M"] * CODEBOOK_BYTES
    return book + 4 * spec["WARPS"] * spec["TILES"] * 32 * 4


def block_shared_bytes(spec: dict) -> int:
    """All the shared memory a block of the launch takes: shared_bytes and lowbit_aqlm_split's static arrays."""
    return shared_bytes(spec) + (SPLIT_STATIC_BYTES if _split(spec) else 0)


def _split(spec: dict) -> bool:
    """Whether a specialization is lowbit_aqlm_split (a 16-bit codebook split in code ranges)."""
    return bool(spec.get("BOOK16")) and spec.get("BUCKETS", 1) > 1


def tile_groups(spec: dict, out_features: int) -> int:
    """Groups of TILES tiles of 16 outputs a launch covers."""
    return math.ceil(out_features / 16 / spec["TILES"])


def grid_blocks(spec: dict, out_features: int, sms: int) -> int:
    """Blocks of a launch: one a group of TILES tiles; split in code ranges, BUCKETS blocks a group and at most one
    a multiprocessor (their blocks move on to the next groups)."""
    groups = tile_groups(spec, out_features)
    if not _split(spec):
        return groups
    buckets = spec["BUCKETS"]
    return buckets * min(groups, max(1, sms // buckets))


def _kernel(device_index: int, config: tuple):
    entry = "lowbit_aqlm_split" if _split(dict(config)) else "lowbit_aqlm"
    return nvrtc.kernel(device_index, SOURCE, entry, config, shared_bytes(dict(config)))


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
    """x (rows <= 8, in) fp16/bf16 @ W^T + bias -> (rows, out) in x's dtype; codes (out, in / 8, M) uint8 with
    codebooks (M, <= 256, 8) fp16, or codes (out, in / 8, 1) int16 with a codebook (1, <= 65536, 8) fp16; scales
    (out, 1) fp16 (formats.aqlm)."""
    x = nvrtc.aligned_rows(x)
    rows, cols = x.shape
    out_features, _, m = codes.shape
    entries, group = codebooks.shape[1:]
    nbits = max(1, math.ceil(math.log2(entries)))
    reason = shape_unsupported(rows, cols, out_features, m, nbits, group)
    code_dtype = torch.int16 if nbits > 8 else torch.uint8
    if reason is None and (codes.dtype, codebooks.dtype, scales.dtype) != (code_dtype, torch.float16, torch.float16):
        reason = f"it takes {code_dtype} codes ({nbits}-bit codebooks), fp16 codebooks and scales"
    if reason is not None:
        raise ValueError(f"the tensor-core AQLM kernel: {reason}")
    device = x.device
    sms = nvrtc.multiprocessors(device.index)
    # PDL where the device allows it (kern21 run 3, one row, x bf16: 2x8 2.72 / 2.07 / 2.97 / 3.22 / 3.43 against
    # 2.50 / 1.78 / 2.87 / 3.14 / 3.49 in line, 1x16 0.87-1.11 against 0.87-1.09)
    config = {"PDL": int(nvrtc.programmatic(device.index))} | (config or {})
    spec = specialization(m, cols, out_features, sms, x.dtype == torch.bfloat16, config, nbits,
                          nvrtc.shared_limit(device.index))
    shared = shared_bytes(spec)
    nvrtc.check_shared(device.index, block_shared_bytes(spec), config, "use fewer WARPS or TILES, or more BUCKETS")
    y = torch.empty((rows, out_features), dtype=x.dtype, device=device)
    if rows == 0:
        return y
    kernel = _kernel(device.index, tuple(sorted(spec.items())))
    bias32 = bias.float().contiguous() if bias is not None else y
    args = [codes.contiguous(), codebooks.contiguous(), scales.contiguous().view(-1), x, bias32, y]
    sizes = [rows, cols, out_features, entries, int(bias is not None)]
    part = counters = None
    if _split(spec):  # the code ranges' fp32 partials, added up by the last block of each tile group
        part = torch.empty((spec["BUCKETS"], rows, out_features), dtype=torch.float32, device=device)
        counters = counters_for(device, tile_groups(spec, out_features))
        args += [part, counters if counters is not None else part]
        sizes += [int(counters is not None)]
    with torch.cuda.device(device):
        nvrtc.launch(kernel, (grid_blocks(spec, out_features, sms), 1, 1), (spec["WARPS"] * 32, 1, 1), args + sizes,
                     shared, bool(spec.get("PDL")))
    if part is not None and counters is None:  # no fix-up in the launch: add the partials here
        total = part.sum(0) * scales.float().view(-1) + (bias.float() if bias is not None else 0)
        y = total.to(x.dtype)
    return y
