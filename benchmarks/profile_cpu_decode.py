"""torch.profiler over decode steps of the demo model on the CPU: where a quantized model's token time goes.

    PYTHONPATH=src python benchmarks/profile_cpu_decode.py --method int8 -o threshold=0 [--steps 4] [--threads 2]

The demo model is quantized on the fly (calibration-free methods only), other layers in bf16 as in
benchmarks/cpu_decode.py; after a prefill and a warm-up, `--steps` decode steps run under the profiler and
the ops are listed by self CPU time.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import lowbit
from lowbit.methods import make_config


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        options[key] = float(value) if "." in value or key == "threshold" else int(value)
    return options


@torch.inference_mode()
def main() -> None:
    from transformers import DynamicCache

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="int8", help="a calibration-free method, or 'bf16' for the dense model")
    p.add_argument("-o", "--option", action="append", default=[], help="method option key=value")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=25, help="rows of the op table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = None if args.method == "bf16" else make_config(args.method, **parse_options(args.option))
    model = lowbit.load("demo", dtype=torch.bfloat16, quantize=config).model
    cache = DynamicCache()
    out = model(torch.arange(1, 33)[None], cache=cache, use_cache=True)  # (1, 32) prompt
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(4):  # warm-up
        token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
