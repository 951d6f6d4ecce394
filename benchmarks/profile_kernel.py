"""One int4 g128 _mm_tc call per row count, for Nsight Compute (ncu) to profile on the GPU.

    ncu --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python benchmarks/profile_kernel.py --shape 4096x14336 --rows 1 128
"""

from __future__ import annotations

import argparse

import torch

from kernel_sweep import _weights
from lowbit.kernels.triton_int import int_group_matmul


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="4096x14336")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 128])
    args = p.parse_args()
    cols, out = map(int, args.shape.split("x"))
    (qweight, scale, zero), _ = _weights(cols, out, 4, torch.device("cuda"))
    for rows in args.rows:
        x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)  # (rows, in)
        for _ in range(2):
            int_group_matmul(x, qweight, scale, zero, None, 4, 128)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
