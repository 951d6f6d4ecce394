"""Helpers shared by the kernel tests: a fresh random seed per run, and the eager / compiled / CUDA-graph check."""

from __future__ import annotations

import os

import torch


def fresh_seed() -> int:
    """Seed torch from the OS (fresh inputs every run) and return the seed for the failure message."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed


def compile_and_capture(layer, x: torch.Tensor) -> None:
    """torch.compile (fullgraph) matches eager; a captured graph replays on new inputs like an eager call."""
    eager = layer(x)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)(x)
    assert torch.allclose(compiled.float(), eager.float(), rtol=1e-2, atol=1e-2)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = layer(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.allclose(captured.float(), layer(x).float(), rtol=1e-2, atol=1e-2)
