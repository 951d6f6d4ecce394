"""One call of each NF4 / AQLM kernel at one row, for Nsight Compute (ncu) to profile on the GPU.

    ncu --kernel-name regex:"_fourbit|_aqlm" --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats python benchmarks/profile_codebook.py --shape 4096x14336
"""

from __future__ import annotations

import argparse

import torch

from kernel_bench import aqlm_weights, fourbit_weights
from lowbit.kernels.triton_aqlm import aqlm_gemv
from lowbit.kernels.triton_fourbit import fourbit_matmul


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="4096x14336")
    args = p.parse_args()
    cols, out = map(int, args.shape.split("x"))
    dev = torch.device("cuda")
    x = torch.randn(1, cols, device=dev, dtype=torch.bfloat16)  # (1, in)
    nf4, _ = fourbit_weights(cols, out, dev)
    aqlm28, _ = aqlm_weights(cols, out, dev, 2, 8)
    aqlm116, _ = aqlm_weights(cols, out, dev, 1, 16)
    for _ in range(2):  # the second call of each is the one to read (the first compiles)
        fourbit_matmul(x, *nf4, None, "mv")
        aqlm_gemv(x, *aqlm28, None, "lut")
        aqlm_gemv(x, *aqlm116, None, "gather")
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
