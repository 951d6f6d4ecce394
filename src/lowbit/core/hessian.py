"""Second-order input statistics of a linear layer: H = 2/n * sum_t x_t x_t^T (Frantar et al., 2022).

Pure function, accumulated batch by batch as a running mean, so it never holds more than one batch.
GPTQ uses it directly; AQLM reuses it for its output-error objective.
"""

from __future__ import annotations

import torch


def accumulate_hessian(x: torch.Tensor, H: torch.Tensor | None, n: int) -> tuple[torch.Tensor, int]:
    """Fold a batch of layer inputs into the running Hessian.

    x: (..., in) inputs of one batch; H: (in, in) float32 Hessian of the n rows seen so far, or None.
    Returns (H, n) updated with the rows of x: H = 2/n_total * X^T X over every row seen.
    """
    x = x.reshape(-1, x.shape[-1]).float()  # (rows, in)
    rows = x.shape[0]
    if H is None:
        H = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
    total = n + rows
    H = H * (n / total)
    x = x * (2.0 / total) ** 0.5
    return H.addmm_(x.t(), x), total
