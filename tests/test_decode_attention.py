"""The one-kernel decode attention (kernels/triton_attention.py) against the torch ops it replaces (RoPE, index_copy_
and SDPA: benchmarks/decode.py's torch_attention) run in fp32.

Compiled on a CUDA machine; elsewhere under Triton's interpreter (fp16 only: the interpreter's bf16 dot is wrong).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kernel_checks import fresh_seed, import_triton, sass_stats

CUDA = torch.cuda.is_available()
import_triton()

from lowbit.kernels import triton_ops  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import decode  # noqa: E402 (the benchmark script, from its folder)

DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPES = (torch.float16, torch.bfloat16) if CUDA else (torch.float16,)


pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _step(batch, heads, kv, dim, cache, position, dtype):
    """Random q, k, v of one step, filled caches, and cos, sin, pos at `position`."""
    q = torch.randn(batch, heads * dim, device=DEVICE).to(dtype)
    k, v = (torch.randn(batch, kv * dim, device=DEVICE).to(dtype) for _ in range(2))
    k_cache, v_cache = (torch.randn(batch, kv, cache, dim, device=DEVICE).to(dtype) for _ in range(2))
    angles = position * 0.9 ** torch.arange(dim // 2, device=DEVICE).float()[None, :]  # (1, dim / 2)
    pos = torch.tensor([position], device=DEVICE)
    return q, k, v, k_cache, v_cache, angles.cos().to(dtype), angles.sin().to(dtype), pos


def _torch_step(q, k, v, k_cache, v_cache, cos, sin, pos):
    """decode.torch_attention in fp32; writes the caches (rounded to their dtype) like the kernel."""
    k32, v32 = k_cache.float(), v_cache.float()
    mask = (torch.arange(k_cache.shape[2], device=pos.device) <= pos)[None, None, None, :]
    out = decode.torch_attention(q.float(), k.float(), v.float(), k32, v32, pos, cos.float(), sin.float(), mask)
    k_cache.copy_(k32)
    v_cache.copy_(v32)
    return out.reshape(q.shape[0], -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,heads,kv,dim,cache,position", [
    (1, 8, 2, 16, 8, 0), (2, 8, 2, 16, 37, 36), (3, 6, 2, 32, 70, 41), (1, 4, 4, 16, 130, 64), (2, 32, 8, 128, 96, 5),
])
def test_decode_attention_matches_torch(dtype, batch, heads, kv, dim, cache, position):
    """Outputs within fp16/bf16 rounding of the fp32 torch step, and the caches written at the position only,
    over group sizes 1-4, caches not a multiple of the block and the first, a middle and the last position."""
    if not CUDA and dim == 128:
        pytest.skip("full Llama head size: on the device only (slow under the interpreter)")
    fresh_seed()
    step = _step(batch, heads, kv, dim, cache, position, dtype)
    q, k, v, k_cache, v_cache, cos, sin, pos = step
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    want = _torch_step(q, k, v, ref_k, ref_v, cos, sin, pos)
    got = triton_ops.decode_attention(*step)
    assert got.shape == (batch, heads * dim) and got.dtype == dtype
    err = ((got.float() - want).norm() / want.norm()).item()
    assert err < (1e-2 if dtype == torch.bfloat16 else 2e-3), err
    torch.testing.assert_close(v_cache, ref_v, rtol=0, atol=0)
    torch.testing.assert_close(k_cache, ref_k, rtol=1e-2, atol=1e-2)  # the roped key, rounded once either way
    others = torch.arange(cache, device=DEVICE) != position
    assert torch.equal(k_cache[:, :, others], ref_k[:, :, others])


@pytest.mark.parametrize("split,position", [(2, 0), (3, 41), (5, 69), (3, 69)])
def test_split_cache_matches_torch(split, position):
    """The cache spread over `split` programs a (sequence, KV head), their partial softmax states combined by the last
    to finish: the torch step's output and caches (splits past the position included), and the arrival counters
    back at zero."""
    from lowbit.kernels.split_counters import counters_for
    from lowbit.kernels.triton_attention import decode_attention

    fresh_seed()
    step = _step(2, 8, 2, 16, 70, position, torch.float16)
    ref_k, ref_v = step[3].clone(), step[4].clone()
    want = _torch_step(*step[:3], ref_k, ref_v, *step[5:])
    got = decode_attention(*step, block_n=16, split=split)
    assert ((got.float() - want).norm() / want.norm()).item() < 2e-3
    torch.testing.assert_close(step[4], ref_v, rtol=0, atol=0)
    torch.testing.assert_close(step[3], ref_k, rtol=1e-2, atol=1e-2)
    assert not counters_for(DEVICE, 4)[:4].any()


def test_default_split_keeps_one_wave(monkeypatch):
    """split=None takes triton_splitk.split_k's rule over SPLIT_POSITIONS-position slices: the launch's grid has the
    split the rule names, more than one for one sequence of 2 KV heads over a 512-position cache."""
    from lowbit.kernels import triton_attention

    kernel, grids = triton_attention._decode_attention, []
    launcher = type("Launcher", (), {"__getitem__": lambda self, grid: grids.append(grid) or kernel[grid]})
    monkeypatch.setattr(triton_attention, "_decode_attention", launcher())
    cache = 2 * triton_attention.SPLIT_POSITIONS
    named = triton_attention.split_k(2, 2, DEVICE, waves=1)
    fresh_seed()
    triton_attention.decode_attention(*_step(1, 8, 2, 16, cache, 300, torch.float16))
    assert named > 1 and grids == [(2, named)]


def test_decode_attention_masks_later_positions():
    """Cache entries after the position change nothing."""
    fresh_seed()
    step = _step(1, 8, 2, 16, 40, 20, torch.float16)
    first = triton_ops.decode_attention(*step)
    step[3][:, :, 21:] += 100.0  # k_cache after the position
    step[4][:, :, 30:] = float("nan")  # v_cache
    assert torch.equal(triton_ops.decode_attention(*step), first)


def test_position_past_the_cache_writes_nothing():
    """A position at the cache's end (a caller's bug) leaves every cache entry as it was instead of writing into
    the next head's slice or past the tensor."""
    fresh_seed()
    step = _step(2, 8, 2, 16, 24, 24, torch.float16)
    before = step[3].clone(), step[4].clone()
    assert torch.isfinite(triton_ops.decode_attention(*step)).all()
    assert torch.equal(step[3], before[0]) and torch.equal(step[4], before[1])


