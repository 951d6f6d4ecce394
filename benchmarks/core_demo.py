"""Core methods on the demo model (SmolLM2-135M-Instruct): fp32, rtn 8-bit, rtn 4-bit g64, ptq W8A8.

Protocol: wikitext2-test, seqlen 512, first 40 windows; KL and top-1 against the fp32 model on the same
windows; ptq calibrated on 128 windows of 512 tokens of the wikitext2 calibration split, seed 0.

    python benchmarks/core_demo.py        # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import copy

import lowbit
from lowbit.calib.data import calibration_windows, consecutive_windows, evaluation_tokens
from lowbit.eval.memory import memory_report
from lowbit.eval.quality import evaluate_many
from lowbit.methods import make_config

from common import machine, stopwatch, write_results

SETTINGS = {
    "rtn 8-bit g128": ("rtn", dict(bits=8, group_size=128)),
    "rtn 4-bit g64": ("rtn", dict(bits=4, group_size=64)),
    "ptq W8A8": ("ptq", dict()),
}


def main() -> None:
    demo = lowbit.load("demo")
    windows = consecutive_windows(evaluation_tokens(demo.tokenizer), 512, 40)
    calib = calibration_windows(demo.tokenizer, "wikitext2", 128, 512, seed=0)
    models, rows = {"fp32": demo.model}, {"fp32": {"quantize_s": 0.0}}
    for label, (method, options) in SETTINGS.items():
        config = make_config(method, **options)
        with stopwatch() as t:
            models[label] = lowbit.quantize(copy.deepcopy(demo.model), config, calib if config.needs_calibration else None)
        rows[label] = {"config": config.to_dict(), "quantize_s": t["seconds"]}
    quality = evaluate_many(models, windows, reference=demo.model, progress=True)
    for label, model in models.items():
        mem = memory_report(model)
        q = quality[label]
        rows[label] |= {
            "ppl": q.ppl, "kl": q.kl, "top1": q.top1, "weight_bytes": mem.weight_bytes,
            "fp16_bytes": mem.fp16_bytes, "bits_per_param": mem.bits_per_param,
            "linear_fraction_of_fp16": mem.quantized_fraction_of_fp16 if mem.quantized_params else None,
        }
    table = ["| setting | ppl | KL vs fp32 | top-1 | bits/param (linears) | linears vs fp16 | weight MB | quantize s |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        frac = f"{r['linear_fraction_of_fp16']:.3f}" if r["linear_fraction_of_fp16"] else "-"
        bits = f"{r['bits_per_param']:.3f}" if r["bits_per_param"] else "32 (fp32)"
        table.append(f"| {label} | {r['ppl']:.3f} | {r['kl']:.4f} | {r['top1']:.3f} | {bits} | {frac} | "
                     f"{r['weight_bytes'] / 1e6:.1f} | {r['quantize_s']:.1f} |")
    protocol = {"dataset": "wikitext2-test", "seqlen": 512, "windows": windows.shape[0], "calib": "wikitext2 128x512 seed 0"}
    write_results("core_demo", {"machine": machine(), "protocol": protocol, "rows": rows}, "\n".join(table))


if __name__ == "__main__":
    main()
