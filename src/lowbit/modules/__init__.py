"""Quantized layers. MODULE_TYPES maps the class name stored in a checkpoint to the class that loads it."""

from lowbit.modules.base import QuantizedLinear
from lowbit.modules.embedding import QuantizedEmbedding
from lowbit.modules.int8_linear import Int8Linear
from lowbit.modules.int_linear import IntLinear
from lowbit.modules.w8a8_linear import W8A8Linear

MODULE_TYPES: dict[str, type[QuantizedLinear]] = {
    cls.__name__: cls for cls in (IntLinear, Int8Linear, W8A8Linear, QuantizedEmbedding)
}

__all__ = ["MODULE_TYPES", "Int8Linear", "IntLinear", "QuantizedEmbedding", "QuantizedLinear", "W8A8Linear"]
