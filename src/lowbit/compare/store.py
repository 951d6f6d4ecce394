"""The results store: JSON lines, one record per setting, keyed by a hash of model + method config + protocol.

A rerun skips settings whose record finished; an interrupted run resumes where it stopped, since each
record is appended (and flushed) the moment its setting ends. A failed setting is recorded with its error
and is retried on the next run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lowbit.errors import LowbitError


def record_key(model_id: str, config: dict[str, Any], protocol: dict[str, Any]) -> str:
    payload = json.dumps({"model": model_id, "config": config, "protocol": protocol}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ResultsStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if number == len(path.read_text().splitlines()):
                        continue  # a line cut short by an interrupted write: that setting reruns
                    raise LowbitError(f"{path} line {number} is not JSON: fix or delete the results file")
                self.records[record["key"]] = record  # later lines win

    def finished(self, key: str) -> dict[str, Any] | None:
        record = self.records.get(key)
        return record if record and record.get("status") == "ok" else None

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["key"]] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def latest(self) -> list[dict[str, Any]]:
        return list(self.records.values())
