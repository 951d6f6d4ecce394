"""Per-layer statistics gathered through the engine's block runs (shared by GPTQ, awq+gptq and AQLM)."""

from __future__ import annotations

import torch

from lowbit.calib.engine import BlockRun
from lowbit.core.hessian import accumulate_hessian


def collect_hessians(run: BlockRun, groups: list[tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """Local linear name -> (in, in) Hessian of its inputs over every calibration batch.

    Linears of one group share their input, so each group's Hessian is accumulated once.
    """
    state: dict[str, tuple[torch.Tensor | None, int]] = {group[0]: (None, 0) for group in groups}

    def hook_for(first: str):
        def hook(x: torch.Tensor) -> None:
            state[first] = accumulate_hessian(x, *state[first])

        return hook

    run.forward(hooks={group[0]: hook_for(group[0]) for group in groups}, outputs=False)
    return {name: state[group[0]][0] for group in groups for name in group}
