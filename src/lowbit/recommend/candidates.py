"""The settings recommend weighs, each with its exact memory and its quality/speed/time estimates.

Every estimate says where it comes from: `exact` (memory, computed from the model's layer shapes),
`measured` (a `lowbit compare` record of this model) or `prior` (the knowledge base). When some settings
are measured, the quality priors of the others are rescaled by how far the measured ones fell from their
priors (the median ratio of log perplexity ratios), so a small model's larger losses carry over.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lowbit.compare.runner import setting_label
from lowbit.errors import LowbitError
from lowbit.eval.memory import MemoryReport
from lowbit.methods import make_config
from lowbit.methods.base import MethodConfig
from lowbit.recommend.knowledge import FACTS, MethodFacts, candidate_settings, registered_facts, speed_prior
from lowbit.recommend.measured import Measured, config_key
from lowbit.recommend.predict import decode_kernels, device_present, predict_memory


@dataclass
class Estimate:
    value: float | None
    origin: str  # "measured", "prior" or "unknown"
    source: str = ""


@dataclass
class Candidate:
    config: MethodConfig
    facts: MethodFacts
    memory: MemoryReport | None
    quality: Estimate  # perplexity ratio to the unquantized model
    speed: Estimate  # decode tokens/s ratio to the unquantized model on the device
    quantize_s: Estimate
    kernels: dict[str, int]
    kl: float | None = None
    measured: Measured | None = None
    problem: str | None = None  # why nothing can be said about its memory
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return setting_label(self.config)

    @property
    def bits(self) -> Any:
        return getattr(self.config, "bits", None)


def build_candidates(
    model: nn.Module, device: str, measurements: dict[str, Measured], extra: list[tuple[MethodConfig, Estimate]] = ()
) -> tuple[list[Candidate], float | None]:
    """One candidate per setting of every registered method with an entry, every measured setting, and
    `extra` (config, quality prior) pairs such as a mixed-precision allocation; and the factor the
    unmeasured quality priors were rescaled by (None when nothing is measured)."""
    configs: dict[str, tuple[MethodConfig, Estimate | None]] = {}
    for facts in registered_facts().values():
        for settings in candidate_settings(facts):
            config = make_config(facts.method, **settings)
            configs[config_key(config.to_dict())] = (config, None)
    for key, m in measurements.items():
        if key not in configs and m.config.get("method") in registered_facts():
            configs[key] = (MethodConfig.from_dict(m.config), None)
    for config, prior in extra:
        configs[config_key(config.to_dict())] = (config, prior)
    found = [_candidate(model, device, config, prior, measurements.get(key)) for key, (config, prior) in configs.items()]
    return found, rescale_quality_priors(found)


def _candidate(model, device: str, config: MethodConfig, prior: Estimate | None, measured: Measured | None) -> Candidate:
    facts = FACTS[config.name]
    memory, problem, kernels = None, None, {}
    try:
        memory = predict_memory(model, config)
        kernels = decode_kernels(model, config, device) if device_present(device) else {facts.cuda_kernel: 1}
    except LowbitError as err:
        problem = str(err)
    bits = getattr(config, "bits", None)
    q = facts.quality_prior(bits)
    quality = prior or (Estimate(q.value, "prior", q.source) if q else Estimate(None, "unknown", "no prior"))
    kernel = max(kernels, key=kernels.get) if kernels else "reference"
    s = speed_prior(device, kernel, bits)
    speed = Estimate(s.value, "prior", f"{kernel}: {s.source}")
    weights = memory.quantized_params if memory else 0
    cost = facts.cost_s_per_mweight[device]
    quantize_s = Estimate(cost.value * weights / 1e6, "prior", cost.source)
    candidate = Candidate(config, facts, memory, quality, speed, quantize_s, kernels, problem=problem)
    if measured is not None:
        apply_measurement(candidate, measured)
    return candidate


def apply_measurement(candidate: Candidate, m: Measured) -> None:
    """Measured numbers replace the priors (speed and time only when measured on the same device)."""
    where = m.describe()
    candidate.measured, candidate.kl = m, m.kl
    candidate.quality = Estimate(m.ppl_ratio, "measured", where)
    if m.decode_ratio is not None:
        candidate.speed = Estimate(m.decode_ratio, "measured", f"{where}, batch 1")
    if m.quantize_s is not None:
        candidate.quantize_s = Estimate(m.quantize_s, "measured", where)
    if candidate.memory is None:
        candidate.problem = None  # the measured bytes stand in for a prediction lowbit cannot make
    elif candidate.memory.weight_bytes != m.weight_bytes:
        candidate.reasons.append(f"note: measured {m.weight_bytes:,} bytes, predicted {candidate.memory.weight_bytes:,}")


def rescale_quality_priors(candidates: list[Candidate]) -> float | None:
    """Scale the log perplexity ratio of unmeasured priors by the median measured/prior ratio; returns it."""
    factors = []
    for c in candidates:
        prior = c.facts.quality_prior(c.bits)
        if c.quality.origin == "measured" and prior and math.log(prior.value) >= 0.01 and c.quality.value > 1:
            factors.append(math.log(c.quality.value) / math.log(prior.value))
    if not factors:
        return None
    k = statistics.median(factors)
    for c in candidates:
        if c.quality.origin == "prior":
            scaled = math.exp(k * math.log(c.quality.value))
            c.quality = Estimate(scaled, "prior", f"{c.quality.source}; x{k:.2f} in log to fit {len(factors)} measured")
    return k


def weight_bytes(candidate: Candidate) -> int | None:
    if candidate.memory is not None:
        return candidate.memory.weight_bytes
    return candidate.measured.weight_bytes if candidate.measured else None
