"""PNG plots of a comparison (matplotlib, headless): quality vs memory with the Pareto front, speed, KL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (lower x = memory, lower y = loss)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def write_plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    ok = [r for r in rows if "ppl" in r]
    paths = [_quality_vs_memory(ok, out / "quality_vs_memory.png"), _bars(ok, "decode_tps", "decode tokens/s (batch 1)", out / "decode_speed.png")]
    paths.append(_bars([r for r in ok if r.get("kl")], "kl", "KL divergence vs unquantized (lower is better)", out / "kl.png"))
    return paths


def _quality_vs_memory(rows: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [(r["weight_mb"], r["ppl"]) for r in rows]
    ax.scatter(*zip(*points), color="tab:blue", zorder=3) if points else None
    for r, (x, y) in zip(rows, points):
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="tab:red", label="Pareto front")
        ax.legend()
    ax.set_xlabel("weights (MB)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("Quality vs memory")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(rows: list[dict[str, Any]], key: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh([r["label"] for r in rows], [r[key] for r in rows], color="tab:green")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
