"""Sizes and durations as people write them ('6GB', '512MiB', '30m') and as recommend prints them."""

from __future__ import annotations

import re

from lowbit.errors import LowbitError

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}
_TIME_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_size(text: str) -> int:
    """'6GB' (10**9 bytes), '6GiB' (2**30), '500MB', '1.5G' or a plain number of bytes -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise LowbitError(f"cannot read memory size {text!r}: write it like 6GB, 512MiB or 1.5G")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str) -> float:
    """'30m', '2h', '90s', '1.5h' -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)\s*", str(text))
    if match is None or float(match.group(1)) <= 0:
        raise LowbitError(f"cannot read duration {text!r}: write it like 30m, 2h or 90s")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
