"""Speed and memory measurements for one model: prefill/decode tokens/s, peak memory while a call runs."""

from __future__ import annotations

import inspect
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psutil
import torch
from torch import nn


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak bytes during the block: the CUDA allocator's peak, or on CPU the sampled resident set.

    The CPU figure is the process's peak RSS during the block (sampled every 5 ms), so it includes
    whatever the process already held; `delta_bytes` is that peak minus the RSS when the block began.
    """
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        result["delta_bytes"] = result["peak_bytes"] - start
        return
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        result["peak_bytes"], result["delta_bytes"] = peak[0], peak[0] - start


@dataclass
class SpeedResult:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    batch: int
    prompt_tokens: int
    new_tokens: int
    threads: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_step(model: nn.Module, tokens: torch.Tensor, cache=None) -> tuple[torch.Tensor, object]:
    """One forward with the KV cache -> (next greedy token (b, 1), cache). transformers renamed
    `past_key_values` to `cache` in 5.2x; both spellings are supported."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(tokens, use_cache=True, **({name: cache} if cache is not None else {}))
    return out.logits[:, -1:].argmax(-1), getattr(out, name)


@torch.no_grad()
def measure_speed(model: nn.Module, prompt_tokens: int, new_tokens: int, batch: int = 1, repeats: int = 3) -> SpeedResult:
    """Median over repeats (after one warm-up) of a prefill and of a greedy decode with the KV cache."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    prompt = torch.randint(3, vocab, (batch, prompt_tokens), generator=torch.Generator().manual_seed(0)).to(device)
    prefill, decode = [], []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        token, cache = _decode_step(model, prompt)
        _sync(device)
        prefill.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(new_tokens):
            token, cache = _decode_step(model, token, cache)
        _sync(device)
        decode.append(time.perf_counter() - start)
    return SpeedResult(
        prefill_tokens_per_s=batch * prompt_tokens / statistics.median(prefill[1:]),
        decode_tokens_per_s=batch * new_tokens / statistics.median(decode[1:]),
        batch=batch,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        threads=torch.get_num_threads(),
    )
