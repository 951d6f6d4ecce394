"""Choose a bit width per layer: least predicted loss within a byte budget (multiple-choice knapsack).

Exact dynamic programming over the budget cut into at most `resolution` steps; each layer's bytes are
rounded *up* to whole steps, so the choice never exceeds the budget (it can leave up to one step per
layer unused: 0.2% of the budget for 200 layers at the default resolution).
"""

from __future__ import annotations

import math

import numpy as np

from lowbit.errors import LowbitError


def allocate(
    loss: dict[str, dict[int, float]], sizes: dict[str, dict[int, int]], budget: int, resolution: int = 100_000
) -> dict[str, int]:
    """layer -> bits minimising the summed loss with summed sizes <= budget (both keyed layer -> bits)."""
    names = list(loss)
    smallest = sum(min(sizes[n].values()) for n in names)
    if smallest > budget:
        raise LowbitError(f"the layers need at least {smallest:,} bytes at their smallest width, over {budget:,}")
    unit = max(1, math.ceil(budget / resolution))
    cap = budget // unit
    best = np.zeros(cap + 1)  # best[c]: least loss of the layers so far within c steps
    choices = []
    for name in names:
        options = sorted(loss[name])
        table = np.full((len(options), cap + 1), np.inf)  # (options, steps)
        for i, b in enumerate(options):
            w = math.ceil(sizes[name][b] / unit)
            if w <= cap:
                table[i, w:] = best[: cap + 1 - w] + loss[name][b]
        pick = table.argmin(axis=0)
        best = table[pick, np.arange(cap + 1)]
        choices.append((name, options, pick.astype(np.int8)))
    if not np.isfinite(best[cap]):
        raise LowbitError(f"the budget of {budget:,} bytes is too tight for the layers at their smallest width")
    chosen, c = {}, cap
    for name, options, pick in reversed(choices):
        b = options[pick[c]]
        chosen[name] = b
        c -= math.ceil(sizes[name][b] / unit)
    return {name: chosen[name] for name in names}
