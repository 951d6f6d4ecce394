"""Launch-config sweep of the NF4 and AQLM matrix-vector kernels against bf16 cuBLAS in the same run.

    PYTHONPATH=src:benchmarks python benchmarks/codebook_sweep.py --rows 1 --out sweep.json

Times every config with benchmarks/kernel_bench.py's method (a CUDA graph over weight copies that do not fit in
L2, do_bench median) and prints the best config per (kernel, shape, rows) with its ratio to bf16.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from kernel_bench import _bf16_variant, _time_per_call, aqlm_weights, cuda_device, fourbit_weights, weight_copies

NF4_GRID = {"mv": {"BN": (128, 256, 512), "BKW": (4, 8), "num_warps": (4, 8)},
            "tc": {"BN": (32, 64, 128), "BKW": (8, 16), "num_stages": (1, 2)}}
AQLM_GRID = {"lut": {"BN": (64, 128, 256), "BC": (16, 32, 64), "LUT16": (False, True)},
             "gather": {"BN": (16, 32, 64), "BC": (16, 32), "num_warps": (4,)}}


def _grid(space: dict) -> list[dict]:
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]


def _kernels(cols, out, dev):
    """(name, weights, call(x, weights, config)) for each kernel swept."""
    from lowbit.kernels.triton_aqlm import aqlm_gemv
    from lowbit.kernels.triton_fourbit import fourbit_matmul

    for path in ("mv", "tc"):
        yield (f"nf4_{path}", fourbit_weights(cols, out, dev), NF4_GRID[path],
               lambda x, w, c, p=path: fourbit_matmul(x, *w, None, p, config=c))
    for label, m, nbits, kernel in (("aqlm_2x8_lut", 2, 8, "lut"), ("aqlm_2x8_gather", 2, 8, "gather"),
                                    ("aqlm_1x16_gather", 1, 16, "gather")):
        yield (label, aqlm_weights(cols, out, dev, m, nbits), AQLM_GRID[kernel],
               lambda x, w, c, k=kernel: aqlm_gemv(x, *w, None, k, config=c))


def sweep_cell(cols, out, rows, dev, only: set[str], waves: list[int] | None = None) -> list[dict]:
    x = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)  # (rows, in)
    call, copies, _, _ = _bf16_variant(cols, out, dev)
    bf16 = _time_per_call(lambda i: call(x, i), copies)
    records = []
    for label, (args, nbytes), space, run in _kernels(cols, out, dev):
        if only and label not in only:
            continue
        ws = weight_copies(args, nbytes)
        for cfg in _grid({"waves": tuple(waves)} if waves else space):
            rec = {"kernel": label, "shape": f"{cols}x{out}", "rows": rows, "config": cfg}
            try:
                sec = _time_per_call(lambda i: run(x, ws[i], dict(cfg)), len(ws))
                rec |= {"us": sec * 1e6, "x_bf16": bf16 / sec, "GBps": (nbytes + x.numel() * 2) / sec / 1e9}
            except Exception as err:  # a config that does not compile is reported, not skipped silently
                rec["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            records.append(rec)
        del ws
        torch.cuda.empty_cache()
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1])
    p.add_argument("--shapes", nargs="+", default=["4096x4096", "4096x14336"], help="INxOUT")
    p.add_argument("--out", type=Path)
    p.add_argument("--waves", type=int, nargs="+", help="sweep only these program waves per SM, default configs")
    p.add_argument("--kernels", nargs="+", help="only these (nf4_mv, nf4_tc, aqlm_2x8_lut, aqlm_2x8_gather, "
                   "aqlm_1x16_gather)")
    args = p.parse_args(argv)
    dev = cuda_device()
    if dev is None:
        return 2
    records = []
    for shape, rows in itertools.product(args.shapes, args.rows):
        cols, out = map(int, shape.split("x"))
        records += sweep_cell(cols, out, rows, dev, set(args.kernels or ()), args.waves)
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "records": records}, indent=1))
    best = {}
    for r in records:
        key = (r["kernel"], r["shape"], r["rows"])
        if "us" in r and (key not in best or r["us"] < best[key]["us"]):
            best[key] = r
    for (kernel, shape, rows), r in sorted(best.items()):
        print(f"{kernel:>18} {shape:>11} rows={rows:<3} {r['us']:8.1f} us {r['x_bf16']:5.2f}x bf16 "
              f"{r['GBps']:6.0f} GB/s {r['config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
