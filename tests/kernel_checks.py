"""Helpers shared by the kernel tests: a fresh random seed per run, the eager / compiled / CUDA-graph check, and
the ptxas usage of a CUDA kernel built offline for sm_90."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def import_triton() -> None:
    """Import Triton or skip the calling module; without CUDA, under Triton's interpreter, which must be on when
    Triton is first imported (it decorates its own language helpers then). The variable is restored afterwards, so
    that other test modules keep the reference path on the CPU; the kernel tests turn it on again per test
    (conftest's triton_interpreter)."""
    saved = os.environ.get("TRITON_INTERPRET")
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
    finally:
        os.environ.pop("TRITON_INTERPRET", None) if saved is None else os.environ.update(TRITON_INTERPRET=saved)


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


def sm90_usage(source: Path, spec: dict) -> tuple[int, int, str]:
    """(registers a thread, spill-store bytes, ptxas log) of `source` with the -D settings `spec`, built offline for
    sm_90 (nvrtc.sm90_offline); skips without the nvidia-cuda-nvrtc wheel or Triton's ptxas (.ci/run installs both)."""
    from lowbit.kernels import nvrtc

    pytest.importorskip("nvidia", reason="needs the nvidia-cuda-nvrtc wheel (.ci/run installs it)")
    pytest.importorskip("triton.backends.nvidia.compiler")
    try:
        info, _ = nvrtc.sm90_offline(source, spec)
    except ImportError as err:  # the namespace package without libnvrtc
        pytest.skip(str(err))
    registers = int(re.search(r"Used (\d+) registers", info).group(1))
    return registers, int(re.search(r"(\d+) bytes spill stores", info).group(1)), info


def sass_stats(kernel: str, *specs: dict) -> list[dict]:
    """benchmarks/sass_stats.py's figures for a Triton kernel compiled for sm_90 here, one per constexpr override
    dict (a subprocess: Triton's interpreter is off there)."""
    pytest.importorskip("triton")
    script = Path(__file__).parents[1] / "benchmarks" / "sass_stats.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script), kernel, *map(json.dumps, specs)], capture_output=True,
                         text=True, env=env, check=True).stdout.splitlines()
    return [json.loads(line[json.JSONDecoder().raw_decode(line)[1]:]) for line in out]
