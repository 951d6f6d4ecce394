"""A recommendation as text for people and as JSON for tools; every number tagged measured/prior/exact."""

from __future__ import annotations

import dataclasses
from typing import Any

from lowbit.methods import make_config
from lowbit.methods.base import MethodConfig
from lowbit.recommend.candidates import Candidate, weight_bytes
from lowbit.recommend.policy import severe
from lowbit.recommend.units import fmt_bytes, fmt_seconds
from lowbit.recommend.run import Recommendation

SHOW_REASONS = 3  # ranked settings printed with their reasons


def command(model: str, config: MethodConfig, budget: int | None = None) -> str:
    """The lowbit command that makes this setting."""
    if hasattr(config, "layer_bits"):
        base = config.base_config
        flags = _flags(base)
        return (f"lowbit quantize {model} --method auto --memory-budget {budget or '?'} --base-method {base.name}"
                f"{flags} --out OUT")
    calib = " --calib wikitext2" if config.needs_calibration else ""
    return f"lowbit quantize {model} --method {config.name}{_flags(config)}{calib} --out OUT"


def _flags(config: MethodConfig) -> str:
    defaults = make_config(config.name).to_dict()
    changed = {k: v for k, v in config.to_dict().items() if defaults.get(k) != v}
    flags = [f"--{k.replace('_', '-')} {changed.pop(k)}" for k in ("bits", "group_size") if k in changed]
    return "".join(" " + f for f in flags + [f"-o {k}={v}" for k, v in changed.items()])


def render(rec: Recommendation, model_arg: str) -> str:
    k = rec.constraints
    budget = fmt_bytes(k.budget_bytes) if k.budget_bytes else "none"
    lines = [
        f"lowbit recommend: {rec.model}",
        f"  device {k.device}, priority {k.priority}, budget {budget}, calibration data "
        f"{'yes' if k.calibration_data else 'no'}, training {'allowed' if k.allow_training else 'no'}, "
        f"max quantization time {fmt_seconds(k.max_quantize_s) if k.max_quantize_s else 'none'}",
        f"  unquantized: {fmt_bytes(rec.unquantized.weight_bytes)} ({rec.dtype}); memory below is exact for this "
        "model (float parts in that dtype)",
        "  [m] measured " + (f"in {rec.results}" if rec.results else "(none: pass --results DIR)")
        + "; [p] prior from lowbit.recommend.knowledge"
        + (f", rescaled x{rec.prior_scale:.2f} (log ppl) to fit this model's measurements" if rec.prior_scale else ""),
        "",
        f"{'#':>3}  {'setting':<34} {'memory':>10} {'ppl ratio':>12} {'decode':>10} {'quantize':>12} {'score':>6}",
    ]
    for i, c in enumerate(rec.ranked, 1):
        lines.append(_row(i, c))
    for i, c in enumerate(rec.ranked[:SHOW_REASONS], 1):
        lines += ["", f"#{i} {c.label}:"] + [f"  - {r}" for r in c.reasons]
        lines.append(f"  - make it: {command(model_arg, c.config, k.budget_bytes)}")
    if rec.excluded:
        lines += ["", "excluded:"] + [f"  {c.label}: {reason}" for c, reason in rec.excluded]
    if rec.missing:
        lines.append(f"  {', '.join(rec.missing)}: registered, but the knowledge base has no entry yet")
    if rec.verification is not None:
        lines += ["", *rec.verification.lines()]
    return "\n".join(lines + [f"note: {n}" for n in rec.notes])


def _row(i: int, c: Candidate) -> str:
    def tag(e) -> str:
        return "[m]" if e.origin == "measured" else "[p]"

    quality = f"x{c.quality.value:.3g}{tag(c.quality)}" + ("!" if severe(c) else "")
    speed = f"{c.speed.value:.2f}x{tag(c.speed)}"
    time = f"{fmt_seconds(c.quantize_s.value)}{tag(c.quantize_s)}"
    return f"{i:>3}  {c.label[:34]:<34} {fmt_bytes(weight_bytes(c)):>10} {quality:>12} {speed:>10} {time:>12} {c.score:>6.2f}"


def as_json(rec: Recommendation, model_arg: str) -> dict[str, Any]:
    k = rec.constraints

    def entry(c: Candidate) -> dict[str, Any]:
        return {
            "label": c.label,
            "config": c.config.to_dict(),
            "memory_bytes": weight_bytes(c),
            "memory_origin": "exact" if c.memory else ("measured" if c.measured else None),
            "quality": {"ppl_ratio": c.quality.value, "origin": c.quality.origin, "source": c.quality.source},
            "speed": {"decode_ratio": c.speed.value, "origin": c.speed.origin, "source": c.speed.source},
            "quantize_s": {"value": c.quantize_s.value, "origin": c.quantize_s.origin, "source": c.quantize_s.source},
            "kl": c.kl,
            "kernels": c.kernels,
        }

    return {
        "model": rec.model,
        "dtype": rec.dtype,
        "constraints": dataclasses.asdict(k),
        "unquantized_bytes": rec.unquantized.weight_bytes,
        "results": rec.results,
        "prior_scale": rec.prior_scale,
        "ranked": [entry(c) | {"rank": i, "score": c.score, "severe": severe(c), "reasons": c.reasons,
                               "command": command(model_arg, c.config, k.budget_bytes)}
                   for i, c in enumerate(rec.ranked, 1)],
        "excluded": [entry(c) | {"reason": reason} for c, reason in rec.excluded],
        "missing_knowledge": rec.missing,
        "verification": rec.verification.as_dict() if rec.verification is not None else None,
        "notes": rec.notes,
    }
