"""Run a comparison: the unquantized baseline and every setting of the matrix, one protocol, one store."""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lowbit import __version__
from lowbit.api import quantize, save
from lowbit.assets import EVAL_TEXTS, resolve_text
from lowbit.calib.data import calibration_windows, consecutive_windows, read_text, tokenize
from lowbit.compare.measure import measure_speed, peak_memory
from lowbit.compare.presets import PRESETS, Matrix, build_matrix
from lowbit.compare.store import ResultsStore, record_key
from lowbit.eval.memory import memory_report
from lowbit.eval.quality import evaluate
from lowbit.io.sources import LoadedModel, load_model
from lowbit.methods.base import MethodConfig
from lowbit.modules.plan import kernel_summary

BASELINE = {"method": "unquantized"}


@dataclass
class CompareRun:
    records: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    reused: int = 0


@dataclass
class _Context:
    base: LoadedModel
    windows: dict[str, torch.Tensor]
    calib: str
    seed: int
    preset: Any
    device: torch.device
    save_models: Path | None
    calib_windows: torch.Tensor | None = None


def run_compare(
    model: str,
    out: Path,
    preset: str = "quick",
    methods: list[str] | None = None,
    bits: list[int] | None = None,
    group_sizes: list[int] | None = None,
    evals: list[str] | None = None,
    calib: str = "wikitext2",
    seed: int = 0,
    device: str = "cpu",
    save_models: bool = False,
    console: Console | None = None,
    configs: list[MethodConfig] | None = None,
) -> CompareRun:
    """configs: run exactly these settings instead of the methods x bits x group sizes matrix."""
    console = console or Console(stderr=True)
    settings = PRESETS[preset]
    matrix = Matrix(list(configs)) if configs is not None else build_matrix(methods or list(settings.methods), bits, group_sizes)
    for label, reason in matrix.skipped:
        console.print(f"[yellow]skipped[/] {label}: {reason}")
    base = load_model(model)
    base.model.to(device)
    evals = evals or ["wikitext2"]
    ctx = _Context(
        base=base,
        windows={name: _eval_windows(base, name, settings.seqlen, settings.eval_windows) for name in evals},
        calib=calib, seed=seed, preset=settings, device=torch.device(device),
        save_models=out / "models" if save_models else None,
    )
    protocol = {
        "evals": evals, "seqlen": settings.seqlen, "windows": settings.eval_windows, "calib": calib,
        "nsamples": settings.nsamples, "calib_seqlen": settings.calib_seqlen, "seed": seed,
        "prompt_tokens": settings.speed_prompt, "new_tokens": settings.speed_new_tokens, "device": device,
    }
    store = ResultsStore(out / "results.jsonl")
    run = CompareRun(records=[], skipped=matrix.skipped)
    for config in [None, *matrix.configs]:
        config_dict = config.to_dict() if config else BASELINE
        key = record_key(base.source, config_dict, protocol)
        done = store.finished(key)
        if done:
            run.records.append(done)
            run.reused += 1
            console.print(f"[dim]reused[/] {done['label']} (finished in an earlier run)")
            continue
        label = setting_label(config)
        console.print(f"[bold]running[/] {label}")
        record = {"key": key, "label": label, "model": base.source, "config": config_dict, "protocol": protocol,
                  "lowbit": __version__}
        try:
            record |= _measure(ctx, config, label)
            record["status"] = "ok"
        except Exception as err:  # one failing setting must not end the comparison: it is recorded
            record |= {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0]}
            console.print(f"[red]failed[/] {label}: {record['error']}")
        store.add(record)
        run.records.append(record)
    return run


def setting_label(config: MethodConfig | None) -> str:
    """'unquantized', 'rtn 4-bit g64', 'nf4', 'mixed hqq g64: 2-bit x40, 4-bit x170'."""
    if config is None:
        return "unquantized"
    if hasattr(config, "summary"):
        return f"{config.name} {config.summary()}"
    parts = [config.name]
    for name in ("bits", "group_size"):
        if hasattr(config, name):
            parts.append(f"{getattr(config, name)}-bit" if name == "bits" else f"g{getattr(config, name)}")
    return " ".join(parts)


def _eval_windows(base: LoadedModel, name: str, seqlen: int, windows: int) -> torch.Tensor:
    return consecutive_windows(tokenize(base.tokenizer, read_text(resolve_text(name, EVAL_TEXTS))), seqlen, windows)


def _measure(ctx: _Context, config: MethodConfig | None, label: str) -> dict[str, Any]:
    model, result = ctx.base.model, {}
    if config is not None:
        calib = _calibration(ctx) if config.needs_calibration else None
        model = copy.deepcopy(ctx.base.model)
        with peak_memory(ctx.device) as quant_mem:
            start = time.perf_counter()
            quantize(model, config, calib)
            result["quantize_s"] = time.perf_counter() - start
        result["quantize_peak_delta_bytes"] = quant_mem["delta_bytes"]
        result["calibration"] = {
            "needed": config.needs_calibration,
            "data": ctx.calib if config.needs_calibration else None,
            "samples": int(calib.shape[0]) if calib is not None else 0,
        }
        if ctx.save_models is not None:
            save(model, ctx.save_models / re.sub(r"[^\w.+-]+", "_", label), ctx.base.tokenizer, source=ctx.base.source, overwrite=True)
    reference = None if config is None else ctx.base.model
    result["quality"] = {
        name: dataclasses.asdict(evaluate(model, windows, reference)) for name, windows in ctx.windows.items()
    }
    memory = memory_report(model)
    with peak_memory(ctx.device) as run_mem:
        speed = measure_speed(model, ctx.preset.speed_prompt, ctx.preset.speed_new_tokens)
    result["speed"] = dataclasses.asdict(speed)
    result["memory"] = dataclasses.asdict(memory) | {
        "bits_per_param": memory.bits_per_param,
        "saving_vs_fp16": memory.saving_vs_fp16,
        "inference_peak_bytes": memory.weight_bytes + run_mem["delta_bytes"],
    }
    result["kernels"] = sorted(kernel_summary(model, rows=1, device=ctx.device)) or ["dense"]  # decode rows
    if config is not None:
        del model
    return result


def _calibration(ctx: _Context) -> torch.Tensor:
    if ctx.calib_windows is None:
        preset = ctx.preset
        ctx.calib_windows = calibration_windows(ctx.base.tokenizer, ctx.calib, preset.nsamples, preset.calib_seqlen, ctx.seed)
    return ctx.calib_windows
