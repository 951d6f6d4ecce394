"""Per-layer decode time of AQLM (2x8 and 1x16, groups of 8) on the CPU vs a dense bf16 linear, on the demo
model's four linear shapes: what the AQLM rows of benchmarks/cpu_decode.py are made of, without quantizing.

    PYTHONPATH=src python benchmarks/aqlm_layer_cpu.py [--rows 1] [--threads 1]

Codes and codebooks are random (speed does not depend on their values); each layer runs through
AQLMLinear and the kernel selector (today only the reference path: decode the weight, then matmul).
Best of 10 batches of 20 calls, bf16 activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from int8_rows_layer import SHAPES, best_us, layer_args
from lowbit.core.aqlm import AQLMWeights
from lowbit.modules.aqlm_linear import AQLMLinear

FORMATS = {"2x8": (2, 8), "1x16": (1, 16)}  # codebooks x bits per codebook
GROUP = 8


def random_aqlm(out_f: int, in_f: int, m: int, bits: int) -> AQLMLinear:
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(2**bits, (out_f, -(-in_f // GROUP), m), generator=gen)  # (out, G, M)
    codebooks = torch.randn(m, 2**bits, GROUP, generator=gen)  # (M, K, g)
    return AQLMLinear.from_weights(AQLMWeights(codes, codebooks, torch.rand(out_f, 1, generator=gen), in_f), None)


@torch.inference_mode()
def main() -> None:
    args = layer_args(__doc__)
    print("| out x in | bf16 dense us | " + " | ".join(f"aqlm {f} us (kernel)" for f in FORMATS) + " |")
    print("|---|---|" + "---|" * len(FORMATS))
    for out_f, in_f in SHAPES:
        x = torch.randn(args.rows, in_f, dtype=torch.bfloat16)  # (rows, in)
        w = torch.randn(out_f, in_f, dtype=torch.bfloat16)  # (out, in)
        cells = [f"{best_us(lambda: F.linear(x, w), 20, 10):.1f}"]
        for m, bits in FORMATS.values():
            layer = random_aqlm(out_f, in_f, m, bits).to(torch.bfloat16)
            cells.append(f"{best_us(lambda: layer(x), 20, 10):.0f} ({layer.kernel(x).name})")
        print(f"| {out_f} x {in_f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
