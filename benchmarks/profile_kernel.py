"""One call per row count of the group-wise integer kernels (int4 g128 unless --bits), for Nsight Compute.

    ncu --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \\
        python benchmarks/profile_kernel.py --shape 4096x14336 --rows 1 128          # tensor cores (_mm_tc)
    ncu ... -k regex:_gemv python benchmarks/profile_kernel.py --path mv --rows 1    # matrix-vector (_gemv)
    ncu ... -k regex:tinygemm python benchmarks/profile_kernel.py --path tinygemm --rows 1  # torch's int4 kernel
    ncu ... -k lowbit_mma python benchmarks/profile_kernel.py --path mma --rows 1 --config '{"MIN_BLOCKS": 2}'
    ncu ... -k lowbit_mma python benchmarks/profile_kernel.py --path mma --rows 1 --config '{"TILED": 1}'  # tile_words
    ncu ... -k regex:lowbit_aqlm python benchmarks/profile_kernel.py --path aqlm1x16 --rows 1   # cuda_aqlm
    ncu ... -k lowbit_mma python benchmarks/profile_kernel.py --path nf4 --rows 1  # cuda_mma's NF4, tile order
"""

from __future__ import annotations

import argparse
import json

import torch

from kernel_bench import _torch_int4_variant, aqlm_weights, fourbit_weights, int_group_weights
from lowbit.formats.nf4 import FourBitLayout
from lowbit.kernels.cuda_aqlm import aqlm_mma
from lowbit.kernels.cuda_mma import fourbit_mma, mma_matmul, tile_words
from lowbit.kernels.triton_gemv import int_group_gemv
from lowbit.kernels.triton_int import int_group_matmul
from lowbit.modules import fourbit_linear


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="4096x14336")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 128])
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--path", choices=["tc", "mv", "tinygemm", "mma", "nf4", "aqlm2x8", "aqlm1x16"], default="tc")
    p.add_argument("--config", type=json.loads, default=None, help="mma, nf4, aqlm*: launch-shape overrides (JSON)")
    args = p.parse_args()
    cols, out = map(int, args.shape.split("x"))
    dev = torch.device("cuda")
    if args.path == "tinygemm":  # int4 g128 only
        tinygemm = _torch_int4_variant(cols, out, dev)[0]
        call = lambda x: tinygemm(x, 0)
    elif args.path.startswith("aqlm"):  # cuda_aqlm, random codes
        m, nbits = (2, 8) if args.path == "aqlm2x8" else (1, 16)
        weights, _ = aqlm_weights(cols, out, dev, m, nbits)
        call = lambda x: aqlm_mma(x, *weights, None, config=args.config)
    elif args.path == "nf4":  # cuda_mma's NF4 path, double-quantized absmax in blocks of 64, the layer's tile order
        chunk = fourbit_linear.cuda_tile_chunk(FourBitLayout(out, cols, "nf4", 64, True))
        weights, _ = fourbit_weights(cols, out, dev, chunk)
        call = lambda x: fourbit_mma(x, *weights, None, config=args.config)
    else:
        (qweight, scale, zero), _ = int_group_weights(cols, out, args.bits, dev)
        if (args.config or {}).get("TILED"):  # mma: the words in the order TILED launches read
            qweight = tile_words(qweight, args.bits, 128)
        kernel = {"mv": int_group_gemv, "tc": int_group_matmul, "mma": mma_matmul}[args.path]
        settings = {"config": args.config} if args.path == "mma" else {}
        call = lambda x: kernel(x, qweight, scale, zero, None, args.bits, 128, **settings)
    for rows in args.rows:
        x = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)  # (rows, in)
        for _ in range(2):
            call(x)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
