"""The command line: flags -> config -> library call. Errors are one line and a non-zero exit code."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from lowbit.errors import LowbitError
from lowbit.methods import method_names

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
METHOD_NAMES = ", ".join(method_names())
METHOD_HELP = "quantization method: " + METHOD_NAMES + ", or auto (mixed precision under --memory-budget)"


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is read as JSON when it parses (true, 3, 0.5), else as a string."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LowbitError(f"option {pair!r} is not KEY=VALUE (e.g. -o observer=minmax)")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def method_config(
    method: str, bits: int | None, group_size: int | None, option: list[str], include: str | None, exclude: str | None
):
    """The method config the shared flags and -o KEY=VALUE options describe."""
    from lowbit.methods import make_config

    given = {"bits": bits, "group_size": group_size, "include": include, "exclude": exclude}
    return make_config(method, **{k: v for k, v in given.items() if v is not None}, **parse_options(option))


@app.command()
def quantize(
    model: str = typer.Argument(..., help="Hugging Face folder, .gguf file, hub id, or 'demo'"),
    method: str = typer.Option(..., "--method", "-m", help=METHOD_HELP),
    out: Path = typer.Option(..., "--out", help="output folder (written atomically)"),
    bits: Optional[int] = typer.Option(None, help="bit width (method default if omitted)"),
    group_size: Optional[int] = typer.Option(None, help="inputs per scale group; -1 = per channel"),
    option: list[str] = typer.Option([], "--option", "-o", help="method option KEY=VALUE, repeatable"),
    include: Optional[str] = typer.Option(None, help="regex of extra linears to quantize, e.g. lm_head"),
    exclude: Optional[str] = typer.Option(None, help="regex of linears to keep in full precision"),
    calib: Optional[str] = typer.Option(
        None, help="calibration data: wikitext2, ptb, a text file, a .jsonl file (text field) or a saved datasets folder"
    ),
    nsamples: int = typer.Option(128, help="calibration windows"),
    calib_seqlen: int = typer.Option(512, help="tokens per calibration window"),
    seed: int = typer.Option(0, help="seed for calibration sampling"),
    device: Optional[str] = typer.Option(None, help="where calibration runs each block, e.g. cuda (default: cpu)"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
    memory_budget: Optional[str] = typer.Option(None, help="--method auto: whole-model weight bytes, e.g. 160MB, 6GiB"),
    base_method: str = typer.Option("hqq", help="--method auto: the method each layer is quantized with"),
    sensitivity_windows: int = typer.Option(4, help="--method auto: calibration windows for the sensitivity pass"),
    sensitivity_seqlen: int = typer.Option(256, help="--method auto: tokens per sensitivity window"),
) -> None:
    """Quantize MODEL with a method and save it to --out (method options: -o KEY=VALUE, e.g. -o desc_act=true).

    --method auto chooses a bit width (2, 3, 4 or 8) per layer of --base-method within --memory-budget,
    from each layer's measured sensitivity (lowbit.recommend.auto)."""
    from lowbit.api import quantize as quantize_model
    from lowbit.api import save
    from lowbit.calib.data import calibration_windows
    from lowbit.calib.resume import work_folder
    from lowbit.io.atomic import check_target, output_lock
    from lowbit.io.sources import load_model
    from lowbit.preflight import check_fits, estimate

    auto = method == "auto"
    if auto != (memory_budget is not None) or (auto and bits is not None):
        raise LowbitError("--method auto needs --memory-budget (and picks the bits itself); other methods take --bits")
    config = method_config(base_method if auto else method, bits, group_size, option, include, exclude)
    if auto:
        from lowbit.recommend.auto import MIXED_BITS, check_base
        from lowbit.recommend.units import parse_size

        check_base(config, MIXED_BITS)
        budget_bytes = parse_size(memory_budget)
    check_target(out, overwrite)  # fail before the slow part
    with output_lock(out):  # held for the whole run: the work folder and the output are this process's
        loaded = load_model(model)
        check_fits(estimate(loaded.model, config, nsamples if calib else 0, calib_seqlen), out)
        if auto:
            config = _mixed_config(loaded, config, budget_bytes, calib, sensitivity_windows, sensitivity_seqlen, seed)
        windows = None
        if calib is not None:
            windows = calibration_windows(loaded.tokenizer, calib, nsamples, calib_seqlen, seed)
        work = work_folder(out) if config.calibrates_blocks else None
        if work is not None and work.exists():
            typer.echo(f"resuming from the finished blocks in {work}")
        start = time.perf_counter()
        quantize_model(loaded.model, config, windows, progress=True, device=device, work_dir=work)
        seconds = time.perf_counter() - start
        save(loaded.model, out, loaded.tokenizer, source=loaded.source, overwrite=overwrite)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    typer.echo(f"quantized {loaded.source} with {config.name} in {seconds:.1f} s -> {out}")


