"""The kernel selector: one place that decides which implementation runs an op.

Each op has an ordered list of candidates; a candidate's `unavailable(ctx)` returns None when it can run
the call or a short reason when it cannot. `select` returns the first candidate that can run, so the
list always ends with the reference implementation, which runs everywhere; `explain` lists every
candidate with the reason it was skipped.

A candidate without `prepare` is called with the module's canonical buffers, `fn(x, *weights, bias)`.
A candidate with `prepare` repacks those buffers once, `prepare(ctx, *weights) -> packed` (the module
caches the result), and is called as `fn(x, packed, bias)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from lowbit.errors import LowbitError
from lowbit.kernels import cpu, reference

log = logging.getLogger(__name__)

PREFERENCES = ("auto", "reference")


@dataclass(frozen=True)
class CallContext:
    device: torch.device
    rows: int  # activation rows in the call (batch * sequence)
    in_features: int
    out_features: int
    bits: int | None = None  # of the weight codes, for formats with a bit width
    group_size: int | None = None  # resolved group size of group-wise formats


@dataclass(frozen=True)
class Candidate:
    name: str
    fn: Callable
    unavailable: Callable[[CallContext], str | None]
    prepare: Callable | None = None


def always(_ctx: CallContext) -> str | None:
    return None


def _int_mm_unavailable(ctx: CallContext) -> str | None:
    if not hasattr(torch, "_int_mm"):
        return "this torch has no _int_mm"
    if ctx.device.type == "cuda" and (ctx.rows <= 16 or ctx.in_features % 8 or ctx.out_features % 8):
        return "CUDA _int_mm needs more than 16 rows and sizes that are multiples of 8"
    if ctx.device.type not in ("cpu", "cuda"):
        return f"_int_mm does not run on {ctx.device.type}"
    return None


# Fastest first; the last entry of each op is the reference path and runs everywhere.
_CANDIDATES: dict[str, tuple[Candidate, ...]] = {
    "int_group_linear": (
        Candidate("int4_cpu", cpu.int4_cpu_linear, cpu.int4_cpu_unavailable, cpu.prepare_int4_cpu),
        Candidate("int4x2_cpu", cpu.int4_cpu_linear, cpu.int4x2_cpu_unavailable, cpu.prepare_int4_cpu),
        Candidate("reference", reference.int_group_linear, always),
    ),
    "int_group_embedding": (Candidate("reference", reference.int_group_embedding, always),),
    "int8_weight_linear": (
        Candidate("int8_cpu", cpu.int8_cpu_linear, cpu.int8_cpu_unavailable, cpu.prepare_int8_cpu),
        Candidate("reference", reference.int8_weight_linear, always),
    ),
    "w8a8_linear": (
        Candidate("torch_int_mm", reference.w8a8_linear_int_mm, _int_mm_unavailable),
        Candidate("reference", reference.w8a8_linear_emulated, always),
    ),
}


def explain(op: str, ctx: CallContext) -> list[tuple[str, str | None]]:
    """(name, reason it cannot run or None) for every candidate of `op`, fastest first."""
    return [(c.name, c.unavailable(ctx)) for c in _CANDIDATES[op]]


def select(op: str, ctx: CallContext, preference: str = "auto") -> Candidate:
    """The fastest candidate able to run `ctx`; `preference` is 'auto', 'reference' or a kernel name."""
    candidates = _CANDIDATES[op]
    if preference == "reference":
        return candidates[-1]
    if preference != "auto":
        named = [c for c in candidates if c.name == preference]
        if not named:
            names = ", ".join(c.name for c in candidates)
            raise LowbitError(f"no kernel {preference!r} for {op}: choose auto, reference or one of {names}")
        reason = named[0].unavailable(ctx)
        if reason is None:
            return named[0]
        log.info("kernel %s cannot run %s (%s); using auto choice", preference, op, reason)
    for candidate in candidates:
        reason = candidate.unavailable(ctx)
        if reason is None:
            return candidate
        log.debug("kernel %s skipped for %s: %s", candidate.name, op, reason)
    raise AssertionError("unreachable: the reference candidate is always available")
