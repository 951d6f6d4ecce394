"""Block-wise absmax quantization to a 16-entry code table: NF4 and FP4 (Dettmers et al., QLoRA 2023).

The weight is flattened row-major and cut into blocks of `blocksize` values (the last block may be
shorter, and blocks may span rows, as in bitsandbytes). Each block is divided by its absmax and every
value takes the index of the nearest code (ties to the lower code, via the midpoints between sorted
codes: bitsandbytes' reference quantizer). Double quantization (QLoRA section 3) stores the absmax
values minus their mean as int8 with one scale per block of 256 (linear absmax here, where bitsandbytes
uses its 8-bit dynamic map: same bytes, a slightly different grid).
"""

from __future__ import annotations

import math

import torch

from lowbit.core.affine import int8_absmax

# bitsandbytes' tables (float32 values): NF4 are the normal quantiles, FP4 is e2m1 with a sign bit.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip
FP4_CODE = (
    0.0, 0.0052083334885537624, 0.6666666865348816, 1.0, 0.3333333432674408, 0.5, 0.1666666716337204,
    0.25, 0.0, -0.0052083334885537624, -0.6666666865348816, -1.0, -0.3333333432674408, -0.5,
    -0.1666666716337204, -0.25,
)  # fmt: skip
CODES = {"nf4": NF4_CODE, "fp4": FP4_CODE}
DOUBLE_QUANT_BLOCK = 256


def code_table(quant_type: str, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor(CODES[quant_type], dtype=torch.float32, device=device)  # (16,)


def _to_blocks(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """(n,) -> (ceil(n / blocksize), blocksize), zero-padded (zeros leave every absmax unchanged)."""
    pad = math.ceil(flat.numel() / blocksize) * blocksize - flat.numel()
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, blocksize)


def codebook_quantize(
    w: torch.Tensor, code: torch.Tensor, blocksize: int, chunk_blocks: int = 1 << 14
) -> tuple[torch.Tensor, torch.Tensor]:
    """Any-shape float tensor -> codes (numel,) uint8 and absmax (n_blocks,) float32.

    Works through `chunk_blocks` blocks at a time, so its float32 temporaries stay small whatever the
    size of `w` (on-the-fly loading relies on this for its peak memory).
    """
    flat = w.reshape(-1)
    order = torch.argsort(code)
    midpoints = (code[order[:-1]] + code[order[1:]]) / 2  # (15,)
    step = chunk_blocks * blocksize
    parts = [
        _quantize_blocks(flat[i : i + step].float(), midpoints, order, blocksize) for i in range(0, flat.numel(), step)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _quantize_blocks(
    flat: torch.Tensor, midpoints: torch.Tensor, order: torch.Tensor, blocksize: int
) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = _to_blocks(flat, blocksize)  # (n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    scaled = blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)
    if flat.numel() % blocksize:  # bitsandbytes divides the last, partial block (bit-identical codes)
        scaled[-1] = blocks[-1] / absmax[-1].clamp(min=1e-38)
    scaled = torch.clamp(scaled, -1, 1).reshape(-1)[: flat.numel()]
    return order.to(torch.uint8)[torch.bucketize(scaled, midpoints, out_int32=True)], absmax


def codebook_dequantize(
    codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """codes (n,) uint8, absmax (n_blocks,) -> (n,) float32."""
    n = codes.numel()
    values = _to_blocks(code[codes.long()], blocksize) * absmax.float().unsqueeze(1)
    return values.reshape(-1)[:n]


def double_quantize(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """absmax (n_blocks,) -> int8 (n_blocks,), scales (ceil(n_blocks / 256),) fp16 storage, mean (1,) fp32."""
    mean = absmax.float().mean().reshape(1)
    blocks = _to_blocks(absmax.float() - mean, DOUBLE_QUANT_BLOCK)  # (n2, 256)
    q, scale = int8_absmax(blocks, dim=1)  # (n2, 256) int8, (n2, 1)
    return q.reshape(-1)[: absmax.numel()], scale.reshape(-1), mean


def double_dequantize(q: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Inverse of double_quantize -> absmax (n_blocks,) float32."""
    blocks = _to_blocks(q.float(), DOUBLE_QUANT_BLOCK) * scale.float().unsqueeze(1)
    return blocks.reshape(-1)[: q.numel()] + mean.float()
