"""Which settings a comparison runs: presets, each method's usual settings, and the matrix expansion."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lowbit.errors import LowbitError
from lowbit.methods import make_config, method_class, method_names
from lowbit.methods.base import MethodConfig

# Each method's usual settings (used when --bits / --group-size are not given).
USUAL: dict[str, list[dict[str, Any]]] = {
    "rtn": [dict(bits=4, group_size=64)],
    "ptq": [dict()],
    "gptq": [dict(bits=4, group_size=64)],
    "awq": [dict(bits=4, group_size=64)],
    "awq+gptq": [dict(bits=4, group_size=64)],
    "hqq": [dict(bits=4, group_size=64)],
    "nf4": [dict()],
    "fp4": [dict()],
    "int8": [dict()],
    "eetq": [dict()],
    "aqlm": [dict()],
    "qat": [dict(bits=4, group_size=64)],
}


@dataclass(frozen=True)
class Preset:
    methods: tuple[str, ...]
    eval_windows: int
    seqlen: int
    nsamples: int  # calibration windows
    calib_seqlen: int
    speed_prompt: int = 128  # prefill tokens
    speed_new_tokens: int = 32  # decode tokens
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> options it runs with here

# AWQ's scale search is its cost on CPU (a forward per grid point per scaling pair per block): the quick
# preset searches on the output of the smallest module holding each pair (as AutoAWQ does), on 8 windows,
# with 10 grid points; the standard preset searches the whole block's output on 8 windows with 20.
PRESETS = {
    # small: a cheap check of a few settings (what `lowbit recommend --verify K` runs by default)
    "small": Preset(("rtn", "hqq", "nf4"), eval_windows=8, seqlen=512, nsamples=8, calib_seqlen=512),
    "quick": Preset(("rtn", "gptq", "awq", "hqq", "nf4", "int8", "eetq"), eval_windows=8, seqlen=512, nsamples=16,
                    calib_seqlen=512, options={"awq": dict(search_scope="module", search_samples=8, n_grid=10)}),
    "standard": Preset(("rtn", "ptq", "gptq", "awq", "hqq", "nf4", "fp4", "int8", "eetq"), eval_windows=40, seqlen=512,
                       nsamples=128, calib_seqlen=512, options={"awq": dict(search_samples=8)}),
    "full": Preset(tuple(USUAL), eval_windows=40, seqlen=512, nsamples=128, calib_seqlen=512),
}


@dataclass
class Matrix:
    configs: list[MethodConfig] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (setting, reason)


def build_matrix(
    methods: list[str], bits: list[int] | None, group_sizes: list[int] | None, options: dict[str, dict[str, Any]] | None = None
) -> Matrix:
    """methods x bits x group sizes, keeping what each method can do and saying why the rest is skipped.

    options: method -> extra options every setting of that method runs with (a preset's choices).
    """
    matrix = Matrix()
    known = set(method_names())
    for method in methods:
        if method not in known:
            matrix.skipped.append((method, f"not available in this lowbit (available: {', '.join(sorted(known))})"))
            continue
        for setting in _settings_for(method, bits, group_sizes):
            label = f"{method} " + " ".join(f"{k}={v}" for k, v in setting.items())
            try:
                config = make_config(method, **setting, **(options or {}).get(method, {}))
            except LowbitError as err:
                matrix.skipped.append((label.strip(), str(err)))
                continue
            if config not in matrix.configs:
                matrix.configs.append(config)
    return matrix


def _settings_for(method: str, bits: list[int] | None, group_sizes: list[int] | None) -> list[dict[str, Any]]:
    if bits is None and group_sizes is None:
        return USUAL.get(method, [dict()])
    fields = {f.name for f in dataclasses.fields(method_class(method))}
    bit_options = [dict(bits=b) for b in bits] if bits and "bits" in fields else [dict()]
    if bits and "bits" not in fields:
        return [dict()]  # fixed-width methods (e.g. nf4) run once at their own width
    group_options = [dict(group_size=g) for g in group_sizes] if group_sizes and "group_size" in fields else [dict()]
    if not group_sizes and "group_size" in fields:
        usual_group = USUAL.get(method, [{}])[0].get("group_size")
        group_options = [dict(group_size=usual_group)] if usual_group else [dict()]
    return [b | g for b in bit_options for g in group_options]
