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
    """One colour and marker per implementation; labels of points that nearly coincide are stacked."""
    fig, ax = plt.subplots(figsize=(8, 5))
    points = [(r["weight_mb"], r["ppl"]) for r in rows]
    libraries = list(dict.fromkeys(r.get("library", "lowbit") for r in rows))
    for i, library in enumerate(libraries):
        mine = [p for p, r in zip(points, rows) if r.get("library", "lowbit") == library]
        ax.scatter(*zip(*mine), color=f"C{i}", marker="os^DvP*X"[i % 8], zorder=3, label=library)
    stacked: dict[tuple[int, int], int] = {}
    for r, (x, y) in zip(rows, points):
        cell = _cell(x, y, points)
        stacked[cell] = stacked.get(cell, -1) + 1
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 3 + 9 * stacked[cell]), fontsize=7)
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="tab:red", label="Pareto front")
    if points and max(y for _, y in points) > 10 * min(y for _, y in points):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_xlabel("weights (MB)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("Quality vs memory")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(x: float, y: float, points: list[tuple[float, float]]) -> tuple[int, int]:
    """A coarse grid cell (1/40 of each axis' range): points in one cell would print their labels on top of each other."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    return round(40 * (x - min(xs)) / dx), round(40 * (y - min(ys)) / dy)


def _bars(rows: list[dict[str, Any]], key: str, title: str, path: Path) -> Path:
    """Horizontal bars in report order, coloured by implementation."""
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * max(len(rows), 1)))
    libraries = list(dict.fromkeys(r.get("library", "lowbit") for r in rows))
    colours = [f"C{libraries.index(r.get('library', 'lowbit'))}" for r in rows]
    ax.barh([r["label"] for r in rows], [r[key] for r in rows], color=colours)
    ax.tick_params(axis="y", labelsize=8)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
