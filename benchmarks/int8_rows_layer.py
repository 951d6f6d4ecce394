"""Per-layer time of LLM.int8 without outliers on the CPU at decode size: the eager int8_cpu path, the C++
int8_cpp op, and eetq's W8A16 int8_cpu on the same int8 kernel, on the demo model's four linear shapes.

    PYTHONPATH=src python benchmarks/int8_rows_layer.py [--rows 1] [--threads 1]

Best of 30 batches of 100 calls each (a shared machine's slow spells only ever add time); bf16 activations,
as in benchmarks/cpu_decode.py. Also checks that int8_cpp and int8_cpu give equal outputs.
"""

from __future__ import annotations

import argparse
import time

import torch

from lowbit.core.affine import int8_absmax
from lowbit.kernels import cpp_ops, cpu

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # (out, in): q/o, k/v, gate/up, down


def best_us(fn, calls: int = 100, batches: int = 30) -> float:
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def layer_args(doc: str) -> argparse.Namespace:
    """--rows and --threads of the per-layer benchmarks; sets torch's thread count."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    return args


@torch.inference_mode()
def main() -> None:
    args = layer_args(__doc__)
    if cpp_ops.build_failure():
        raise SystemExit(f"the C++ op is not available: {cpp_ops.build_failure()}")
    print("| out x in | eetq W8A16 (int8_cpu) us | LLM.int8 eager (int8_cpu) us | LLM.int8 C++ (int8_cpp) us |")
    print("|---|---|---|---|")
    for out_f, in_f in SHAPES:
        q, s = int8_absmax(torch.randn(out_f, in_f), dim=1)  # (out, in) int8, (out, 1)
        w = cpu.prepare_int8_cpu(None, q, s)
        x = torch.randn(args.rows, in_f, dtype=torch.bfloat16)  # (rows, in)
        assert torch.equal(cpu.llm_int8_cpu_linear(x, w, 0.0, None), cpu.llm_int8_cpp_linear(x, w, 0.0, None))
        times = [
            best_us(lambda: cpu.int8_cpu_linear(x, w, None)),
            best_us(lambda: cpu.llm_int8_cpu_linear(x, w, 0.0, None)),
            best_us(lambda: cpu.llm_int8_cpp_linear(x, w, 0.0, None)),
        ]
        print(f"| {out_f} x {in_f} | " + " | ".join(f"{t:.1f}" for t in times) + " |")


if __name__ == "__main__":
    main()
