"""bitsandbytes' serialized 4-bit layout (Linear4bit / Params4bit state dict, bitsandbytes >= 0.41).

lowbit's FourBitLayout (formats.nf4) holds the same codes in the same nibble order and the same block
absmax, so one layer's tensors are, under the weight's name W:

    W                                     uint8 (ceil(out * in / 2), 1)   the packed codes
    W.absmax                              fp32 (n_blocks,), or uint8 (n_blocks,) with double quantization
    W.quant_map                           fp32 (16,)                      the NF4 / FP4 table
    W.nested_absmax                       fp32 (ceil(n_blocks / 256),)    double quantization only
    W.nested_quant_map                    fp32 (256,)
    W.quant_state.bitsandbytes__{nf4|fp4} uint8: JSON of quant_type, blocksize, dtype, shape and (double
                                          quantization) nested_blocksize, nested_dtype, nested_offset

Double quantization: bitsandbytes dequantizes absmax as nested_quant_map[index] * nested_absmax[block]
+ nested_offset with the map stored in the file. lowbit's linear int8 grid (core.codebook) becomes
index = q + 128 and the map i - 128, so the product q * scale, and every weight, is bit for bit lowbit's.
"""

from __future__ import annotations

import json

import torch

from lowbit.core.codebook import DOUBLE_QUANT_BLOCK, code_table
from lowbit.formats.word_tiles import row_order

BNB_BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes' blockwise kernels accept
_INT8_MAP = torch.arange(256, dtype=torch.float32) - 128  # (256,) index -> the int8 value it stands for


def bnb_tensors(buffers: dict[str, torch.Tensor], quant_type: str, blocksize: int, shape: tuple[int, int],
                dtype: str) -> dict[str, torch.Tensor]:
    """A FourBitLinear's buffers -> {suffix: tensor} to store under the weight's name ("" is the weight)."""
    state = {"quant_type": quant_type, "blocksize": blocksize, "dtype": dtype, "shape": list(shape)}
    tensors = {"": row_order(buffers["qweight"]).reshape(-1, 1), ".quant_map": code_table(quant_type)}
    if "absmax_q" in buffers:
        tensors[".absmax"] = (buffers["absmax_q"].to(torch.int16) + 128).to(torch.uint8)  # (n_blocks,)
        tensors[".nested_absmax"] = buffers["absmax_scale"].float()  # (n2,)
        tensors[".nested_quant_map"] = _INT8_MAP.clone()
        state |= {"nested_blocksize": DOUBLE_QUANT_BLOCK, "nested_dtype": "float32",
                  "nested_offset": float(buffers["absmax_mean"].item())}
    else:
        tensors[".absmax"] = buffers["absmax"].float()
    packed = json.dumps(state).encode("utf-8")
    tensors[f".quant_state.bitsandbytes__{quant_type}"] = torch.tensor(list(packed), dtype=torch.uint8)
    return tensors
