"""HQQ: half-quadratic optimisation of the zero point (and optionally the scale), no data needed.

Badri & Shaji (2023), "Half-Quadratic Quantization of Large Machine Learning Models". The error
W - s (q - z) is penalised with an lp norm, p < 1 (robust to the outlier weights that min-max and l2
fits chase). Splitting it with an auxiliary error term W_e and alternating, from the min-max qparams:

    q   = clamp(round(W / s + z), 0, 2**b - 1)
    W_e = shrink_p(W - s (q - z), beta)                 generalised soft-thresholding (the lp prox)
    z   = mean_group(q - (W - W_e) / s)                 closed-form zero update
    beta <- kappa * beta

stopping early once the mean absolute error |W - s (q - z)| stops falling, or falls by less than a fraction
`tol` of itself in a step (as the tolerance of the hqq package's newer loop); the qparams with the lowest error
seen are kept. On the demo model's linears the error is within 0.2% of its 20-step value after 5 steps at 2 bits
and within 0.03% after 7 at 4 bits (docs/hqq5.md): tol 1e-3 stops there, tol 0 runs until the error rises.
(Returning the last step's zero instead, as the hqq package's loop does, measured no better on the demo model
at 4 and 3 bits, ppl 37.31 / 259.3, and worse at 2 bits, 369,600 against 304,400.)

`round_zero` starts from the min-max zero rounded to an integer (the hqq package's `round_zero`, on in its
4-bit BaseQuantizeConfig). The loop then ends at a different point, zeros nearer integers and a slightly
larger weight error, yet a lower perplexity on the demo model (docs/hqq4.md: 4-bit g64 35.57 against 37.28).

With `optimize_scale`, the scale is refit each step by least squares of W - W_e on the codes (an
extension the paper mentions; off by default). Groups run along the input axis of the (out, in) weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.affine import (
    QPARAM_DTYPE,
    IntWeights,
    affine_qparams,
    n_groups,
    quantize_affine,
    real_columns,
    resolve_group_size,
    to_groups,
)


@dataclass(frozen=True)
class HQQSchedule:
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iters: int = 20
    tol: float = 1e-3  # stop once a step lowers the error by less than this fraction of it


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Proximal operator of |x|^p / beta (Badri & Shaji eq. 6): sign(x) relu(|x| - |x|^(p-1) / beta)."""
    mag = x.abs()
    shrunk = mag.clamp(min=1e-12).pow_(p - 1).mul_(-1.0 / beta).add_(mag).clamp_(min=0)
    return torch.copysign(shrunk, x, out=shrunk)


def hqq_quantize(
    w: torch.Tensor,
    bits: int,
    group_size: int,
    schedule: HQQSchedule = HQQSchedule(),
    optimize_scale: bool = False,
    round_zero: bool = False,
) -> IntWeights:
    """(out, in) float weight -> IntWeights with HQQ-optimised fractional zeros (and scales).

    round_zero: start from the min-max zero rounded to an integer (the hqq package's 4-bit default).
    """
    cols = w.shape[1]
    group_size = resolve_group_size(group_size, cols)
    scale16, zero16 = affine_qparams(w, bits, group_size, symmetric=False)  # min-max start, (out, n_groups)
    if round_zero:
        zero16 = zero16.round()
    g = to_groups(w.float(), group_size)  # (out, n_groups, group_size)
    scale, zero = _optimize(g, bits, _Groups.of(cols, group_size, g.device), scale16, zero16, schedule, optimize_scale)
    scale16 = scale.squeeze(2).clamp(min=torch.finfo(QPARAM_DTYPE).tiny).to(QPARAM_DTYPE)
    zero16 = zero.squeeze(2).to(QPARAM_DTYPE)
    return IntWeights(quantize_affine(w, scale16, zero16, bits, group_size), scale16, zero16, bits, group_size)


