"""A target for Nsight Compute: the Triton tensor-core kernel (`_mm_tc`) on one int4 g128 layer with whole-number
zeros, auto's tile (tc_config) with each override in turn, three calls each, then bf16 cuBLAS on the same shape.

    ncu --clock-control none -k regex:_mm_tc --launch-skip 2 --launch-count 2 --section SpeedOfLight \\
        python benchmarks/tc_profile_target.py --rows 128 --shape 4096x4096 \\
        --configs '[{"XTMA": false}, {"XTMA": false, "SUB16": true}]'

(docs/kern34.md: ncu's third and fourth launches of _mm_tc are the first override's last call and the second's
first.) Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json

import torch

from kernel_bench import int_group_weights
from lowbit.kernels.triton_int import int_group_matmul, tc_config


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--shape", default="4096x4096", help="INxOUT")
    p.add_argument("--configs", type=json.loads, default=[{}], help="a JSON list of overrides of auto's tile")
    args = p.parse_args(argv)
    cols, out = map(int, args.shape.split("x"))
    (qweight, scale, zero), _ = int_group_weights(cols, out, 4, "cuda", whole_zeros=True)
    x = torch.randn(args.rows, cols, device="cuda", dtype=torch.bfloat16)
    for override in args.configs:
        config = tc_config(args.rows, out, cols, 4) | override
        print(config, flush=True)
        for _ in range(3):
            int_group_matmul(x, qweight, scale, zero, None, 4, 128, config=config)
    w = torch.randn(out, cols, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x @ w.t()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
