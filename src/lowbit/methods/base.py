"""Method configs: frozen, validated, JSON-serialisable, versioned, and registered by name.

A method is a config class registered with `@register_method(name)`. It turns one layer's (out, in)
weight (plus calibration statistics when it needs them) into a quantized module; it never walks the model.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from lowbit.errors import LowbitError
from lowbit.modules.base import QuantizedLinear

_METHODS: dict[str, type["MethodConfig"]] = {}


def register_method(name: str):
    def decorate(cls: type[MethodConfig]) -> type[MethodConfig]:
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorate


def method_names() -> list[str]:
    """Methods a user can quantize with (records such as 'imported' are left out)."""
    return sorted(name for name, cls in _METHODS.items() if cls.quantizes)


def method_class(name: str) -> type["MethodConfig"]:
    if name not in _METHODS:
        raise LowbitError(f"unknown method {name!r}: choose one of {', '.join(method_names())}")
    return _METHODS[name]


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Settings every method shares: which layers it touches, by regex on the layer's full name."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    format_version: ClassVar[int] = 1  # the checkpoint format a model quantized with this method needs
    needs_calibration: ClassVar[bool] = False
    calibrates_blocks: ClassVar[bool] = False  # True: quantized block by block by calib.engine (calibrate_block)
    quantizes: ClassVar[bool] = True  # False: a record of weights quantized elsewhere (methods.imported)

    include: str | None = None  # extra linears to quantize, e.g. "lm_head"
    exclude: str | None = None  # linears to leave in full precision
    embedding_bits: int = 0  # 4 or 8: also quantize the token embedding (methods.vocab); 0 = float
    head_bits: int = 0  # 4 or 8: also quantize the output head (methods.vocab); 0 = float

    def __post_init__(self) -> None:
        from lowbit.methods.vocab import check_vocab_bits

        check_vocab_bits(self.embedding_bits, "embedding_bits")
        check_vocab_bits(self.head_bits, "head_bits")
        for pattern in (self.include, self.exclude):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise LowbitError(f"invalid layer regex {pattern!r}: {err}")

    def quantize_layer(
        self, weight: torch.Tensor, bias: torch.Tensor | None, stats: Any = None
    ) -> QuantizedLinear:
        """(out, in) float weight -> a quantized module computing the same linear map."""
        raise NotImplementedError

    def needs_teacher(self) -> bool:
        """Whether `finish` needs an unquantized copy of the model (api.quantize keeps one if so)."""
        return False

    def finish(self, model: Any, calib: torch.Tensor | None, teacher: Any, progress: bool,
               work_dir: Path | None = None) -> dict[str, torch.Tensor]:
        """Whole-model work after block-wise calibration (QAT's end-to-end training); returns artifacts.
        `work_dir` (the run's resumable work folder, if any) is where such work keeps its checkpoints."""
        return {}

    def layer_config(self, name: str) -> "MethodConfig":
        """The settings for the layer called `name` (the same for every layer, except in per-layer configs)."""
        return self

    def empty_layer(self, out_features: int, in_features: int, has_bias: bool = False) -> QuantizedLinear | None:
        """The module `quantize_layer` makes for an (out, in) weight, empty on the meta device (for exact
        memory predictions without quantizing); None where the method does not describe its layout."""
        return None

    def make_observer(self) -> Any:
        """For methods that calibrate activations: an observer fed each layer's inputs."""
        raise NotImplementedError(f"{self.name} does not observe activations")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, "version": self.version, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(data: Any) -> "MethodConfig":
        """Inverse of to_dict; any malformed input is a LowbitError, never another exception."""
        if not isinstance(data, dict) or not isinstance(data.get("method"), str):
            raise LowbitError("method config must be a JSON object with a 'method' name")
        fields = dict(data)
        cls = method_class(fields.pop("method"))
        version = fields.pop("version", cls.version)
        if version != cls.version:
            raise LowbitError(
                f"{cls.name} config version {version!r} is not the supported {cls.version}: "
                "upgrade lowbit or re-quantize the model"
            )
        return make_config(cls.name, **fields)


def make_config(method: str, **options: Any) -> MethodConfig:
    """Build a config by method name, turning unknown or mistyped options into one-line errors."""
    cls = method_class(method)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise LowbitError(f"{method} does not take {', '.join(unknown)} (it takes {', '.join(sorted(known))})")
    for f in dataclasses.fields(cls):
        if f.name in options:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            _check_type(method, f.name, options[f.name], default)
    return cls(**options)


def _check_type(method: str, field: str, value: Any, default: Any) -> None:
    expected = type(default) if default is not None else str
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if value is None and default is None:
        ok = True
    if not ok:
        raise LowbitError(f"{method} option {field} must be {expected.__name__}, got {value!r}")
