"""Additive quantization of a linear layer (AQLM, Egiazarian et al., 2024, section 3).

Each output row is cut into groups of `g` consecutive inputs (the last group zero-padded); each group is
approximated by the sum of M codewords, one from each of M codebooks of K = 2**B vectors of length g,
times a per-output-channel scale:

    w_hat[o, j*g:(j+1)*g] = s[o] * sum_m C[m, codes[o, j, m]]

The objective is the layer's output error ||(W - W_hat) X||^2 = tr((W - W_hat) H (W - W_hat)^T) with
H = X X^T (core.hessian, shared with GPTQ). Rows are independent given the codebooks, so every step runs
all rows at once. `aqlm_quantize` alternates, as the paper does:
  1. init: residual k-means of the scale-normalised weight groups, one codebook at a time;
  2. codebooks: least squares (conjugate gradient on the normal equations, all codebooks jointly);
  3. scales: closed-form per row;
  4. codes: beam search over one (group, codebook) at a time, exact loss deltas through H.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

CHUNK_ELEMENTS = 1 << 24  # candidate scores held at once by the beam search (rows x beam x K)


@dataclass
class AQLMWeights:
    """codes (out, n_groups, M) int64 in [0, K); codebooks (M, K, g) float32; scales (out, 1) float32."""

    codes: torch.Tensor
    codebooks: torch.Tensor
    scales: torch.Tensor
    in_features: int

    def dequantize(self) -> torch.Tensor:
        return aqlm_decode(self.codes, self.codebooks, self.scales)[:, : self.in_features]


def aqlm_decode(codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """codes (out, G, M), codebooks (M, K, g), scales (out, 1) -> (out, G * g) weights (padding included)."""
    out, groups, m = codes.shape
    total = codebooks[0][codes[:, :, 0]]  # (out, G, g)
    for i in range(1, m):
        total = total + codebooks[i][codes[:, :, i]]
    return total.reshape(out, -1) * scales


def padded_groups(w: torch.Tensor, group: int) -> torch.Tensor:
    """(out, in) -> (out, ceil(in / g) * g) float32, zero-padded."""
    pad = -w.shape[1] % group
    return torch.nn.functional.pad(w.float(), (0, pad))


def padded_hessian(H: torch.Tensor, group: int) -> torch.Tensor:
    """(in, in) -> padded (in_pad, in_pad) float32; padded inputs are always zero, so their rows are zero."""
    pad = -H.shape[0] % group
    return torch.nn.functional.pad(H.float(), (0, pad, 0, pad))


def output_error(w: torch.Tensor, w_hat: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Per row (out,) of tr((W - W_hat) H (W - W_hat)^T)."""
    r = (w - w_hat).float()
    return ((r @ H) * r).sum(dim=1)


