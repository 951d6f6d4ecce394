"""Interop on the demo model (SmolLM2-135M-Instruct): export round trips, GGUF Q4_1 import, imported checkpoints.

Parts (--part, default all):
- export: the demo quantized by lowbit (rtn 4-bit group 32 integer zeros, symmetric for compressed-tensors,
  whose asymmetric folders transformers 5.24 cannot load; nf4 for bitsandbytes), exported to every format,
  loaded by transformers (GPTQ: optimum + GPTQModel kernels; AWQ: GPTQModel's AWQ kernels; compressed-
  tensors; bitsandbytes with its fp32 CPU path) and compared with lowbit (reference kernel): max |logit
  difference| over the first window, and perplexity of both on the windows.
- gguf: --import-gguf of the demo file (Q4_1 linears, Q8_0 embedding) against transformers' own GGUF loader
  (every tensor dequantized to fp32, the `demo` model): largest |weight difference| over the imported layers
  and perplexity / KL / top-1 with lowbit's reference kernel (fp32: KL should be 0) and its automatic kernels.
- import: stories260k quantized by llm-compressor (GPTQ W4A16) and by GPTQModel, each evaluated by its own
  tool (transformers for llm-compressor, GPTQModel's loader for GPTQModel) and by lowbit after import, on the first windows of wikitext2 (512 tokens).

Protocol: wikitext2-test, 512-token windows, the first --windows (40). Results in
benchmarks/results/interop.{json,md}.

    nice -n 19 env PYTHONPATH=src python benchmarks/interop.py [--part export|gguf|import] [--windows 40]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from demo_protocol import bits, demo_and_windows, evaluate_many, merge_results
from lowbit.api import quantize, save
from lowbit.eval.quality import evaluate
from lowbit.io.export import export
from lowbit.io.gguf_import import import_gguf
from lowbit.io.sources import load_model
from lowbit.methods import make_config
from lowbit.modules import IntLinear, IntOffsetLinear, set_kernel_preference
from lowbit.modules.plan import kernel_summary

EXPORTS = {  # format -> lowbit method options
    "gptq": ("rtn", {"bits": 4, "group_size": 32, "integer_zero": True}),
    "awq": ("rtn", {"bits": 4, "group_size": 32, "integer_zero": True}),
    "compressed-tensors": ("rtn", {"bits": 4, "group_size": 32, "symmetric": True}),
    "bnb-nf4": ("nf4", {}),
}


def ppl(model, windows) -> float:
    return math.exp(sum(evaluate(model, windows[i : i + 1]).nll for i in range(windows.shape[0])) / windows.shape[0])


def hf_model(folder: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), device_map="cpu").eval()
    for m in model.modules():  # bitsandbytes: the fp32 path (its AVX512-BF16 path computes in bf16)
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    return model


@torch.no_grad()
def export_part(reference, tokenizer, windows, work: Path) -> dict:
    records = {}
    for fmt, (method, options) in EXPORTS.items():
        model = quantize(copy.deepcopy(reference), make_config(method, **options))
        folder = save(model, work / f"lowbit-{fmt}", tokenizer)
        set_kernel_preference(model, "reference")
        start = time.perf_counter()
        out = export(folder, fmt, work / fmt)
        export_s = time.perf_counter() - start
        theirs = hf_model(out)
        diff = (theirs(windows[:1]).logits.float() - model(windows[:1]).logits.float()).abs().max().item()
        records[f"export {fmt} ({method} {options})"] = {
            "max_abs_logit_diff": diff, "ppl_lowbit": ppl(model, windows), "ppl_loader": ppl(theirs, windows),
            "export_s": round(export_s, 1), "loader": type(theirs.model.layers[0].mlp.down_proj).__name__,
        }
        print(fmt, records[f"export {fmt} ({method} {options})"], flush=True)
        del theirs, model
    return records


def weight_check(imported, reference) -> dict:
    """Layers compared and the largest |imported - transformers| over their weights."""
    floats = dict(reference.named_parameters())
    worst, layers = 0.0, 0
    for name, m in imported.named_modules():
        if isinstance(m, (IntLinear, IntOffsetLinear)):  # QuantizedEmbedding is an IntLinear too
            w = m.dequantize() if isinstance(m, IntOffsetLinear) else m.int_weights().dequantize()
            key = f"{name}.weight" if f"{name}.weight" in floats else "model.embed_tokens.weight"  # tied head
            worst = max(worst, (w - floats[key]).abs().max().item())
            layers += 1
    return {"layers_compared": layers, "max_abs_weight_diff": worst}


def gguf_part(reference, windows) -> dict:
    start = time.perf_counter()
    imported = import_gguf("demo").model
    import_s = time.perf_counter() - start
    check = weight_check(imported, reference)
    print(check, flush=True)
    exact = copy.deepcopy(imported)
    set_kernel_preference(exact, "reference")
    models = {"gguf import, reference kernel": exact, "gguf import, auto kernels": imported}
    results = evaluate_many(models, windows, reference)
    records = {"transformers GGUF (fp32)": results["fp32"] | {"bits_per_param": 32.0}}
    for name, model in models.items():
        kernels = kernel_summary(model, rows=windows.shape[1])
        records[name] = results[name] | bits(model) | check | {"import_s": round(import_s, 1), "kernels": str(kernels)}
    records["gguf import, auto kernels"]["detail"] = imported.lowbit_config.detail
    return records


@torch.no_grad()
def import_part(windows_n: int, work: Path) -> dict:
    """Checkpoints made by llm-compressor and GPTQModel (stories260k), evaluated by their tool and by lowbit."""
    from interop_makers import MAKERS  # each maker returns the folder or raises with its reason

    from lowbit.assets import assets_dir
    from lowbit.calib.data import consecutive_windows, evaluation_tokens

    stories = assets_dir() / "models" / "stories260k"
    tokenizer = load_model(str(stories)).tokenizer
    windows = consecutive_windows(evaluation_tokens(tokenizer), 512, windows_n)
    records = {}
    for name, (maker, their_loader) in MAKERS.items():
        try:
            folder = maker(stories, work / name)
            theirs = their_loader(folder)
        except Exception as err:  # a tool that cannot run here: record why, never a number
            records[f"import {name}"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
            continue
        ours = load_model(str(folder)).model
        records[f"import {name}"] = {"ppl_their_tool": ppl(theirs, windows), "ppl_lowbit": ppl(ours, windows),
                                     "detail": ours.lowbit_config.detail}
        print(name, records[f"import {name}"], flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "export", "gguf", "import"), default="all")
    parser.add_argument("--windows", type=int, default=40)
    args = parser.parse_args()
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("all", "import"):
            records |= import_part(args.windows, Path(tmp))
        if args.part != "import":
            reference, tokenizer, windows = demo_and_windows()
            windows = windows[: args.windows]
            if args.part in ("all", "export"):
                records |= export_part(reference, tokenizer, windows, Path(tmp))
            if args.part in ("all", "gguf"):
                records |= gguf_part(reference, windows)
    columns = ["ppl", "kl", "top1", "max_abs_weight_diff", "max_abs_logit_diff", "ppl_lowbit", "ppl_loader",
               "ppl_their_tool", "bits_per_param", "kernels", "error"]
    command = "nice -n 19 env PYTHONPATH=src python benchmarks/interop.py " + " ".join(sys.argv[1:])
    merge_results("interop", records, columns, "Interop: export round trips, GGUF import, imported checkpoints", command)
    print(records)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
