"""AWQ maths: activation-aware per-channel scales and weight clipping (Lin et al., 2023).

Pure functions on tensors; calib.scaling moves the scales between layers and methods.awq runs the search.
Follows AutoAWQ / llm-compressor: s = x_mean^a / w_mean^(1-a) ("duo scaling") or s = x_mean^a, normalised
so that sqrt(max(s) * min(s)) = 1; clipping shrinks each group's max |w| by up to `max_shrink`.
"""

from __future__ import annotations

import torch

from lowbit.core.affine import expand_groups, n_groups, rtn_quantize, to_groups


def fake_quantize(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """(out, in) -> (out, in) float weights after round-to-nearest with integer zero points."""
    return rtn_quantize(w, bits, group_size, symmetric, integer_zero=True).dequantize()


def weight_group_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Mean over output rows of |w| / max|w| of its group, for the (out_i, in) weights sharing an input -> (in,)."""
    w = torch.cat([x.float() for x in weights], dim=0)  # (sum out, in)
    g = to_groups(w.abs(), group_size)  # (sum out, n_groups, group_size)
    normalised = (g / (g.amax(dim=2, keepdim=True) + 1e-6)).reshape(w.shape[0], -1)[:, : w.shape[1]]
    return normalised.mean(dim=0)


def awq_scale(x_mean: torch.Tensor, w_mean: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """Per-input-channel scale for exponent alpha in [0, 1]; w_mean None: activation-only scaling -> (in,)."""
    s = x_mean.pow(alpha) if w_mean is None else x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)
    s = s.clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def clip_search(
    w: torch.Tensor,
    x: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    rows_per_step: int = 64,
) -> torch.Tensor:
    """Per-group clipping threshold minimising the error of the group's partial outputs on inputs x.

    w: (out, in); x: (tokens, in) sampled layer inputs. Returns max_val (out, n_groups); clip w to
    [-max_val, max_val] with `apply_clip` before quantizing.
    """
    out, cols = w.shape
    gs = min(group_size if group_size != -1 else cols, cols)
    xg = torch.nn.functional.pad(x.float(), (0, n_groups(cols, gs) * gs - cols)).reshape(x.shape[0], -1, gs)  # (t, g, gs)
    best = torch.empty(out, n_groups(cols, gs), device=w.device)  # (out, n_groups)
    for r0 in range(0, out, rows_per_step):
        wg = to_groups(w[r0 : r0 + rows_per_step].float(), gs)  # (rows, g, gs)
        reference = torch.einsum("tgk,ogk->otg", xg, wg)
        org_max = wg.abs().amax(dim=2, keepdim=True)  # (rows, g, 1)
        best_err = torch.full(org_max.shape[:2], float("inf"), device=w.device)
        best_max = org_max[..., 0].clone()
        for step in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - step / n_grid)
            clipped = torch.maximum(torch.minimum(wg, max_val), -max_val)
            q = fake_quantize(clipped.reshape(-1, gs), bits, gs, symmetric).reshape(clipped.shape)
            err = (torch.einsum("tgk,ogk->otg", xg, q) - reference).pow(2).mean(dim=1)  # (rows, g)
            better = err < best_err
            best_err[better], best_max[better] = err[better], max_val[..., 0][better]
        best[r0 : r0 + rows_per_step] = best_max
    return best


def apply_clip(w: torch.Tensor, max_val: torch.Tensor, group_size: int) -> torch.Tensor:
    """Clamp (out, in) weights to [-max_val, max_val] per group (max_val: (out, n_groups))."""
    gs = min(group_size if group_size != -1 else w.shape[1], w.shape[1])
    limit = expand_groups(max_val.to(w.dtype), gs, w.shape[1])
    return torch.maximum(torch.minimum(w, limit), -limit)