def _mixed_config(loaded, base, budget_bytes: int, calib: Optional[str], windows: int, seqlen: int, seed: int):
    """The per-layer widths for --method auto: sensitivity on calibration text, then the knapsack."""
    from lowbit.calib.data import calibration_windows
    from lowbit.recommend.auto import auto_config

    text = calibration_windows(loaded.tokenizer, calib or "wikitext2", windows, seqlen, seed)
    result = auto_config(loaded.model, text, base, budget_bytes, progress=True)
    typer.echo(result.describe())
    return result.config


DTYPES = ("float32", "bfloat16", "float16")


@app.command("load")
def load_quantized_on_the_fly(
    model: str = typer.Argument(..., help="Hugging Face safetensors folder, .gguf file, or 'demo'"),
    quantize_with: Optional[str] = typer.Option(
        None, "--quantize", "-q", help="a calibration-free method: " + METHOD_NAMES
    ),
    bits: Optional[int] = typer.Option(None, help="bit width (method default if omitted)"),
    group_size: Optional[int] = typer.Option(None, help="inputs per scale group; -1 = per channel"),
    option: list[str] = typer.Option([], "--option", "-o", help="method option KEY=VALUE, repeatable"),
    include: Optional[str] = typer.Option(None, help="regex of extra linears to quantize, e.g. lm_head"),
    exclude: Optional[str] = typer.Option(None, help="regex of linears to keep in full precision"),
    dtype: str = typer.Option("float32", help="dtype of the tensors left unquantized: " + ", ".join(DTYPES)),
    out: Optional[Path] = typer.Option(None, help="save the quantized model to this folder"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
    import_gguf: bool = typer.Option(
        False, "--import-gguf", help="keep a .gguf file's Q8_0/Q4_0/Q5_0/Q4_1/Q5_1 weights as they are (no re-quantization)"
    ),
) -> None:
    """Quantize MODEL while reading it, tensor by tensor, never holding it in full precision
    (or, with --import-gguf, keep a GGUF file's own quantized weights)."""
    import resource

    import torch

    from lowbit.api import load, save
    from lowbit.core.checks import check_choice
    from lowbit.eval.memory import memory_report
    from lowbit.io.atomic import check_target

    if quantize_with is None and not import_gguf:
        raise LowbitError("pass --quantize METHOD (quantize while reading) or --import-gguf (keep a GGUF's weights)")
    config = None if quantize_with is None else method_config(quantize_with, bits, group_size, option, include, exclude)
    check_choice(dtype, DTYPES, "dtype")
    if out is not None:
        check_target(out, overwrite)
    start = time.perf_counter()
    loaded = load(model, getattr(torch, dtype), quantize=config, progress=True, import_gguf=import_gguf)
    config = loaded.model.lowbit_config
    seconds = time.perf_counter() - start
    report = memory_report(loaded.model)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    typer.echo(f"loaded {loaded.source} quantized with {config.name} in {seconds:.1f} s: "
               f"{report.quantized_bytes:,} bytes for {report.quantized_params:,} weights "
               f"({report.bits_per_param:.3f} bits each), peak RSS {peak_mb:.0f} MB")
    if out is not None:
        save(loaded.model, out, loaded.tokenizer, source=loaded.source, overwrite=overwrite)
        typer.echo(f"saved -> {out}")


@app.command("eval")
def evaluate(
    model: str = typer.Argument(..., help="a lowbit output folder or any MODEL quantize accepts"),
    dataset: str = typer.Option("wikitext2", help="wikitext2, ptb, or a text file"),
    seqlen: Optional[int] = typer.Option(None, help="tokens per window (default: min(2048, context))"),
    windows: Optional[int] = typer.Option(None, help="evaluate only the first K windows"),
    batch_size: int = typer.Option(1, help="windows per forward pass"),
    reference: Optional[str] = typer.Option(None, help="unquantized model for KL and top-1 agreement"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    kernel: str = typer.Option("auto", help="kernel preference: auto, triton, reference or a kernel name"),
    import_gguf: bool = typer.Option(
        False, "--import-gguf", help="keep a .gguf file's Q8_0/Q4_0/Q5_0/Q4_1/Q5_1 weights as they are (no re-quantization)"
    ),
) -> None:
    """Perplexity (and KL / top-1 vs a reference) with lowbit's evaluation protocol, plus memory."""
    from lowbit.eval.run import run_eval

    result = run_eval(
        model, dataset, seqlen, windows, batch_size, reference, progress=not as_json, kernel=kernel, import_gguf=import_gguf
    )
    if as_json:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:>22}: {value:.6g}" if isinstance(value, float) else f"{key:>22}: {value}")


def _split(value: Optional[str], cast=str) -> Optional[list]:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise LowbitError(f"cannot read {value!r} as a comma-separated list of {cast.__name__}")


@app.command()
def compare(
    model: str = typer.Argument(..., help="Hugging Face folder, .gguf file, hub id, or 'demo'"),
    out: Path = typer.Option(..., "--out", help="folder for results.jsonl and the reports"),
    preset: str = typer.Option("quick", help="small, quick, standard or full"),
    methods: Optional[str] = typer.Option(None, help="comma-separated methods (default: the preset's)"),
    bits: Optional[str] = typer.Option(None, help="comma-separated bit widths, e.g. 2,3,4,8"),
    group_size: Optional[str] = typer.Option(None, help="comma-separated group sizes"),
    eval_sets: Optional[str] = typer.Option(None, "--eval", help="comma-separated: wikitext2, ptb or text files"),
    calib: str = typer.Option("wikitext2", help="calibration text for methods that need it"),
    seed: int = typer.Option(0, help="calibration seed"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    save_models: bool = typer.Option(False, help="also save every quantized model under OUT/models"),
) -> None:
    """Run methods x settings side by side with one protocol and write report.md/.html, results.csv, plots."""
    from lowbit.compare.presets import PRESETS
    from lowbit.compare.report import write_reports
    from lowbit.compare.runner import run_compare
    from lowbit.core.checks import check_choice

    check_choice(preset, tuple(PRESETS), "preset")
    run = run_compare(
        model, out, preset, _split(methods), _split(bits, int), _split(group_size, int), _split(eval_sets),
        calib, seed, device, save_models,
    )
    paths = write_reports(run.records, run.skipped, out)
    failed = sum(r["status"] != "ok" for r in run.records)
    typer.echo(f"{len(run.records)} settings ({run.reused} reused, {failed} failed); reports: "
               + ", ".join(str(p) for p in paths[:3]))


@app.command("generate")
def generate_text(
    model: str = typer.Argument(..., help="a lowbit output folder or any MODEL quantize accepts"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="text to continue, or the user message with --chat"),
    max_new_tokens: int = typer.Option(64, help="tokens to generate at most"),
    chat: Optional[bool] = typer.Option(
        None, "--chat/--no-chat", help="wrap the prompt in the chat template (default: when the tokenizer has one)"
    ),
    temperature: float = typer.Option(0.0, help="sampling temperature; 0 = greedy"),
    seed: int = typer.Option(0, help="seed for sampling"),
    device: str = typer.Option("cpu", help="where to run, e.g. cpu or cuda"),
    import_gguf: bool = typer.Option(
        False, "--import-gguf", help="keep a .gguf file's Q8_0/Q4_0/Q5_0/Q4_1/Q5_1 weights as they are (no re-quantization)"
    ),
) -> None:
    """Stream text generated by MODEL after --prompt (the chat template is used where the model has one)."""
    from lowbit.generate import generate
    from lowbit.io.sources import load_model

    loaded = load_model(model, import_gguf=import_gguf)
    loaded.model.to(_device(device))
    generate(loaded.model, loaded.tokenizer, prompt, max_new_tokens, chat, temperature, seed, stream=True)


def _device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise LowbitError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LowbitError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
    return device


@app.command("export")
def export_model(
    folder: Path = typer.Argument(..., help="a lowbit output folder"),
    fmt: str = typer.Option(..., "--format", "-f", help="gptq, awq, compressed-tensors or bnb-nf4"),
    out: Path = typer.Option(..., "--out", help="output folder (written atomically)"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
) -> None:
    """Write FOLDER in a layout other engines load (vLLM, TGI, transformers); refuses what it cannot hold exactly."""
    from lowbit.io.export import export

    export(folder, fmt, out, overwrite)
    typer.echo(f"exported {folder} as {fmt} -> {out}")


@app.command()
def recommend(
    model: str = typer.Argument(..., help="Hugging Face folder, .gguf file, hub id, or 'demo'"),
    memory_budget: Optional[str] = typer.Option(None, help="whole-model weight bytes, e.g. 6GB, 512MiB"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    priority: str = typer.Option("balanced", help="balanced, memory, speed, quality or simplicity"),
    calibration_data: str = typer.Option("yes", help="yes or no: is calibration text available"),
    allow_training: bool = typer.Option(False, help="allow methods that need a training run (qat)"),
    max_quantization_time: Optional[str] = typer.Option(None, help="longest acceptable quantization, e.g. 30m, 2h"),
    results: Optional[str] = typer.Option(None, help="a `lowbit compare --out` folder: measurements replace priors"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    verify: int = typer.Option(0, help="quantize and measure the top K into --results, then rank from them"),
    verify_preset: str = typer.Option("small", help="compare preset --verify measures with: small, quick, standard or full"),
    mixed: Optional[str] = typer.Option(None, help="also propose mixed precision over this base method (rtn, hqq, gptq)"),
    dtype: str = typer.Option("float32", help="dtype of the unquantized tensors: " + ", ".join(DTYPES)),
) -> None:
    """Rank the methods and settings for MODEL under constraints, with exact memory and the reasons."""
    import torch

    from lowbit.compare.presets import PRESETS
    from lowbit.core.checks import check_choice
    from lowbit.recommend.policy import Constraints
    from lowbit.recommend.report import as_json as to_json
    from lowbit.recommend.report import render
    from lowbit.recommend.run import run
    from lowbit.recommend.units import parse_duration, parse_size

    check_choice(calibration_data, ("yes", "no"), "--calibration-data answer")
    check_choice(dtype, DTYPES, "dtype")
    check_choice(verify_preset, tuple(PRESETS), "verify preset")
    constraints = Constraints(
        budget_bytes=parse_size(memory_budget) if memory_budget else None, device=device, priority=priority,
        calibration_data=calibration_data == "yes", allow_training=allow_training,
        max_quantize_s=parse_duration(max_quantization_time) if max_quantization_time else None,
    )
    rec = run(model, constraints, results, getattr(torch, dtype), verify, mixed, verify_preset)
    typer.echo(json.dumps(to_json(rec, model), indent=1) if as_json else render(rec, model))


@app.command()
def info(folder: Path = typer.Argument(..., help="a lowbit output folder")) -> None:
    """What a saved model holds: method, settings, source, layers and bytes."""
    from lowbit.io.checkpoint import read_metadata

    if not (folder / "lowbit.json").is_file():
        raise LowbitError(f"{folder} is not a lowbit output folder (no lowbit.json)")
    meta = read_metadata(folder)
    layers = meta.get("layers", {})
    params = sum(layer["spec"]["in_features"] * layer["spec"]["out_features"] for layer in layers.values())
    packed = sum(layer["bytes"] for layer in layers.values())
    method = {k: v for k, v in meta["method"].items() if k != "layer_bits"}
    typer.echo(f"method: {json.dumps(method)}")
    if "layer_bits" in meta["method"]:
        from lowbit.methods.base import MethodConfig

        typer.echo(f"bits per layer: {MethodConfig.from_dict(meta['method']).summary()}")
    typer.echo(f"source: {meta.get('source')}  model_type: {meta.get('model_type')}")
    typer.echo(f"lowbit {meta.get('lowbit_version')}, checkpoint format {meta['format_version']}")
    typer.echo(f"quantized layers: {len(layers)}, {params:,} weights in {packed:,} bytes "
               f"({8 * packed / max(params, 1):.3f} bits per weight)")


def main() -> None:
    """Entry point: one-line errors, `--debug` anywhere for the traceback."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    _quiet_libraries()
    try:
        app()
    except LowbitError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (MemoryError, RuntimeError) as err:
        if debug or not _is_out_of_memory(err):
            raise
        typer.echo("error: out of memory: use a smaller --batch-size or fewer --windows, or a larger machine", err=True)
        sys.exit(3)
    except KeyboardInterrupt:
        typer.echo("interrupted: no output was written", err=True)
        sys.exit(130)


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower()


def _quiet_libraries() -> None:
    import huggingface_hub.utils.logging as hub_logging
    import transformers

    hub_logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
