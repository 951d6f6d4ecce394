"""GPTQ: one-shot weight quantization with approximate second-order updates (Frantar et al., 2022).

Columns are quantized one at a time; the rounding error of each column is spread over the columns not
yet quantized through the inverse Hessian's Cholesky factor, in lazy blocks of `block_size` columns.
Emits the shared group-wise integer format (integer zero points, as the GPTQ export format needs).
Groups always follow the natural column order, so activation order (`desc_act`) requires static
groups (qparams fixed from the unquantized weight), which keeps the checkpoint free of a g_idx.
"""

from __future__ import annotations

import warnings

import torch

from lowbit.core.affine import IntWeights, affine_qparams, mse_qparams, n_groups, resolve_group_size, symmetric_zero
from lowbit.core.threads import one_cpu_thread
from lowbit.errors import LowbitError

MAX_DAMP = 10.0  # give up when even 10x the mean diagonal cannot make H positive definite
QPARAMS = {"minmax": affine_qparams, "mse": mse_qparams}  # how a group's scale and zero are chosen


def inverse_hessian_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, raising damp (with a warning) until it exists."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    mean_diag = torch.diag(H).mean()
    while True:
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U
        if damp * 10 > MAX_DAMP:
            raise LowbitError("GPTQ Hessian is not positive definite even with heavy dampening: the calibration data is degenerate")
        warnings.warn(f"GPTQ: Cholesky failed with damp={damp:g}; retrying with damp={damp * 10:g}", stacklevel=2)
        damp *= 10


def gptq_quantize(
    w: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    damp: float = 0.01,
    block_size: int = 128,
    desc_act: bool = False,
    static_groups: bool = False,
    qparams: str = "minmax",
) -> IntWeights:
    """(out, in) weight + (in, in) Hessian of its inputs -> IntWeights with natural-order groups.

    static_groups: every group's qparams from the unquantized weight before any column moves (as
    llm-compressor's GPTQModifier does); otherwise from the updated columns when the group starts (as
    the reference code). qparams: "minmax" (range widened to hold 0) or "mse" (shrunk-range grid search).
    """
    with one_cpu_thread(w.device):
        return _gptq(w, H, bits, group_size, symmetric, damp, block_size, desc_act, static_groups, QPARAMS[qparams])


def _gptq(w, H, bits, group_size, symmetric, damp, block_size, desc_act, static_groups, choose) -> IntWeights:
    if desc_act and not static_groups:
        raise LowbitError("desc_act needs static_groups=true (lowbit's format keeps groups in column order)")
    W = w.detach().float().clone()  # (out, in), updated in place as columns are quantized
    out, cols = W.shape
    gs = resolve_group_size(group_size, cols)
    H = H.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    scale = torch.empty(out, n_groups(cols, gs), dtype=torch.float16, device=W.device)  # (out, n_groups)
    zero = None if symmetric else torch.empty_like(scale)
    if static_groups:  # every group's qparams from the unquantized weight, before any column moves
        s, z = choose(W, bits, gs, symmetric, integer_zero=True)
        scale.copy_(s)
        if zero is not None:
            zero.copy_(z)
    perm = torch.argsort(torch.diag(H), descending=True) if desc_act else torch.arange(cols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    U = inverse_hessian_factor(H, damp)
    codes = torch.empty(out, cols, dtype=torch.uint8, device=W.device)  # in processing order
    maxq = 2**bits - 1
    order = perm.tolist()
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        err1 = torch.empty_like(W1)  # (out, i2 - i1)
        for i in range(i2 - i1):
            col = order[i1 + i]
            g = col // gs
            if not static_groups and col % gs == 0:  # natural order: the group's columns are next
                current = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :gs]
                s, z = choose(current, bits, current.shape[1], symmetric, integer_zero=True)
                scale[:, g : g + 1] = s
                if zero is not None:
                    zero[:, g : g + 1] = z
            s = scale[:, g].float()
            z = symmetric_zero(bits) if zero is None else zero[:, g].float()
            q = torch.clamp(torch.round(W1[:, i] / s + z), 0, maxq)
            codes[:, i1 + i] = q.to(torch.uint8)
            err = (W1[:, i] - (q - z) * s) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            err1[:, i] = err
        W[:, i2:] -= err1 @ U[i1:i2, i2:]
    codes = codes[:, torch.argsort(perm)]  # back to natural column order
    return IntWeights(codes, scale, zero, bits, gs)

