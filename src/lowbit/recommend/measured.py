"""Measured numbers for one model from a `lowbit compare` results folder (its results.jsonl store).

A record counts for the model when it names it (`model`) or when its key is the hash of this model with
the record's config and protocol (records written before `model` was stored). Ratios are taken against
the unquantized record of the same protocol, so they come from one run on one machine. Speed and
quantization time count only when the record's device is the device asked about; quality and memory
do not depend on it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.compare.runner import BASELINE
from lowbit.compare.store import ResultsStore, record_key
from lowbit.errors import LowbitError

RESULTS_FILE = "results.jsonl"


@dataclass(frozen=True)
class Measured:
    label: str
    config: dict[str, Any]
    ppl_ratio: float  # perplexity / the unquantized model's, first eval set of the protocol
    kl: float | None
    weight_bytes: int
    decode_ratio: float | None  # decode tokens/s / the unquantized model's (same device only)
    quantize_s: float | None  # same device only
    protocol: dict[str, Any]

    @property
    def windows(self) -> int:
        return int(self.protocol.get("windows", 0))

    def describe(self) -> str:
        p = self.protocol
        evals = p.get("evals", ["?"])
        return f"{evals[0]}, {p.get('windows')} windows of {p.get('seqlen')} tokens, {p.get('device')}"


def config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def load_measurements(folder: str | Path, source: str, device: str) -> dict[str, Measured]:
    """config_key -> the best measurement of that setting for model `source` (most eval windows)."""
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise LowbitError(f"{path} not found: give the --out folder of a `lowbit compare` run")
    records = [r for r in ResultsStore(path).latest() if r.get("status") == "ok" and _same_model(r, source)]
    baselines = {_protocol_id(r): r for r in records if r["config"] == BASELINE}
    found: dict[str, Measured] = {}
    for record in records:
        base = baselines.get(_protocol_id(record))
        if record["config"] == BASELINE or base is None:
            continue
        measured = _measured(record, base, device)
        key = config_key(measured.config)
        if key not in found or measured.windows > found[key].windows:
            found[key] = measured
    return found


def _same_model(record: dict[str, Any], source: str) -> bool:
    if "model" in record:
        return record["model"] == source
    return record_key(source, record["config"], record["protocol"]) == record.get("key")


def _protocol_id(record: dict[str, Any]) -> str:
    return json.dumps(record["protocol"], sort_keys=True)


def _measured(record: dict[str, Any], base: dict[str, Any], device: str) -> Measured:
    eval_name = record["protocol"]["evals"][0]
    quality, base_quality = record["quality"][eval_name], base["quality"][eval_name]
    same_device = record["protocol"].get("device") == device
    decode, base_decode = record["speed"]["decode_tokens_per_s"], base["speed"]["decode_tokens_per_s"]
    return Measured(
        label=record["label"],
        config=record["config"],
        ppl_ratio=quality["ppl"] / base_quality["ppl"],
        kl=quality.get("kl"),
        weight_bytes=int(record["memory"]["weight_bytes"]),
        decode_ratio=decode / base_decode if same_device and base_decode > 0 else None,
        quantize_s=record.get("quantize_s") if same_device else None,
        protocol=record["protocol"],
    )


def log_ratio(ratio: float) -> float:
    """ln(perplexity ratio): the quality loss the policy scores (0 = no loss)."""
    return math.log(max(ratio, 1e-9))
