"""GPTQ variants on single real layers: each layer's output error, the objective GPTQ minimises.

End-to-end perplexity of a GPTQ run moves by +-1.5% with the calibration seed or the device (rounding
flips cascade through 30 blocks), so variants closer than that cannot be ranked from one run. This
measures the variants on the same layers and the same Hessians instead: for every linear of the chosen
blocks of the float model, relative output error tr(dW H dW^T) / tr(W H W^T) with H the layer's input
Hessian over the calibration windows, and RTN (integer zeros) as the baseline.

    PYTHONPATH=src python benchmarks/gptq_layers.py --blocks 0 10 20 29 --nsamples 32 \
        --out benchmarks/results/gptq_layers_demo.md
"""

from __future__ import annotations

import argparse
import time

import torch

from lowbit.calib.arch import arch_spec, find_targets
from lowbit.calib.data import calibration_windows
from lowbit.core.affine import rtn_quantize
from lowbit.core.gptq import gptq_quantize
from lowbit.core.hessian import accumulate_hessian
from lowbit.io.sources import load_model

VARIANTS = {  # name -> gptq_quantize options
    "minmax, qparams at group start (reference GPTQ)": {},
    "minmax, static groups (llm-compressor)": dict(static_groups=True),
    "mse, qparams at group start": dict(qparams="mse"),
    "mse, static groups": dict(static_groups=True, qparams="mse"),
    "minmax, act-order + static groups": dict(desc_act=True, static_groups=True),
    "mse, act-order + static groups": dict(desc_act=True, static_groups=True, qparams="mse"),
}


@torch.no_grad()
def layer_hessians(model, windows: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Input Hessian (in, in) of each named linear of the float model over the windows."""
    state = {name: (None, 0) for name in names}

    def hook_for(name):
        return lambda _m, args: state.__setitem__(name, accumulate_hessian(args[0], *state[name]))

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    for batch in windows.split(8):
        model(batch, use_cache=False)
    for handle in handles:
        handle.remove()
    return {name: H for name, (H, _) in state.items()}


def relative_error(w: torch.Tensor, q: torch.Tensor, H: torch.Tensor) -> float:
    d = (w - q).double()
    return float(torch.einsum("oi,ij,oj->", d, H.double(), d) / torch.einsum("oi,ij,oj->", w.double(), H.double(), w.double()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 10, 20, 29])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--out")
    args = parser.parse_args()
    loaded = load_model(args.model)
    model = loaded.model.eval()
    spec = arch_spec(model.config.model_type)
    names = [n for n in find_targets(model, spec) if any(n.startswith(f"{spec.blocks}.{b}.") for b in args.blocks)]
    windows = calibration_windows(loaded.tokenizer, "wikitext2", args.nsamples, 512, seed=0)
    hessians = layer_hessians(model, windows, names)
    lines = [f"model {args.model}, blocks {args.blocks} ({len(names)} linears), group {args.group_size}, "
             f"Hessians of the float model on {args.nsamples} x 512 wikitext2 calibration windows (seed 0)", "",
             "| bits | variant | mean rel. output error | vs rtn | layers better than reference GPTQ | s |",
             "|---|---|---|---|---|---|"]
    for bits in args.bits:
        weights = {n: model.get_submodule(n).weight.detach() for n in names}
        rtn = [relative_error(w, rtn_quantize(w, bits, args.group_size, False, True).dequantize(), hessians[n]) for n, w in weights.items()]
        rtn_mean = sum(rtn) / len(names)
        lines.append(f"| {bits} | rtn (integer zeros) | {rtn_mean:.5f} | 1.000 | - | - |")
        reference = None
        for variant, options in VARIANTS.items():
            start = time.perf_counter()
            errors = {}
            for n, w in weights.items():
                q = gptq_quantize(w, hessians[n], bits, args.group_size, False, **options).dequantize()
                errors[n] = relative_error(w, q, hessians[n])
            seconds = time.perf_counter() - start
            reference = reference or errors
            mean = sum(errors.values()) / len(names)
            better = sum(errors[n] < reference[n] for n in names)
            lines.append(f"| {bits} | {variant} | {mean:.5f} | {mean / rtn_mean:.3f} | {better}/{len(names)} | {seconds:.0f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
