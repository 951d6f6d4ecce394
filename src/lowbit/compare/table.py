"""Flatten comparison records into report rows (one place that decides what each column means)."""

from __future__ import annotations

from typing import Any

COLUMNS = [
    ("label", "setting"),
    ("library", "implementation"),
    ("bits_per_param", "bits/param"),
    ("saving_pct", "memory saved vs fp16 (%)"),
    ("weight_mb", "weights (MB)"),
    ("inference_peak_mb", "inference peak (MB)"),
    ("ppl", "ppl"),
    ("quality_kept_pct", "quality kept (%)"),
    ("kl", "KL vs unquantized"),
    ("top1", "top-1 agreement"),
    ("prefill_tps", "prefill tok/s"),
    ("decode_tps", "decode tok/s"),
    ("decode_speedup", "decode x unquantized"),
    ("quantize_s", "quantize (s)"),
    ("quantize_peak_mb", "quantize peak +MB"),
    ("calibration", "calibration"),
    ("kernels", "kernels"),
    ("status", "status"),
]


def side_by_side(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records grouped by method in order of first appearance: a reference library's row follows lowbit's."""
    order: dict[str, int] = {}
    for r in records:
        order.setdefault(r["config"].get("method"), len(order))
    return sorted(records, key=lambda r: order[r["config"].get("method")])


def rows(records: list[dict[str, Any]], eval_name: str) -> list[dict[str, Any]]:
    """One row per record; quality columns for `eval_name`; ratios against the unquantized record."""
    base = next((r for r in records if r["config"].get("method") == "unquantized" and r["status"] == "ok"), None)
    out = []
    for r in side_by_side(records):
        row: dict[str, Any] = {"label": r["label"], "library": r["config"].get("library", "lowbit"), "status": r["status"],
                               "baseline": r["config"].get("method") == "unquantized"}
        if r["status"] != "ok":
            row["error"] = r.get("error", "unknown error")
        if r["status"] != "ok":
            out.append(row)
            continue
        quality, memory, speed = r["quality"][eval_name], r["memory"], r["speed"]
        row |= {
            "bits_per_param": memory["bits_per_param"] or 16.0 * memory["weight_bytes"] / memory["fp16_bytes"],
            "saving_pct": 100 * memory["saving_vs_fp16"],
            "weight_mb": memory["weight_bytes"] / 1e6,
            "inference_peak_mb": memory["inference_peak_bytes"] / 1e6,
            "ppl": quality["ppl"],
            "kl": quality["kl"],
            "top1": quality["top1"],
            "prefill_tps": speed["prefill_tokens_per_s"],
            "decode_tps": speed["decode_tokens_per_s"],
            "quantize_s": r.get("quantize_s"),
            "quantize_peak_mb": r["quantize_peak_delta_bytes"] / 1e6 if "quantize_peak_delta_bytes" in r else None,
            "calibration": _calibration(r),
            "kernels": ", ".join(r.get("kernels", [])),
        }
        if base is not None:
            row["quality_kept_pct"] = 100 * base["quality"][eval_name]["ppl"] / quality["ppl"]
            row["decode_speedup"] = speed["decode_tokens_per_s"] / base["speed"]["decode_tokens_per_s"]
        out.append(row)
    return out


def _calibration(record: dict[str, Any]) -> str:
    calib = record.get("calibration")
    if not calib:
        return "-"
    return f"{calib['samples']} windows of {calib['data']}" if calib["needed"] else "none"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
