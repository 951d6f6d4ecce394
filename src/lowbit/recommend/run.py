"""`lowbit recommend`: the model's shapes, the knowledge base, measurements, the policy -> a ranking.

The model is read as a meta-device skeleton (no weights), so a recommendation for a large model costs
seconds and no memory. `--verify K` (recommend.verify) measures the top K with `lowbit compare`'s runner
and ranks again; `--mixed BASE` (recommend.auto) adds a per-layer mixed-precision setting, which needs
the real weights for its sensitivity pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.eval.memory import MemoryReport
from lowbit.io.sources import load_skeleton
from lowbit.methods.base import MethodConfig
from lowbit.recommend.candidates import Candidate, Estimate, build_candidates
from lowbit.recommend.knowledge import missing_facts
from lowbit.recommend.measured import Measured, load_measurements
from lowbit.recommend.policy import Constraints, rank
from lowbit.recommend.predict import predict_memory, unquantized_memory


@dataclass
class Recommendation:
    model: str
    dtype: str
    constraints: Constraints
    unquantized: MemoryReport
    ranked: list[Candidate]
    excluded: list[tuple[Candidate, str]]
    missing: list[str]  # registered methods the knowledge base has no entry for
    results: str | None = None
    prior_scale: float | None = None
    verification: Any = None  # recommend.verify.Verification after --verify
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    """What a recommendation is made from, kept so that --verify can rank again without reloading."""

    skeleton: nn.Module
    source: str
    dtype: torch.dtype
    constraints: Constraints
    results: str | None = None
    extra: list[tuple[MethodConfig, Estimate]] = field(default_factory=list)


def context(model: str, constraints: Constraints, results: str | None = None, dtype: torch.dtype = torch.float32) -> Context:
    loaded = load_skeleton(model, dtype)
    return Context(loaded.model, loaded.source, dtype, constraints, results)


def recommend(ctx: Context) -> Recommendation:
    measurements: dict[str, Measured] = {}
    if ctx.results is not None:
        measurements = load_measurements(ctx.results, ctx.source, ctx.constraints.device)
    candidates, scale = build_candidates(ctx.skeleton, ctx.constraints.device, measurements, ctx.extra)
    ranked, excluded = rank(candidates, ctx.constraints)
    rec = Recommendation(
        ctx.source, str(ctx.dtype).removeprefix("torch."), ctx.constraints, unquantized_memory(ctx.skeleton),
        ranked, excluded, missing_facts(), ctx.results, scale,
    )
    if ctx.results is not None and not measurements:
        rec.notes.append(f"{ctx.results} has no finished records of this model: every number is a prior")
    return rec


def mixed_quality_prior(skeleton: nn.Module, config: MethodConfig) -> Estimate:
    """A prior for a mixed setting: the base method's uniform priors interpolated (log perplexity
    ratio, linearly in bits per weight) at the mixed setting's bits per weight."""
    import dataclasses

    from lowbit.recommend.knowledge import FACTS

    base = config.base_config
    facts = FACTS[base.name]
    points = []
    for bits in sorted(set(config.layer_bits.values())):
        prior = facts.quality_prior(bits)
        if prior is not None:
            points.append((predict_memory(skeleton, dataclasses.replace(base, bits=bits)).bits_per_param, math.log(prior.value)))
    if not points:
        return Estimate(None, "unknown", f"no prior for {base.name}")
    bpw = predict_memory(skeleton, config).bits_per_param
    value = _interpolate(points, bpw)
    return Estimate(math.exp(value), "prior", f"{base.name}'s uniform priors interpolated at {bpw:.2f} bits per weight")


def _interpolate(points: list[tuple[float, float]], x: float) -> float:
    points = sorted(points)
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


def mixed_candidate(model: str, ctx: Context, base_method: str, calib: str = "wikitext2") -> tuple[MethodConfig, Estimate]:
    """A mixed-precision setting of `base_method` filling the budget (loads the weights: the sensitivity
    pass runs the model), with its interpolated quality prior."""
    from lowbit.calib.data import calibration_windows
    from lowbit.io.sources import load_model
    from lowbit.methods import make_config
    from lowbit.recommend.auto import MIXED_BITS, auto_config, check_base
    from lowbit.recommend.knowledge import GROUP

    if ctx.constraints.budget_bytes is None:
        raise LowbitError("--mixed needs --memory-budget: mixed precision fills a budget")
    if not ctx.constraints.calibration_data:
        raise LowbitError("--mixed needs calibration text for its sensitivity pass: drop --calibration-data no")
    base = make_config(base_method, group_size=GROUP)
    check_base(base, MIXED_BITS)
    loaded = load_model(model, ctx.dtype)
    windows = calibration_windows(loaded.tokenizer, calib, 4, 256, 0)
    config = auto_config(loaded.model, windows, base, ctx.constraints.budget_bytes).config
    return config, mixed_quality_prior(ctx.skeleton, config)


def run(model: str, constraints: Constraints, results: str | None = None, dtype: torch.dtype = torch.float32,
        verify_k: int = 0, mixed_base: str | None = None, verify_preset: str = "small", console=None) -> Recommendation:
    """The whole `lowbit recommend`: rank, optionally with a mixed setting, optionally verified."""
    if results is not None and Path(results).exists() and not Path(results).is_dir():
        raise LowbitError(f"--results {results} is a file: give the folder a `lowbit compare --out` wrote")
    if verify_k and results is None:
        raise LowbitError("--verify needs --results DIR: the folder where its measurements are stored")
    fresh = verify_k and not (Path(results) / "results.jsonl").is_file()  # --verify will write the first records
    ctx = context(model, constraints, None if fresh else results, dtype)
    if mixed_base is not None:
        ctx.extra.append(mixed_candidate(model, ctx, mixed_base))
    rec = recommend(ctx)
    if verify_k:
        from lowbit.recommend.verify import verify

        rec = verify(ctx, rec, verify_k, results, verify_preset, console)
    return rec
