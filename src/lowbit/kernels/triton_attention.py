"""One decode step's attention over a static KV cache in one Triton kernel (GPU decode benchmarks).

Per decode step and layer a Llama-style block needs rotary embeddings on the step's query and key (RoPE, Su et
al. 2021, in the half-split layout of Hugging Face's Llama), the key and value written into the cache at the
step's position, and grouped-query attention (Ainslie et al. 2023) of the query heads over the cache. Done with
torch ops that is four or five kernels, attention's being a prefill kernel; here it is one: a program per
(sequence, KV head) ropes and stores the new key and value, then runs its group's query heads over the cache in
blocks of BLOCK_N positions with the online softmax of FlashAttention (Dao et al. 2022), positions past the step's
masked out (the whole cache is read at every position, as a masked SDPA call reads it, so the cost does not grow
with the position). The program whose share of the cache holds the step's position writes the new key and value
there before it reads the cache (a block barrier makes the stores visible to its threads), so every block comes from
the cache alone, loaded masked past the position. The group's query heads are the rows of the tensor-core products (padded to 16).
With `split` > 1 the cache of a (sequence, KV head) is spread over several programs whose softmax states the last
to finish combines (Flash-Decoding, Dao et al. 2023), counted by split_counters (one stream, as there). By default
the split is the most that keeps one wave of programs, each with at least SPLIT_POSITIONS of the cache.
Importing this module imports Triton: callers import it lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lowbit.kernels import nvrtc
from lowbit.kernels.split_counters import counters_for
from lowbit.kernels.triton_splitk import _fence, interpreting, split_k

# The fewest cache positions a split's program walks. On the H100 (attention_bench, kern27, batch 1, 128-position
# blocks) one program a KV head over a 256-position cache beat every split of it, while longer caches gained from
# splits of 256: 1024 positions 15.0 -> 8.1 us (4 splits), 4096 positions 50.4 -> 11.0 us (16 splits).
SPLIT_POSITIONS = 256


@triton.jit
def _rope(t, t_rot, cos, sin, first_half):
    """RoPE in the half-split layout: t * cos - t[d + D/2] * sin below D/2, t * cos + t[d - D/2] * sin above."""
    return t * cos + tl.where(first_half, -t_rot, t_rot) * sin


@triton.jit
def _decode_attention(q_ptr, k_ptr, v_ptr, k_cache, v_cache, cos_ptr, sin_ptr, pos_ptr, o_ptr, part_ptr, count_ptr,
                      stride_q, stride_k, stride_v, stride_o, sm_scale,
                      T: tl.constexpr, KV: tl.constexpr, GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                      BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, CHUNK: tl.constexpr, FENCE: tl.constexpr,
                      PDL: tl.constexpr = False):
    """o (GROUP heads, D) of one (sequence, KV head); grid (batch * KV, SPLIT), a split CHUNK positions."""
    if PDL:  # programmatic dependent launch: read nothing before the kernel ahead has finished
        tl.extra.cuda.gdc_wait()
    bg, split = tl.program_id(0), tl.program_id(1)
    b, g = bg // KV, bg % KV
    p = tl.load(pos_ptr)
    d = tl.arange(0, D)
    rot = (d + D // 2) % D
    first_half = d < D // 2
    cos = tl.load(cos_ptr + d % (D // 2)).to(tl.float32)
    sin = tl.load(sin_ptr + d % (D // 2)).to(tl.float32)

    k_row = k_ptr + b * stride_k + g * D
    k_new = _rope(tl.load(k_row + d).to(tl.float32), tl.load(k_row + rot).to(tl.float32), cos, sin, first_half)
    k_new = k_new.to(k_cache.dtype.element_ty)
    v_new = tl.load(v_ptr + b * stride_v + g * D + d)
    slot = bg * T * D  # this (sequence, KV head)'s (T, D) slice of the cache
    if split == p // CHUNK:  # the split that reads position p; past the cache none (no other slice overwritten)
        tl.store(k_cache + slot + p * D + d, k_new, mask=p < T)
        tl.store(v_cache + slot + p * D + d, v_new, mask=p < T)
    tl.debug_barrier()  # the stores are visible to every thread of the program before its loads

    h = tl.arange(0, GP)
    q_rows = q_ptr + b * stride_q + (g * GROUP + h)[:, None] * D
    in_group = (h < GROUP)[:, None]
    q = _rope(tl.load(q_rows + d[None, :], mask=in_group, other=0.0).to(tl.float32),
              tl.load(q_rows + rot[None, :], mask=in_group, other=0.0).to(tl.float32),
              cos[None, :], sin[None, :], first_half[None, :])
    q = q.to(k_cache.dtype.element_ty)  # (GP, D)
    m_i, l_i, acc = _attend(q, k_cache + slot, v_cache + slot, p, split * CHUNK, sm_scale, d, T, GP, D, BLOCK_N,
                            CHUNK)
    o_rows = o_ptr + b * stride_o + (g * GROUP + h)[:, None] * D
    if SPLIT == 1:
        tl.store(o_rows + d[None, :], (acc / l_i[:, None]).to(o_ptr.dtype.element_ty), mask=in_group)
    else:
        _combine(m_i, l_i, acc, part_ptr + bg * SPLIT * GP * (D + 2), count_ptr + bg, split, o_rows, h, d, GROUP,
                 GP, D, SPLIT, FENCE)


@triton.jit
def _attend(q, k_slot, v_slot, p, first, sm_scale, d, T: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
            BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    """Online-softmax state (max, sum, unnormalized output) of q (GP, D) over positions first..first + CHUNK - 1 up
    to p. Positions past p are not read (zeros: a stale NaN there would survive a zero weight)."""
    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    for start in range(0, CHUNK, BLOCK_N):  # constant bounds: Triton 3.6's interpreter needs them
        n = first + start + tl.arange(0, BLOCK_N)
        offs = n[:, None] * D + d[None, :]
        seen = n <= p
        upto = (seen & (n < T))[:, None]
        k = tl.load(k_slot + offs, mask=upto, other=0.0)
        s = tl.dot(q, tl.trans(k)) * sm_scale  # (GP, BLOCK_N)
        s = tl.where(seen[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block past p: no NaN from -inf - -inf
        alpha = tl.exp(m_i - m_safe)
        weights = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(weights, 1)
        v = tl.load(v_slot + offs, mask=upto, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(weights.to(v.dtype), v)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _combine(m_i, l_i, acc, part, counter, split, o_rows, h, d, GROUP: tl.constexpr, GP: tl.constexpr,
             D: tl.constexpr, SPLIT: tl.constexpr, FENCE: tl.constexpr):
    """Store this split's state in `part` ((SPLIT, GP, D + 2) fp32: output, max, sum a row); the last split of the
    (sequence, KV head) to arrive rescales them all to the common max and writes the output (flash-decoding's
    reduction, done in the same launch like triton_splitk's fix-up; the counter is left at zero)."""
    valid = h < GROUP
    rows = part + split * GP * (D + 2) + h * (D + 2)  # (GP,) row starts
    tl.store(rows[:, None] + d[None, :], acc, mask=valid[:, None])
    tl.store(rows + D, m_i, mask=valid)
    tl.store(rows + D + 1, l_i, mask=valid)
    if FENCE:
        _fence()
    tl.debug_barrier()  # every thread's partial is out before the counter moves
    if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == SPLIT - 1:
        m_t = tl.full([GP], float("-inf"), tl.float32)
        l_t = tl.zeros([GP], tl.float32)
        o_t = tl.zeros([GP, D], tl.float32)
        for i in tl.static_range(SPLIT):
            rows = part + i * GP * (D + 2) + h * (D + 2)
            m_s = tl.load(rows + D, mask=valid, other=0.0, cache_modifier=".cg")
            l_s = tl.load(rows + D + 1, mask=valid, other=1.0, cache_modifier=".cg")  # padded rows: no 0 / 0
            o_s = tl.load(rows[:, None] + d[None, :], mask=valid[:, None], other=0.0, cache_modifier=".cg")
            m_n = tl.maximum(m_t, m_s)  # finite from split 0 on: it holds position 0
            c_t, c_s = tl.exp(m_t - m_n), tl.exp(m_s - m_n)
            l_t = l_t * c_t + l_s * c_s
            o_t = o_t * c_t[:, None] + o_s * c_s[:, None]
            m_t = m_n
        tl.store(o_rows + d[None, :], (o_t / l_t[:, None]).to(o_rows.dtype.element_ty), mask=valid[:, None])
        tl.atomic_xchg(counter, 0)  # ready for the next launch


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, block_n: int = 128,
                     num_warps: int = 8, num_stages: int = 3, split: int | None = None) -> torch.Tensor:
    """q (batch, heads * D), k and v (batch, kv * D) of one step (before RoPE); caches (batch, kv, T, D); cos and
    sin (1, D / 2) at the step's position pos (a (1,) device tensor) -> attention output (batch, heads * D).

    Writes the roped key and the value into the caches at pos, as index_copy_ would. `split` > 1 spreads each
    (sequence, KV head) over that many programs (flash-decoding), where the device's arrival counters allow; None
    takes split_k's rule over SPLIT_POSITIONS-position slices: the most (a power of 2) that keeps one wave."""
    batch, kv, cache, dim = k_cache.shape
    heads = q.shape[1] // dim
    group, gp = heads // kv, max(16, triton.next_power_of_2(heads // kv))
    split = split or split_k(batch * kv, cache // SPLIT_POSITIONS, q.device, waves=1)
    counters = counters_for(q.device, batch * kv) if split > 1 else None
    split = split if counters is not None else 1
    block_n = max(16, min(block_n, triton.next_power_of_2(math.ceil(cache / split))))
    chunk = math.ceil(math.ceil(cache / split) / block_n) * block_n  # positions a split, whole blocks
    split = math.ceil(cache / chunk)  # no split wholly past the cache
    out = torch.empty((batch, heads * dim), dtype=q.dtype, device=q.device)  # (batch, heads * D)
    part = torch.empty((batch * kv, split, gp, dim + 2) if split > 1 else (1,), dtype=torch.float32, device=q.device)
    flags = {}
    if not interpreting() and nvrtc.programmatic(q.device.index or 0):
        flags = {"PDL": True, "launch_pdl": True}
    _decode_attention[(batch * kv, split)](
        q, k, v, k_cache, v_cache, cos, sin, pos, out, part, counters if counters is not None else part,
        q.stride(0), k.stride(0), v.stride(0), out.stride(0), 1.0 / math.sqrt(dim), T=cache, KV=kv, GROUP=group,
        GP=gp, D=dim, BLOCK_N=block_n, SPLIT=split, CHUNK=chunk, FENCE=not interpreting(), num_warps=num_warps,
        num_stages=num_stages, **flags)
    return out
