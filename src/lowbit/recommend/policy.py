"""The policy: constraints exclude settings, a priority weighs what is left, reasons say why.

Each setting that survives the constraints gets a utility

    U = - w_q ln(ppl ratio) + w_m log2(fp16 bytes / bytes) + w_s log2(decode speed ratio)
        + w_simp simplicity + w_mat maturity - w_t log10(1 + quantize minutes)

with weights per priority (`WEIGHTS`). Settings expected to more than double perplexity rank after all
the others whatever their utility. The weights are a judgement, chosen so that with priors alone the
picks follow the usual advice (memory: the smallest usable setting, AQLM 2-bit where it is registered;
quality: AWQ under a 4-bit budget; speed: a setting with a fast kernel on the device; simplicity: a
calibration-free method that quantizes while loading; balanced: GPTQ on a GPU). Measurements replace the
priors and so can overturn any of these picks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowbit.core.checks import check_choice
from lowbit.errors import LowbitError
from lowbit.recommend.candidates import Candidate, weight_bytes
from lowbit.recommend.units import fmt_bytes, fmt_seconds

PRIORITIES = ("balanced", "memory", "speed", "quality", "simplicity")
DEVICES = ("cpu", "cuda")
SEVERE = math.log(2)  # perplexity more than doubled


@dataclass(frozen=True)
class Weights:
    quality: float
    memory: float
    speed: float
    simplicity: float
    maturity: float
    time: float


WEIGHTS = {
    "memory": Weights(quality=1, memory=4, speed=0.25, simplicity=0.25, maturity=0.25, time=0.1),
    "quality": Weights(quality=8, memory=0.1, speed=0.25, simplicity=0.1, maturity=0.25, time=0.02),
    "speed": Weights(quality=1, memory=0.5, speed=4, simplicity=0.25, maturity=0.25, time=0.1),
    "simplicity": Weights(quality=1, memory=0.5, speed=0.25, simplicity=4, maturity=0.5, time=0.5),
    "balanced": Weights(quality=3, memory=1, speed=1, simplicity=0.25, maturity=1, time=0.25),
}


@dataclass(frozen=True)
class Constraints:
    budget_bytes: int | None = None
    device: str = "cpu"
    priority: str = "balanced"
    calibration_data: bool = True
    allow_training: bool = False
    max_quantize_s: float | None = None

    def __post_init__(self) -> None:
        check_choice(self.priority, PRIORITIES, "priority")
        check_choice(self.device, DEVICES, "device")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise LowbitError(f"memory budget must be positive, got {self.budget_bytes} bytes")
        if self.max_quantize_s is not None and self.max_quantize_s <= 0:
            raise LowbitError(f"maximum quantization time must be positive, got {self.max_quantize_s} s")


def simplicity(c: Candidate) -> float:
    """1: no data and quantizes while loading; 0.8: no data; 0.4: calibration text; 0: a training run."""
    return {"none": 1.0 if c.facts.on_the_fly else 0.8, "calibration": 0.4, "training": 0.0}[c.facts.data]


def exclusion(c: Candidate, k: Constraints) -> str | None:
    """Why the constraints rule this setting out, or None."""
    if c.facts.data == "calibration" and not k.calibration_data:
        return "needs calibration data (--calibration-data no)"
    if c.facts.data == "training" and not k.allow_training:
        return "needs a training run (pass --allow-training)"
    if c.problem:
        return c.problem
    size = weight_bytes(c)
    if k.budget_bytes is not None and size > k.budget_bytes:
        return f"needs {fmt_bytes(size)}, over the {fmt_bytes(k.budget_bytes)} budget"
    if c.quality.value is None:
        return "no quality estimate (no prior and not measured)"
    if k.max_quantize_s is not None and c.quantize_s.value > k.max_quantize_s:
        return (f"quantizing takes about {fmt_seconds(c.quantize_s.value)} ({c.quantize_s.origin}), over the "
                f"{fmt_seconds(k.max_quantize_s)} limit")
    return None


def utility(c: Candidate, w: Weights) -> float:
    fp16 = c.memory.fp16_bytes if c.memory else c.measured.weight_bytes
    return (
        -w.quality * math.log(max(c.quality.value, 1.0))
        + w.memory * math.log2(fp16 / weight_bytes(c))
        + w.speed * math.log2(max(c.speed.value, 1e-3))
        + w.simplicity * simplicity(c)
        + w.maturity * c.facts.maturity.value
        - w.time * math.log10(1 + c.quantize_s.value / 60)
    )


def severe(c: Candidate) -> bool:
    return math.log(c.quality.value) > SEVERE


def rank(candidates: list[Candidate], k: Constraints) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """(ranked settings, best first; excluded settings with the reason)."""
    kept, excluded = [], []
    for c in candidates:
        reason = exclusion(c, k)
        (excluded.append((c, reason)) if reason else kept.append(c))
    for c in kept:
        c.score = utility(c, WEIGHTS[k.priority])
        c.reasons[:] = [r for r in c.reasons if r.startswith("note:")] + reasons(c, k)
    kept.sort(key=lambda c: (severe(c), -c.score))
    return kept, excluded


def reasons(c: Candidate, k: Constraints) -> list[str]:
    size, out = weight_bytes(c), []
    budget = f" of the {fmt_bytes(k.budget_bytes)} budget" if k.budget_bytes else ""
    fp16 = c.memory.fp16_bytes if c.memory else None
    saving = f", {100 * (1 - size / fp16):.0f}% less than fp16" if fp16 else ""
    out.append(f"memory {fmt_bytes(size)}{budget} ({'exact' if c.memory else 'measured'}){saving}")
    out.append(f"perplexity x{c.quality.value:.3g} ({c.quality.origin}: {c.quality.source})")
    kernels = ", ".join(f"{n} x{count}" for n, count in sorted(c.kernels.items())) or "?"
    out.append(f"decode {c.speed.value:.2f}x the unquantized model ({c.speed.origin}; kernels {kernels})")
    out.append(f"quantizing takes about {fmt_seconds(c.quantize_s.value)} ({c.quantize_s.origin})")
    data = {"none": "no data needed", "calibration": "needs calibration text", "training": "needs a training run"}
    out.append(data[c.facts.data] + ("; can quantize while loading" if c.facts.on_the_fly else ""))
    if severe(c):
        out.append("warning: perplexity expected to more than double")
    return out + [f"caveat: {text}" for text in c.facts.caveats]