@pytest.mark.parametrize("change,message", [
    (lambda s: (s[0][:, :-16], *s[1:]), "do not fit a cache"),
    (lambda s: (*s[:3], s[3][..., :12], s[4][..., :12], *s[5:]), "power-of-2 head dim"),
    (lambda s: (*s[:4], s[4].transpose(2, 3).contiguous().transpose(2, 3), *s[5:]), "contiguous"),
    (lambda s: (s[0].float(), *s[1:]), "fp16/bf16"),
])
def test_decode_attention_rejects_bad_inputs(change, message):
    step = change(_step(1, 8, 2, 16, 8, 3, torch.float16))
    with pytest.raises(ValueError, match=message):
        triton_ops.decode_attention(*step)


@pytest.mark.skipif(not CUDA, reason="torch.compile and CUDA graphs of the kernel need a CUDA GPU")
def test_decode_attention_compiles_and_captures():
    """torch.compile (fullgraph) writes the caches in place and matches eager; a captured step replays at a new
    position and new inputs like an eager call."""
    fresh_seed()
    step = list(_step(2, 32, 8, 128, 64, 10, torch.bfloat16))
    eager_caches = [t.clone() for t in step[3:5]]
    eager = triton_ops.decode_attention(*step[:3], *eager_caches, *step[5:])
    torch._dynamo.reset()
    compiled = torch.compile(triton_ops.decode_attention, fullgraph=True)(*step)
    assert torch.allclose(compiled.float(), eager.float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(step[3], eager_caches[0]) and torch.equal(step[4], eager_caches[1])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = triton_ops.decode_attention(*step)
    step[0].copy_(torch.randn_like(step[0]))
    step[7].fill_(40)
    graph.replay()
    assert torch.allclose(captured.float(), triton_ops.decode_attention(*step).float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("split", [1, 4])
def test_kernel_compiles_for_sm90(split):
    """Built for sm_90 here (Triton's ptxas, benchmarks/sass_stats.py), one program a KV head or the cache over four:
    no spills, and with PDL nothing is read or written before the wait for the kernel ahead."""
    spec = {"num_warps": 8, "num_stages": 3, "SPLIT": split, "CHUNK": 256 // split}
    stats, = sass_stats("attention", spec)
    assert stats["stack"] == 0, stats
    assert stats["programmatic"]["waits"] == 1 and stats["programmatic"]["accesses_before_wait"] == 0, stats