def _optimize(g, bits, groups, scale16, zero16, schedule, optimize_scale):
    """The proximal loop on grouped weights g (out, n_groups, group_size); returns scale, zero (out, n_groups, 1).

    Each step makes a few dense passes in preallocated buffers: t = g / s + z, the codes q = clamp(round(t)),
    and the residual in code units r = t - q (so W - s (q - z) = s r). The shrink is exactly zero wherever
    s |r| is at most beta**(-1 / (2 - p)), so it runs only on the few groups that hold such an entry.
    """
    scale, zero = scale16.float().unsqueeze(2), zero16.float().unsqueeze(2)  # (out, n_groups, 1)
    t, q, r, mag = (torch.empty_like(g) for _ in range(4))
    g_mean, maxq, beta = groups.mean(g), 2**bits - 1, schedule.beta
    best = (float("inf"), scale, zero)
    for _ in range(schedule.iters):
        torch.mul(g, scale.reciprocal(), out=t).add_(zero)  # g / s + z
        torch.round(t, out=q).clamp_(0, maxq)  # codes
        torch.sub(t, q, out=r)
        torch.abs(r, out=mag)
        error = float((groups.mean(mag) * scale).mean())  # mean |W - s (q - z)|
        if error >= best[0]:
            break
        plateau = error > best[0] * (1 - schedule.tol)
        best = (error, scale, zero)  # scale and zero are replaced below, never changed in place
        if plateau:
            break
        threshold = beta ** (-1 / (2 - schedule.lp_norm))
        hit = (mag.amax(dim=2) * scale.squeeze(2) > threshold).view(-1).nonzero().squeeze(1)  # groups with W_e != 0
        w_e = shrink_lp(r.view(-1, g.shape[2])[hit] * scale.view(-1, 1)[hit], beta, schedule.lp_norm)  # (hits, group)
        if optimize_scale:
            target = g.clone()  # W - W_e
            target.view(-1, g.shape[2])[hit] -= w_e
            scale = _refit_scale(q, target, groups.mean, scale)
        zero = groups.mean(q) - (g_mean - groups.mean_of_rows(hit, w_e, zero)) / scale
        beta *= schedule.kappa
    return best[1], best[2]


@dataclass(frozen=True)
class _Groups:
    """Means over each group's real columns of (out, n_groups, group_size) tensors: to_groups pads the last
    group of a row with copies of its last column, which must count for nothing."""

    mask: torch.Tensor | None  # (1, n_groups, group_size) 1 on real columns, None without padding
    counts: torch.Tensor  # (n_groups,) real columns per group

    @staticmethod
    def of(cols: int, group_size: int, device: torch.device) -> _Groups:
        mask = real_columns(cols, group_size, device)
        if mask is None:
            return _Groups(None, torch.full((n_groups(cols, group_size),), float(group_size), device=device))
        return _Groups(mask, mask.sum(dim=2).view(-1))

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """(out, n_groups, group_size) -> (out, n_groups, 1)."""
        if self.mask is None:
            return x.mean(dim=2, keepdim=True)
        return (x * self.mask).sum(dim=2, keepdim=True) / self.counts.view(1, -1, 1)

    def mean_of_rows(self, hit: torch.Tensor, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Group means, shaped as `like` (out, n_groups, 1), of a grouped tensor that is zero except in the
        groups `hit` (flat group indices), whose values are `rows` (hits, group_size)."""
        group = hit % self.counts.numel()  # each hit's group index within its row
        if self.mask is not None:
            rows = rows * self.mask.view(len(self.counts), -1)[group]
        means = torch.zeros_like(like).view(-1)
        means[hit] = rows.sum(dim=1) / self.counts[group]
        return means.view_as(like)


def _refit_scale(q: torch.Tensor, target: torch.Tensor, mean, scale: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of target on q per group; groups with one distinct code keep their scale."""
    qc = q - mean(q)
    var = mean(qc * qc)
    slope = mean(qc * target) / var.clamp(min=1e-12)
    return torch.where((var > 1e-12) & (slope > 0), slope, scale)
