"""One decode step's attention over a static KV cache in one Triton kernel (GPU decode benchmarks).

Per decode step and layer a Llama-style block needs rotary embeddings on the step's query and key (RoPE, Su et
al. 2021, in the half-split layout of Hugging Face's Llama), the key and value written into the cache at the
step's position, and grouped-query attention (Ainslie et al. 2023) of the query heads over the cache. Done with
torch ops that is four or five kernels, attention's being a prefill kernel; here it is one: a program per
(sequence, KV head) ropes and stores the new key and value, then runs its group's query heads over the cache in
blocks of BLOCK_N positions with the online softmax of FlashAttention (Dao et al. 2022), positions past the step's
masked out (the whole cache is read at every position, as a masked SDPA call reads it, so the cost does not grow
with the position). The new key and value enter the block that holds the position from registers, so the program never
reads back what it wrote. The group's query heads are the rows of the tensor-core products (padded to 16).
Importing this module imports Triton: callers import it lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lowbit.kernels import nvrtc
from lowbit.kernels.triton_splitk import interpreting


@triton.jit
def _rope(t, t_rot, cos, sin, first_half):
    """RoPE in the half-split layout: t * cos - t[d + D/2] * sin below D/2, t * cos + t[d - D/2] * sin above."""
    return t * cos + tl.where(first_half, -t_rot, t_rot) * sin


@triton.jit
def _decode_attention(q_ptr, k_ptr, v_ptr, k_cache, v_cache, cos_ptr, sin_ptr, pos_ptr, o_ptr,
                      stride_q, stride_k, stride_v, stride_o, sm_scale,
                      T: tl.constexpr, KV: tl.constexpr, GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                      BLOCK_N: tl.constexpr, PDL: tl.constexpr = False):
    """o (GROUP heads, D) of one (sequence, KV head); grid (batch * KV,)."""
    if PDL:  # programmatic dependent launch: read nothing before the kernel ahead has finished
        tl.extra.cuda.gdc_wait()
    b, g = tl.program_id(0) // KV, tl.program_id(0) % KV
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
    slot = (b * KV + g) * T * D  # this (sequence, KV head)'s (T, D) slice of the cache
    tl.store(k_cache + slot + p * D + d, k_new)
    tl.store(v_cache + slot + p * D + d, v_new)

    h = tl.arange(0, GP)
    q_rows = q_ptr + b * stride_q + (g * GROUP + h)[:, None] * D
    in_group = (h < GROUP)[:, None]
    q = _rope(tl.load(q_rows + d[None, :], mask=in_group, other=0.0).to(tl.float32),
              tl.load(q_rows + rot[None, :], mask=in_group, other=0.0).to(tl.float32),
              cos[None, :], sin[None, :], first_half[None, :])
    q = q.to(k_cache.dtype.element_ty)  # (GP, D)

    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    for start in range(0, T, BLOCK_N):  # constant bounds: Triton 3.6's interpreter needs them
        n = start + tl.arange(0, BLOCK_N)
        here = (n == p)[:, None]
        offs = slot + n[:, None] * D + d[None, :]
        k = tl.where(here, k_new[None, :], tl.load(k_cache + offs, mask=(n < T)[:, None], other=0.0))
        s = tl.dot(q, tl.trans(k)) * sm_scale  # (GP, BLOCK_N)
        s = tl.where((n <= p)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        weights = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(weights, 1)
        v = tl.load(v_cache + offs, mask=(n < T)[:, None], other=0.0)
        v = tl.where(here, v_new[None, :], tl.where((n <= p)[:, None], v, 0.0))  # 0 * stale NaN would be NaN
        acc = acc * alpha[:, None] + tl.dot(weights.to(v.dtype), v)
        m_i = m_new
    o_rows = o_ptr + b * stride_o + (g * GROUP + h)[:, None] * D
    tl.store(o_rows + d[None, :], (acc / l_i[:, None]).to(o_ptr.dtype.element_ty), mask=in_group)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, block_n: int = 64,
                     num_warps: int = 8, num_stages: int = 3) -> torch.Tensor:
    """q (batch, heads * D), k and v (batch, kv * D) of one step (before RoPE); caches (batch, kv, T, D); cos and
    sin (1, D / 2) at the step's position pos (a (1,) device tensor) -> attention output (batch, heads * D).

    Writes the roped key and the value into the caches at pos, as index_copy_ would."""
    batch, kv, cache, dim = k_cache.shape
    heads = q.shape[1] // dim
    group = heads // kv
    out = torch.empty((batch, heads * dim), dtype=q.dtype, device=q.device)  # (batch, heads * D)
    flags = {}
    if not interpreting() and nvrtc.programmatic(q.device.index or 0):
        flags = {"PDL": True, "launch_pdl": True}
    _decode_attention[(batch * kv,)](
        q, k, v, k_cache, v_cache, cos, sin, pos, out, q.stride(0), k.stride(0), v.stride(0), out.stride(0),
        1.0 / math.sqrt(dim), T=cache, KV=kv, GROUP=group, GP=max(16, triton.next_power_of_2(group)), D=dim,
        BLOCK_N=max(16, min(block_n, triton.next_power_of_2(cache))), num_warps=num_warps, num_stages=num_stages, **flags)
    return out
