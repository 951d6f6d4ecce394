"""A check shared by the GPU kernel tests: a layer gives the same output eager, compiled and in a CUDA graph."""

from __future__ import annotations

import torch


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
