"""PNG plots of a comparison (matplotlib, headless): quality vs memory with the Pareto front, speed, KL."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402


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
    """Quantized settings as numbered points (one colour and marker per implementation), keyed beside the axes;
    the baseline as a horizontal line, so that its much larger size does not squeeze the rest into one corner."""
    baseline = [r for r in rows if r.get("baseline")]
    rows = [r for r in rows if not r.get("baseline")]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    points = [(r["weight_mb"], r["ppl"]) for r in rows]
    libraries = list(dict.fromkeys(r.get("library", "lowbit") for r in rows))
    for i, library in enumerate(libraries):
        mine = [p for p, r in zip(points, rows) if r.get("library", "lowbit") == library]
        ax.scatter(*zip(*mine), color=f"C{i}", marker="os^DvP*X"[i % 8], zorder=3, label=library)
    for (x, y), numbers in _coinciding(points).items():
        ax.annotate(",".join(map(str, numbers)), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    for r in baseline:
        ax.axhline(r["ppl"], color="grey", linestyle=":", label=f"{r['label']} ({r['weight_mb']:.0f} MB)")
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="tab:red", label="Pareto front")
    ys = [y for _, y in points] + [r["ppl"] for r in baseline]
    if ys and max(ys) > 3 * min(ys):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="lower left", bbox_to_anchor=(0.70, 0.04))
    key = "\n".join(f"{n:>2}  {r['label']}" for n, r in enumerate(rows, 1))
    fig.text(0.70, 0.94, key, fontsize=7, va="top", family="monospace")
    ax.set_xlabel("weights (MB)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("Quality vs memory")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout(rect=(0, 0, 0.69, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _coinciding(points: list[tuple[float, float]]) -> dict[tuple[float, float], list[int]]:
    """Point -> the 1-based numbers of the points within 1/60 of the axes' ranges of it (log scale for y),
    so that one label lists them instead of printing them on top of each other."""
    if not points:
        return {}
    xs, ys = [p[0] for p in points], [math.log(p[1]) for p in points]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: dict[tuple[float, float], list[int]] = {}
    for n, (x, y) in enumerate(points, 1):
        near = next((g for g in groups if abs(g[0] - x) < dx / 60 and abs(math.log(g[1]) - math.log(y)) < dy / 60), None)
        groups.setdefault(near or (x, y), []).append(n)
    return groups


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