def kmeans(
    x: torch.Tensor, k: int, iters: int, generator: torch.Generator, max_points: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of x (n, d) -> centroids (k, d), assignment (n,) int64 of every point.

    Starts from k distinct random points (all points, padded with random repeats, when k >= n); an
    emptied cluster restarts at the point worst served by its centroid. max_points > 0: the iterations
    see a random subset of that many points (AQLM's max_points_per_centroid), the final assignment all.
    """
    sample = x[torch.randperm(x.shape[0], generator=generator)[:max_points]] if 0 < max_points < x.shape[0] else x
    n = sample.shape[0]
    order = torch.randperm(n, generator=generator)
    if k > n:
        order = torch.cat([order, torch.randint(n, (k - n,), generator=generator)])
    centroids = sample[order[:k]].clone()  # (k, d)
    assign = nearest(sample, centroids)
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).float()
        empty = int((~filled).sum())
        if empty:
            worst = (sample - centroids[assign]).pow(2).sum(1).topk(min(empty, n)).indices
            centroids[(~filled).nonzero().squeeze(1)[: worst.numel()]] = sample[worst]
        new = nearest(sample, centroids)
        if torch.equal(new, assign):
            break
        assign = new
    return centroids, nearest(x, centroids) if sample is not x else assign


def nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index (n,) of the nearest centroid (k, d) to each row of x (n, d), in chunks of rows."""
    c_sq = centroids.pow(2).sum(1)  # (k,)
    step = max(1, CHUNK_ELEMENTS // centroids.shape[0])
    return torch.cat([(c_sq - 2 * x[i : i + step] @ centroids.t()).argmin(1) for i in range(0, x.shape[0], step)])


def residual_kmeans(
    vectors: torch.Tensor, num_codebooks: int, k: int, iters: int, generator: torch.Generator, max_points: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """vectors (n, g) -> codes (n, M), codebooks (M, k, g): each codebook clusters what the previous left."""
    residual = vectors.clone()
    codes, books = [], []
    for _ in range(num_codebooks):
        centroids, assign = kmeans(residual, k, iters, generator, max_points)
        residual -= centroids[assign]
        codes.append(assign)
        books.append(centroids)
    return torch.stack(codes, dim=1), torch.stack(books)


def _scatter_codebooks(grad_w: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, shape) -> torch.Tensor:
    """Adjoint of decoding: (out, in_pad) -> (M, K, g), each entry summing s[o] * grad over its uses."""
    m, k, g = shape
    out, groups, _ = codes.shape
    per_group = (grad_w * scales).reshape(out * groups, g)  # (out * G, g)
    result = torch.zeros(shape, dtype=grad_w.dtype, device=grad_w.device)
    for i in range(m):
        result[i].index_add_(0, codes[:, :, i].reshape(-1), per_group)
    return result


def update_codebooks(
    w: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor, iters: int
) -> torch.Tensor:
    """Codebooks (M, K, g) minimising tr((W - W_hat) H (W - W_hat)^T) for fixed codes and scales.

    The objective is quadratic in the codebooks; conjugate gradient on its normal equations
    A^T(A(C) H) = A^T(W H) (A: decoding) converges to the least-squares solution (exactly, in as many
    steps as unknowns), starting from the current codebooks. Unused codewords keep their values.
    """

    def normal(c: torch.Tensor) -> torch.Tensor:
        return _scatter_codebooks(aqlm_decode(codes, c, scales) @ H, codes, scales, c.shape)

    x = codebooks.clone()
    r = _scatter_codebooks(w @ H, codes, scales, x.shape) - normal(x)
    p, rr = r.clone(), float((r * r).sum())
    tol = 1e-12 * max(rr, 1e-30)
    for _ in range(iters):
        if rr <= tol:
            break
        ap = normal(p)
        denom = float((p * ap).sum())
        if denom <= 0:
            break
        alpha = rr / denom
        x += alpha * p
        r -= alpha * ap
        rr_new = float((r * r).sum())
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def update_scales(w: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Per-row scales (out, 1) minimising the output error for fixed codes: s = v^T H w / v^T H v."""
    v = aqlm_decode(codes, codebooks, torch.ones(codes.shape[0], 1, device=w.device))  # (out, in_pad)
    vh = v @ H
    num, den = (vh * w).sum(1), (vh * v).sum(1)
    return torch.where(den > 0, num / den.clamp(min=1e-30), torch.ones_like(den)).unsqueeze(1)


def beam_search(
    w: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor, beam: int
) -> torch.Tensor:
    """Codes (out, G, M) lowering each row's output error, searched from the current codes.

    Walks the groups in order and, within a group, the codebooks; for each (group, codebook) every one
    of the K codewords is scored by the exact change of r^T H r (r = w - w_hat, a rank-g update), and
    the `beam` best hypotheses per row are kept (AQLM's beam search; beam=1 is greedy coordinate
    descent). Rows are independent, so they run in chunks that bound memory.
    """
    k = codebooks.shape[1]
    step = max(1, CHUNK_ELEMENTS // (beam * k))
    parts = [
        _beam_rows(w[i : i + step], H, codes[i : i + step], codebooks, scales[i : i + step], beam)
        for i in range(0, w.shape[0], step)
    ]
    return torch.cat(parts)


def _beam_rows(w, H, codes, codebooks, scales, beam: int, block: int = 16) -> torch.Tensor:
    """The beam search on a chunk of rows. hr = (w - w_hat) H is kept current lazily, as GPTQ does with
    its error: exactly within a block of `block` groups, and for the columns after it once per block."""
    rows, groups, m = codes.shape
    k, g = codebooks.shape[1:]
    codes = codes.unsqueeze(0).clone()  # (B, rows, G, M); B grows up to `beam`
    w_hat = aqlm_decode(codes[0], codebooks, scales)
    hr = ((w - w_hat) @ H).unsqueeze(0)  # (B, rows, in_pad)
    loss = output_error(w, w_hat, H).unsqueeze(0)  # (B, rows)
    s = scales.reshape(1, rows, 1)
    for b0 in range(0, groups, block):
        span = slice(b0 * g, min(b0 + block, groups) * g)
        moved = torch.zeros(*hr.shape[:2], span.stop - span.start, device=w.device)  # (B, rows, block cols)
        for j in range(b0, min(b0 + block, groups)):
            cols, local = slice(j * g, (j + 1) * g), slice(j * g - span.start, (j + 1) * g - span.start)
            Hjj = H[cols, cols]
            quad = torch.einsum("mkg,gh,mkh->mk", codebooks, Hjj, codebooks)  # (M, K): c^T Hjj c
            for i in range(m):
                book, grad = codebooks[i], hr[:, :, cols]  # (K, g), (B, rows, g)
                old = book[codes[:, :, j, i]]  # (B, rows, g)
                old_h = old @ Hjj
                # loss change for codeword c: -2 s (c - old).grad + s^2 (c - old)^T Hjj (c - old)
                const = loss + 2 * s[..., 0] * (old * grad).sum(-1) + s[..., 0] ** 2 * (old_h * old).sum(-1)
                lin = -2 * s * (grad + s * old_h)  # (B, rows, g)
                scores = const.unsqueeze(-1) + lin @ book.t() + s**2 * quad[i]  # (B, rows, K)
                flat = scores.permute(1, 0, 2).reshape(rows, -1)  # (rows, B * K)
                best, index = flat.topk(min(beam, flat.shape[1]), largest=False)  # (rows, B')
                code = (index % k).t()  # (B', rows)
                if beam > 1:
                    pick = (index // k).t(), torch.arange(rows, device=w.device).unsqueeze(0)
                    codes, hr, moved, old = codes[pick], hr[pick], moved[pick], old[pick]
                delta = s * (book[code] - old)  # (B', rows, g): change of w_hat
                codes[:, :, j, i] = code
                moved[:, :, local] += delta
                hr[:, :, span] -= delta @ H[cols, span]
                loss = best.t()
        hr[:, :, span.stop :] -= moved @ H[span, span.stop :]
    return codes[loss.argmin(0), torch.arange(rows, device=w.device)]


@dataclass(frozen=True)
class AQLMSearch:
    """How hard `aqlm_quantize` searches (the presets of methods.aqlm choose these)."""

    beam: int = 1  # hypotheses kept per row by the beam search (1: greedy)
    rounds: int = 3  # alternations of (codebooks, scales, codes)
    tolerance: float = 0.01  # stop once a round lowers the output error by less than this (relative)
    kmeans_iters: int = 20
    kmeans_points: int = 0  # > 0: k-means iterations see at most this many points per centroid
    cg_iters: int = 20  # conjugate-gradient steps of each codebook update
    product_search: bool = False  # one codebook of 2B bits as the sum of two of B bits (see aqlm_quantize)
    seed: int = 0


def aqlm_quantize(
    w: torch.Tensor, H: torch.Tensor, num_codebooks: int, nbits: int, group: int, search: AQLMSearch
) -> AQLMWeights:
    """(out, in) weight + (in, in) Hessian of its inputs -> AQLMWeights.

    With search.product_search (one codebook of an even number of bits only), codes and codebook start as
    the sum of two half-size codebooks (entry a * 2**(B/2) + b) found by the M=2 algorithm; the full
    codebook and the scales are then fitted freely, but codes are never searched over all 2**B codewords
    (the reduced search of the fast preset: 1x16 costs about what 2x8 does).
    """
    W, Hp = padded_groups(w, group), padded_hessian(H, group)
    if search.product_search:
        half = aqlm_quantize(w, H, 2, nbits // 2, group, dataclasses.replace(search, product_search=False))
        codes, codebooks = product_codebook(half.codes, half.codebooks)
        codebooks = update_codebooks(W, Hp, codes, codebooks, half.scales, search.cg_iters)
        return AQLMWeights(codes, codebooks, update_scales(W, Hp, codes, codebooks), w.shape[1])
    generator = torch.Generator().manual_seed(search.seed)
    scales = W.norm(dim=1, keepdim=True).clamp(min=1e-12) / math.sqrt(W.shape[1])  # (out, 1) row RMS
    vectors = (W / scales).reshape(-1, group).cpu()  # (out * G, g)
    k, points = 2**nbits, search.kmeans_points * 2**nbits
    codes, codebooks = residual_kmeans(vectors, num_codebooks, k, search.kmeans_iters, generator, points)
    codes = codes.to(W.device).reshape(W.shape[0], -1, num_codebooks)  # (out, G, M)
    codebooks = codebooks.to(W.device)
    error = float(output_error(W, aqlm_decode(codes, codebooks, scales), Hp).sum())
    for _ in range(search.rounds):
        codebooks = update_codebooks(W, Hp, codes, codebooks, scales, search.cg_iters)
        scales = update_scales(W, Hp, codes, codebooks)
        codes = beam_search(W, Hp, codes, codebooks, scales, search.beam)
        new_error = float(output_error(W, aqlm_decode(codes, codebooks, scales), Hp).sum())
        done, error = new_error > (1 - search.tolerance) * error, new_error
        if done:
            break
    codebooks = update_codebooks(W, Hp, codes, codebooks, scales, search.cg_iters)
    return AQLMWeights(codes, codebooks, update_scales(W, Hp, codes, codebooks), w.shape[1])


def product_codebook(codes: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two codebooks (2, k, g) + codes (out, G, 2) -> one codebook (1, k*k, g) of all sums + codes (out, G, 1)."""
    k = codebooks.shape[1]
    full = (codebooks[0].unsqueeze(1) + codebooks[1].unsqueeze(0)).reshape(1, k * k, -1)  # entry a * k + b
    return (codes[:, :, :1] * k + codes[:, :, 1:]), full
