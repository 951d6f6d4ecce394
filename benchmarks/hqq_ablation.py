"""Why does lowbit's hqq differ from the hqq package on the demo model? One variable at a time.

    PYTHONPATH=src python benchmarks/hqq_ablation.py [--bits 4] [--group-size 64] [--windows 40] [--only NAME ...]

Each variant turns every target linear weight W (out, in) of the fp32 demo model into its dequantized
W_hat (fake quantization: same numbers as the packed module's reference path), then reports, averaged
over the layers, the relative weight error ||W - W_hat|| / ||W||, the relative output error
sqrt(tr(dW H dW^T) / tr(W H W^T)) with H the Gram matrix of the layer's inputs on 4 calibration windows
(wikitext2 calibration split, 512 tokens, seed 0), the mean |zero - round(zero)| of the final zero points,
and ppl / KL / top-1 vs fp32 on the demo protocol (wikitext2-test, first N windows of 512).
Needs `pip install --no-deps hqq termcolor` for the package variants.
Results: benchmarks/results/hqq_ablation_{bits}bit_g{group}.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
import sys

import torch

from demo_protocol import demo_and_windows, evaluate_many, merge_results

from lowbit.calib.activations import observe_inputs
from lowbit.calib.arch import arch_spec, find_targets
from lowbit.calib.data import calibration_windows
from lowbit.core.affine import IntWeights, quantize_affine, rtn_quantize
from lowbit.core.hessian import accumulate_hessian
from lowbit.core.hqq import hqq_quantize

METRICS = ["weight_err", "output_err", "mean_output_err", "bias_err", "zero_frac"]
COLUMNS = ["ppl", "kl", "top1", *METRICS]


def package(w, bits, group, round_zero=None, fp16=False):
    """The hqq package's Quantizer (HQQLinear's path) with BaseQuantizeConfig's defaults unless overridden."""
    from hqq.core.quantize import Quantizer

    round_zero = bits == 4 if round_zero is None else round_zero  # BaseQuantizeConfig: round_zero only at 4 bits
    q, meta = Quantizer.quantize(w, nbits=bits, group_size=group, axis=1, round_zero=round_zero, optimize=True,
                                 bitpack=False, device="cpu")
    scale, zero = meta["scale"].view(w.shape[0], -1), meta["zero"].view(w.shape[0], -1)  # (out, in // group)
    if fp16:  # lowbit's storage: fp16 qparams, codes re-derived against them
        scale, zero = scale.half(), zero.half()
        return IntWeights(quantize_affine(w, scale, zero, bits, group), scale, zero, bits, group)
    return IntWeights(q.view(w.shape).to(torch.uint8), scale, zero, bits, group)


def integer_zeros(q: IntWeights, w: torch.Tensor) -> IntWeights:
    """q with its zeros rounded to integers and the codes re-derived against them."""
    zero = q.zero.round()
    return IntWeights(quantize_affine(w, q.scale, zero, q.bits, q.group_size), q.scale, zero, q.bits, q.group_size)


VARIANTS = {
    "package (BaseQuantizeConfig defaults)": lambda w, b, g: package(w, b, g),
    "package, fp16 qparams": lambda w, b, g: package(w, b, g, fp16=True),
    "package, round_zero=False": lambda w, b, g: package(w, b, g, round_zero=False),
    "package, round_zero=True": lambda w, b, g: package(w, b, g, round_zero=True),
    "lowbit": lambda w, b, g: hqq_quantize(w, b, g),
    "lowbit, round_zero start": lambda w, b, g: hqq_quantize(w, b, g, round_zero=True),
    "lowbit, round_zero start, final zeros rounded": lambda w, b, g: integer_zeros(hqq_quantize(w, b, g, round_zero=True), w),
    "rtn, float zero": lambda w, b, g: rtn_quantize(w, b, g, symmetric=False),
    "rtn, integer zero": lambda w, b, g: rtn_quantize(w, b, g, symmetric=False, integer_zero=True),
}


class GramObserver:
    """Running H = 2/n X^T X of a layer's inputs (core.hessian) and their sum over tokens."""

    def __init__(self):
        self.H, self.n, self.sum = None, 0, 0.0

    def update(self, x: torch.Tensor) -> None:
        self.H, self.n = accumulate_hessian(x, self.H, self.n)
        self.sum = self.sum + x.reshape(-1, x.shape[-1]).float().sum(dim=0)  # (in,)


def layer_errors(w: torch.Tensor, q: IntWeights, stats: GramObserver) -> tuple[float, ...]:
    """Relative weight error; relative output error under H; relative error of the output for the mean
    input (the part of the output error shared by every token); relative error of the per-group means of
    the error (the part of W - W_hat that is a constant offset per group); mean distance of the zeros to
    an integer."""
    dw, H, mean_x = w - q.dequantize(), stats.H, stats.sum / stats.n  # (out, in), (in, in), (in,)
    out_err = float(((dw @ H) * dw).sum() / ((w @ H) * w).sum()) ** 0.5
    mean_out_err = float((dw @ mean_x).norm() / (w @ mean_x).norm())
    group_means = dw.view(w.shape[0], -1, q.group_size).mean(dim=2)  # (out, in // group): the layers here divide
    bias_err = float(group_means.norm() * q.group_size**0.5 / w.norm())
    zero_frac = float((q.zero.float() - q.zero.float().round()).abs().mean()) if q.zero is not None else 0.0
    return float(dw.norm() / w.norm()), out_err, mean_out_err, bias_err, zero_frac


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--windows", type=int, default=40, help="0: error metrics only, no perplexity")
    parser.add_argument("--only", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", default="", help="regex: only these target layers (with --windows 0)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference, tokenizer, windows = demo_and_windows()
    targets = find_targets(reference, arch_spec(reference.config.model_type))
    calib = calibration_windows(tokenizer, "wikitext2", 4, 512, seed=0)  # (4, 512)
    grams = observe_inputs(reference, targets, calib, GramObserver, batch_size=1)
    models, records = {}, {}
    for name in args.only or VARIANTS:
        models[name] = model = copy.deepcopy(reference)
        sums = torch.zeros(len(METRICS))
        chosen = {k: v for k, v in find_targets(model, arch_spec(model.config.model_type)).items() if re.search(args.layers, k)}
        for layer_name, linear in chosen.items():
            w = linear.weight.data.float()
            q = VARIANTS[name](w, args.bits, args.group_size)
            sums += torch.tensor(layer_errors(w, q, grams[layer_name]))
            linear.weight.data = q.dequantize().to(linear.weight.dtype)
        records[name] = dict(zip(METRICS, (sums / len(chosen)).tolist()))
        print(name, records[name], flush=True)
    suffix = "_weights" if args.windows == 0 else ""  # --windows 0: the error metrics alone, in their own file
    for name, quality in (evaluate_many(models, windows[: args.windows], reference) if args.windows else {}).items():
        records[name] = quality | records.get(name, {})
    command = "PYTHONPATH=src python benchmarks/hqq_ablation.py " + shlex.join(sys.argv[1:])
    title = f"hqq ablation, {args.bits}-bit g{args.group_size}, first {args.windows} windows"
    merge_results(f"hqq_ablation_{args.bits}bit_g{args.group_size}{suffix}", records, COLUMNS, title, command.strip())


if __name__ == "__main__":
    main()
