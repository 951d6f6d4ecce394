"""Quantization methods. Importing this package registers every method by name."""

from lowbit.methods import aqlm, awq, bnb, eetq, gptq, hqq, imported, mixed, ptq, qat, rtn  # noqa: F401  (registration)
from lowbit.methods.base import MethodConfig, make_config, method_class, method_names

__all__ = ["MethodConfig", "make_config", "method_class", "method_names"]
