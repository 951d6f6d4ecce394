"""lowbit: quantize LLMs with every method that matters, measure them side by side, and pick one."""

__version__ = "0.1.0"

from lowbit.api import load, quantize, save  # noqa: E402

__all__ = ["__version__", "load", "quantize", "save"]
