"""imported: the method record of weights lowbit read, already quantized, from another tool's checkpoint.

GGUF files (io.gguf_import) and GPTQ / AWQ / compressed-tensors folders (io.importers) are loaded into
lowbit's modules without re-quantization; this config names where the weights came from so a saved
folder says so. It quantizes nothing: asking it to is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.checks import check_choice
from lowbit.errors import LowbitError
from lowbit.methods.base import MethodConfig, register_method

SOURCE_FORMATS = ("gguf", "gptq", "awq", "compressed-tensors")


@register_method("imported")
@dataclass(frozen=True, kw_only=True)
class ImportedConfig(MethodConfig):
    quantizes = False

    source_format: str = "gguf"  # one of SOURCE_FORMATS
    detail: str = ""  # what the source said about its quantization (e.g. GGUF tensor types), for people

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.source_format, SOURCE_FORMATS, "imported source format")

    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None):
        raise LowbitError("'imported' is not a quantization method: it records weights read from another tool's "
                          "checkpoint; choose a method such as rtn or gptq")
