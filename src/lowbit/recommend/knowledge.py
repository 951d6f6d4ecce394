"""What lowbit knows about each method before measuring: the priors `lowbit recommend` starts from.

One entry per method. Every number is a `Prior` that names its source. Quality priors are the expected
perplexity ratio (quantized / unquantized, WikiText-2) at the method's setting, for 7B-class Llama
models where the literature has them; small models lose several times more (on the 135M demo model
4-bit RTN g64 raised perplexity 43%, benchmarks/results/core_demo.md), which is why measurements from
`lowbit compare` replace these numbers and rescale the ones left unmeasured (recommend.policy).
Memory is never a prior: recommend.predict computes it exactly for the user's model.
Entries for methods this lowbit has not registered are kept out of every table (`registered_facts`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lowbit.methods import method_class, method_names

INT_BITS = (2, 3, 4, 8)
GROUP = 64  # the group size recommend proposes for group-wise formats (divides no CPU kernel badly)

AWQ_T4 = "AWQ paper (Lin et al., 2024) Table 4, Llama-2-7B INT{b} g128"
OMNI_T1 = "OmniQuant paper (Shao et al., 2024) Table 1, Llama-2-7B W2A16g128"
DEMO = "lowbit on the demo model (SmolLM2-135M), benchmarks/results/{f}"
CPU_COST = "lowbit on the demo model (106M quantized weights), 2 shared CPU cores, benchmarks/results/{f}"


@dataclass(frozen=True)
class Prior:
    value: float
    source: str


@dataclass(frozen=True)
class MethodFacts:
    method: str
    data: str  # "none", "calibration" or "training"
    settings: tuple[dict[str, Any], ...]  # the settings recommend considers
    ppl_ratio: dict[Any, Prior]  # by bits (None: the method's only width)
    cost_s_per_mweight: dict[str, Prior]  # device -> quantization seconds per million quantized weights
    maturity: Prior  # 0..1: how widely engines and tools load this method's checkpoints
    cuda_kernel: str  # what runs it on an sm80+ GPU with Triton (a prior: not checked on this machine)
    caveats: tuple[str, ...] = ()
    on_the_fly: bool = False  # `lowbit load --quantize` applies it while reading the checkpoint

    def quality_prior(self, bits: Any) -> Prior | None:
        return self.ppl_ratio.get(bits, self.ppl_ratio.get(None))


def _int_settings(bits: tuple[int, ...] = INT_BITS) -> tuple[dict[str, Any], ...]:
    return tuple(dict(bits=b, group_size=GROUP) for b in bits)


_8BIT = Prior(1.001, DEMO.format(f="core_demo.md") + ": rtn 8-bit, ppl 28.691 vs 28.686")
_GPU_FREE = Prior(0.01, "assumed: calibration-free rounding on a GPU, not measured here")
_GPTQ_GPU = Prior(0.08, "GPTQ paper (Frantar et al., 2023): OPT-175B in about 4 A100 hours")
_AWQ_GPU = Prior(0.25, "assumed about 3x GPTQ: a grid search of 20 block forwards per scaling pair")
_ENGINES = "GPTQ/AWQ-style int4 checkpoints load in vLLM, TGI, exllama and transformers"

FACTS: dict[str, MethodFacts] = {f.method: f for f in (
    MethodFacts(
        "rtn", "none", _int_settings(),
        {2: Prior(100.0, OMNI_T1 + ": RTN collapses (perplexity in the thousands)"),
         3: Prior(1.22, AWQ_T4.format(b=3) + ": 6.66 vs 5.47"), 4: Prior(1.05, AWQ_T4.format(b=4) + ": 5.73 vs 5.47"),
         8: _8BIT},
        {"cpu": Prior(0.12, CPU_COST.format(f="core_demo.md") + ": 13 s"), "cuda": _GPU_FREE},
        Prior(0.6, "exports as GPTQ-format int groups with integer zeros (-o integer_zero=true)"), "triton int-group",
        ("2- and 3-bit round-to-nearest lose badly; it is the baseline the others must beat",), on_the_fly=True),
    MethodFacts(
        "gptq", "calibration", _int_settings(),
        {2: Prior(6.7, OMNI_T1 + ": GPTQ 36.8 vs 5.47"), 3: Prior(1.17, AWQ_T4.format(b=3) + ": GPTQ-R 6.42 vs 5.47"),
         4: Prior(1.03, AWQ_T4.format(b=4) + ": GPTQ-R 5.63 vs 5.47"), 8: _8BIT},
        {"cpu": Prior(4.4, CPU_COST.format(f="calib_methods_demo.jsonl") + ": 464 s at 4 bits, 128 windows of 512"),
         "cuda": _GPTQ_GPU},
        Prior(1.0, _ENGINES), "triton int-group",
        ("needs calibration text; quality depends on it", "2-bit is far from usable without extra tricks")),
    MethodFacts(
        "awq", "calibration", _int_settings((2, 3, 4)),
        {2: Prior(100.0, OMNI_T1 + ": AWQ collapses"), 3: Prior(1.14, AWQ_T4.format(b=3) + ": 6.24 vs 5.47"),
         4: Prior(1.02, AWQ_T4.format(b=4) + ": 5.60 vs 5.47")},
        {"cpu": Prior(4.8, CPU_COST.format(f="calib_methods_awq8.jsonl") + ": 512 s at 4 bits with only 8 windows"),
         "cuda": _AWQ_GPU},
        Prior(1.0, _ENGINES), "triton int-group",
        ("needs calibration text; its search is slow on CPU", "searched scales are saved beside the checkpoint")),
    MethodFacts(
        "awq+gptq", "calibration", _int_settings((2, 3, 4)),
        {2: Prior(5.0, "AWQ paper: AWQ+GPTQ beats GPTQ alone at INT2 (OPT); assumed below GPTQ's 6.7"),
         3: Prior(1.13, "assumed a little better than AWQ at 3 bits (AWQ paper: the two compose)"),
         4: Prior(1.02, "assumed equal to AWQ at 4 bits")},
        {"cpu": Prior(9.2, "assumed AWQ + GPTQ"), "cuda": Prior(0.33, "assumed AWQ + GPTQ")},
        Prior(0.6, "llm-compressor recipes combine them; the checkpoints are plain int groups"), "triton int-group",
        ("needs calibration text; the slowest calibrated method here",)),
    MethodFacts(
        "hqq", "none", _int_settings(),
        {2: Prior(20.0, "HQQ blog (Badri & Shaji, 2023) uses groups of 16-32 at 2 bits; g64 assumed to collapse"),
         3: Prior(1.17, "HQQ blog: close to calibrated methods at 3-4 bits; assumed equal to GPTQ"),
         4: Prior(1.04, DEMO.format(f="calibration_free.md") + ": hqq 35.59 vs rtn (float zeros) 41.13 ppl; assumed between GPTQ and RTN"),
         8: _8BIT},
        {"cpu": Prior(0.19, CPU_COST.format(f="calibration_free.md") + ": 20 s at 4 bits"), "cuda": _GPU_FREE},
        Prior(0.6, "hqq library and transformers' HqqConfig"), "triton int-group", on_the_fly=True),
    MethodFacts(
        "nf4", "none", ({},),
        {None: Prior(1.045, DEMO.format(f="calibration_free.md") + ": nf4 36.85 vs hqq 4-bit 35.59 ppl; QLoRA paper: NF4 > FP4")},
        {"cpu": Prior(0.045, CPU_COST.format(f="calibration_free.md") + ": 4.8 s"), "cuda": _GPU_FREE},
        Prior(1.0, "bitsandbytes load_in_4bit (QLoRA), loaded by transformers everywhere"), "reference",
        ("lowbit runs this format through its reference kernel only: slow decode",), on_the_fly=True),
    MethodFacts(
        "fp4", "none", ({},),
        {None: Prior(1.07, DEMO.format(f="calibration_free.md") + ": fp4 42.79 vs nf4 36.85 ppl")},
        {"cpu": Prior(0.034, CPU_COST.format(f="calibration_free.md") + ": 3.6 s"), "cuda": _GPU_FREE},
        Prior(0.6, "bitsandbytes fp4: supported, rarely chosen over nf4"), "reference",
        ("worse than nf4 at the same size", "reference kernel only: slow decode"), on_the_fly=True),
    MethodFacts(
        "int8", "none", ({},),
        {None: Prior(1.005, "LLM.int8 paper (Dettmers et al., 2022): no degradation to 175B; demo: 29.11 vs 28.69")},
        {"cpu": Prior(0.012, CPU_COST.format(f="calibration_free.md") + ": 1.2 s"), "cuda": _GPU_FREE},
        Prior(1.0, "bitsandbytes load_in_8bit, loaded by transformers everywhere"), "reference",
        ("the outlier split runs on every call: slower than eetq",), on_the_fly=True),
    MethodFacts(
        "eetq", "none", ({},),
        {None: Prior(1.001, DEMO.format(f="calibration_free.md") + ": 28.69 vs 28.69 (per-channel int8 weights)")},
        {"cpu": Prior(0.0094, CPU_COST.format(f="calibration_free.md") + ": 1.0 s"), "cuda": _GPU_FREE},
        Prior(0.3, "EETQ (a TGI backend)"), "triton int8", on_the_fly=True),
    MethodFacts(
        "ptq", "calibration", ({},),
        {None: Prior(2.0, "static per-tensor W8A8 breaks on activation outliers (LLM.int8, SmoothQuant papers); "
                          "demo: ppl 164 vs 28.7 (core_demo.md)")},
        {"cpu": Prior(12.0, CPU_COST.format(f="core_demo.md") + ": 1267 s (percentile observer)"),
         "cuda": Prior(0.05, "assumed: one calibration pass")},
        Prior(0.6, "W8A8 is loaded by vLLM/TensorRT, usually with smoothing that lowbit does not do"), "triton w8a8",
        ("activation outliers can ruin quality without smoothing",)),
    MethodFacts(
        "aqlm", "calibration", ({},),
        {None: Prior(1.30, "AQLM paper (Egiazarian et al., 2024): Llama-2-7B 1x16 at ~2 bits, 6.64 vs 5.12 (ctx 4096)")},
        {"cpu": Prior(500.0, "assumed: codebook learning is hours on a GPU for 7B (AQLM paper)"),
         "cuda": Prior(10.0, "AQLM paper: about a day on one A100 for Llama-2-7B")},
        Prior(0.3, "AQLM checkpoints load in transformers and vLLM with the aqlm package"), "reference",
        ("quantizing takes hours to days",)),
    MethodFacts(
        "qat", "training", _int_settings((2, 3, 4)),
        {2: Prior(1.6, "assumed: training recovers much of 2-bit's loss (EfficientQAT, Chen et al., 2024)"),
         3: Prior(1.08, "assumed: between AWQ and the float model"), 4: Prior(1.015, "assumed: close to the float model")},
        {"cpu": Prior(200.0, "assumed: a training run"), "cuda": Prior(2.0, "assumed: a short training run")},
        Prior(0.6, "plain int-group checkpoints"), "triton int-group",
        ("needs training data and time",)),
    MethodFacts(
        "mixed", "none", (),  # proposed only when recommend is asked for mixed precision (--mixed BASE)
        {}, {"cpu": Prior(0.2, "the base method's cost plus a sensitivity pass"), "cuda": _GPU_FREE},
        Prior(0.6, "each layer is a plain int group of its own width"), "triton int-group",
        ("made by `lowbit quantize --method auto`; the bit widths come from a sensitivity pass on text",)),
)}

# Decode speed vs the unquantized model on the same device, by (device, kernel) or (device, kernel, bits).
KERNEL_SPEED: dict[tuple, Prior] = {
    ("cpu", "int4_cpu"): Prior(1.71, "benchmarks/results/cpu_decode_1thread.md: rtn 4-bit g64 vs fp32, demo model"),
    ("cpu", "int4x2_cpu"): Prior(1.30, "benchmarks/results/cpu_decode_1thread.md: rtn 8-bit g64 vs fp32"),
    ("cpu", "torch_int_mm"): Prior(1.46, "benchmarks/results/cpu_decode_1thread.md: ptq W8A8 vs fp32"),
    ("cpu", "int8_cpu"): Prior(1.5, "assumed like the other CPU int8 path (torch_int_mm, 1.46x)"),
    ("cpu", "int8_cpp"): Prior(1.6, "assumed close to eetq's 1.65x on the same int8 kernel (docs/issue11.md): the C++ op "
                                   "takes LLM.int8's activation quantization off the eager path (docs/int8cpu11.md)"),
    ("cpu", "reference"): Prior(0.5, "assumed: the reference path dequantizes every weight on every call"),
    ("cpu", "dense"): Prior(1.0, "the unquantized model"),
    ("cuda", "triton int-group", 4): Prior(1.4, "docs/issue6.md: int4 g128 at 1 row, 1.15-1.95x bf16 (H100)"),
    ("cuda", "triton int-group", 3): Prior(0.95, "docs/issue6.md: int3 at 1 row, 0.79-1.12x bf16 (H100)"),
    ("cuda", "triton int-group", 2): Prior(1.3, "docs/issue6.md: int2 at 1 row, 1.13-1.53x bf16 (H100)"),
    ("cuda", "triton int-group"): Prior(1.3, "docs/issue6.md: int8 weight-only at 1 row, 0.93-1.82x bf16 (H100)"),
    ("cuda", "triton int8"): Prior(1.3, "docs/issue6.md: int8 weight-only at 1 row, 0.93-1.82x bf16 (H100)"),
    ("cuda", "triton w8a8"): Prior(1.0, "docs/issue6.md: W8A8 Triton at <= 16 rows, 0.34-1.86x bf16 (H100)"),
    ("cuda", "reference"): Prior(0.3, "assumed: dequantize + matmul on every call"),
}


def speed_prior(device: str, kernel: str, bits: int | None = None) -> Prior:
    """The decode-speed prior of a kernel; an unknown kernel is assumed as slow as the reference path."""
    return KERNEL_SPEED.get((device, kernel, bits)) or KERNEL_SPEED.get((device, kernel)) or KERNEL_SPEED[(device, "reference")]


def registered_facts() -> dict[str, MethodFacts]:
    """Entries for the methods this lowbit registers, in registration order (others are left out)."""
    return {name: FACTS[name] for name in method_names() if name in FACTS}


def missing_facts() -> list[str]:
    """Registered methods without an entry here: recommend lists them as excluded, with this reason."""
    return [name for name in method_names() if name not in FACTS]


def candidate_settings(facts: MethodFacts) -> list[dict[str, Any]]:
    """The entry's settings, keeping only options the registered config class takes."""
    known = {f.name for f in dataclasses.fields(method_class(facts.method))}
    return [s for s in facts.settings if set(s) <= known]

