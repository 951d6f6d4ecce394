"""benchmarks/decode.py's model on the CPU at a tiny size: its attention choices agree."""

import sys
from pathlib import Path

import pytest
import torch

from kernel_checks import import_triton

import_triton()  # before decode imports it, under the interpreter where there is no GPU
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import decode  # noqa: E402 (the benchmark script, from its folder)

TINY = dict(hidden=64, inter=128, layers=1, heads=4, kv_heads=2, head_dim=16, vocab=100)


def _step_inputs(cache: int, position: int):
    """(pos, cos, sin, mask) of one decode step at `position`, as Decoder.step makes them."""
    pos = torch.tensor([position])
    inv = 1.0 / 500000 ** (torch.arange(0, TINY["head_dim"], 2).float() / TINY["head_dim"])
    angles = torch.arange(cache).float()[:, None] * inv[None, :]
    mask = (torch.arange(cache) <= pos)[None, None, None, :]
    return pos, angles.cos().bfloat16()[pos], angles.sin().bfloat16()[pos], mask


def _fill_caches(*blocks: "decode.Block") -> None:
    """The same random K and V caches in every block."""
    for name in ("k_cache", "v_cache"):
        filled = torch.randn_like(getattr(blocks[0], name))
        for block in blocks:
            getattr(block, name).copy_(filled)


def test_flex_attention_block_matches_sdpa():
    """A block with FlexAttention (--sdpa flex) gives SDPA's output under the same weights and cache, and masks the
    cache past the position: changing a later entry changes nothing."""
    torch.manual_seed(0)
    cache, cpu = 8, torch.device("cpu")
    sdpa, flex = (decode.Block("bf16", TINY, 1, cache, cpu, attention=a) for a in ("default", "flex"))
    flex.load_state_dict(sdpa.state_dict())
    _fill_caches(sdpa, flex)
    h = torch.randn(1, TINY["hidden"], dtype=torch.bfloat16)
    inputs = _step_inputs(cache, 3)
    with torch.no_grad():
        want, got = sdpa(h, None, *inputs), flex(h, None, *inputs)
        flex.k_cache[..., 5, :] += 100.0  # a position after 3: masked out
        again = flex(h, None, *inputs)
    for w, g, a in zip(want, got, again):
        assert torch.allclose(g.float(), w.float(), atol=0.05, rtol=0.02)
        assert torch.equal(a, g)


def test_block_adds_the_pending_output_before_its_norm():
    """A block given the block before's output (pending) computes what it computes on the sum: the residual add
    moved into the next block changes no result."""
    torch.manual_seed(0)
    cache, cpu = 8, torch.device("cpu")
    block = decode.Block("bf16", TINY, 1, cache, cpu)
    h, pending = (torch.randn(1, TINY["hidden"], dtype=torch.bfloat16) for _ in range(2))
    with torch.no_grad():
        fused = block(h, pending, *_step_inputs(cache, 3))
        summed = block(h + pending, None, *_step_inputs(cache, 3))
    assert all(torch.equal(f, s) for f, s in zip(fused, summed))
    assert not torch.equal(fused[0], block(h, None, *_step_inputs(cache, 3))[0])


def _half(block: "decode.Block") -> "decode.Block":
    """The block in fp16 (Triton's interpreter computes bf16 products wrongly); its norms and caches too."""
    block.half()
    for name in ("norm1", "norm2", "k_cache", "v_cache"):
        setattr(block, name, getattr(block, name).half())
    return block


@pytest.mark.usefixtures("triton_interpreter")
def test_lowbit_attention_block_matches_sdpa():
    """A block with the one-kernel attention (--sdpa lowbit, run under Triton's interpreter) gives the torch path's
    output and leaves the same caches."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    cache = 8
    sdpa, ours = (_half(decode.Block("bf16", TINY, 2, cache, dev, attention=a)) for a in ("default", "lowbit"))
    ours.load_state_dict(sdpa.state_dict())
    _fill_caches(sdpa, ours)
    h = torch.randn(2, TINY["hidden"], dtype=torch.float16, device=dev)
    pos, cos, sin, mask = (t.to(dev) for t in _step_inputs(cache, 5))
    with torch.no_grad():
        want, got = (block(h, None, pos, cos.half(), sin.half(), mask) for block in (sdpa, ours))
    for w, g in zip(want, got):
        assert torch.allclose(g.float(), w.float(), atol=0.02, rtol=0.01)
    assert torch.equal(ours.v_cache, sdpa.v_cache)
    assert torch.allclose(ours.k_cache.float(), sdpa.k_cache.float(), atol=0.01)


def test_steps_past_the_cache_are_refused(capsys):
    """Timed (and profiled) steps that would run past the static cache stop with a one-line error."""
    try:
        decode.main(["--steps", "254", "--cache", "256", "--profile"])
    except SystemExit as stop:
        assert stop.code == 2
    else:
        raise AssertionError("no error")
    assert "258 decode steps pass the 256-position cache" in capsys.readouterr().err
