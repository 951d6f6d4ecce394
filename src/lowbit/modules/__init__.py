"""Quantized layers. MODULE_TYPES maps the class name stored in a checkpoint to the class that loads it."""

from lowbit.modules.aqlm_linear import AQLMLinear
from lowbit.modules.base import QuantizedLinear, set_kernel_preference
from lowbit.modules.embedding import QuantizedEmbedding
from lowbit.modules.fourbit_linear import FourBitLinear
from lowbit.modules.hqq_linear import HQQLinear
from lowbit.modules.int8_linear import Int8Linear
from lowbit.modules.int_linear import IntLinear
from lowbit.modules.int_offset_linear import IntOffsetLinear
from lowbit.modules.llm_int8_linear import LLMInt8Linear
from lowbit.modules.w8a8_linear import W8A8Linear

MODULE_TYPES: dict[str, type[QuantizedLinear]] = {
    cls.__name__: cls
    for cls in (
        IntLinear, IntOffsetLinear, Int8Linear, W8A8Linear, HQQLinear, LLMInt8Linear, FourBitLinear, QuantizedEmbedding,
        AQLMLinear,
    )
}

__all__ = [
    "MODULE_TYPES",
    "AQLMLinear",
    "FourBitLinear",
    "HQQLinear",
    "Int8Linear",
    "IntLinear",
    "IntOffsetLinear",
    "LLMInt8Linear",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "W8A8Linear",
    "set_kernel_preference",
]
