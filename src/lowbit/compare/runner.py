"""Run a comparison: the unquantized baseline and every setting of the matrix, one protocol, one store.

`open_session` loads the model and the protocol's windows once; `run_setting` measures one setting (a
lowbit config, or any function that quantizes the model in place, e.g. a reference library's in
benchmarks/peers.py) and records it in the folder's store, or reuses the record of an earlier run.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from torch import nn

from lowbit import __version__
from lowbit.api import quantize, save
from lowbit.calib.data import calibration_windows, consecutive_windows, evaluation_tokens
from lowbit.compare.measure import measure_speed, peak_memory
from lowbit.compare.presets import PRESETS, Matrix, Preset, build_matrix
from lowbit.compare.store import ResultsStore, record_key
from lowbit.eval.memory import memory_report
from lowbit.eval.quality import ReferenceMemo, evaluate
from lowbit.io.sources import LoadedModel, load_model
from lowbit.methods.base import MethodConfig
from lowbit.modules.plan import kernel_summary

BASELINE = {"method": "unquantized"}
REFERENCE_CACHE_BYTES = 2**30  # the unquantized model's logits on every eval window are kept when they fit
# (model, calibration windows or None) -> None, or {layer name: (bytes, params)} for layers another library holds
Quantizer = Callable[[nn.Module, "torch.Tensor | None"], "dict[str, tuple[int, int]] | None"]


@dataclass(frozen=True)
class Setting:
    label: str
    config: dict[str, Any]  # goes into the record and its key
    quantizer: Quantizer | None  # None: the unquantized baseline
    calib_samples: int = 0  # calibration windows it uses (the first ones of the session's); 0: none
    save_as: MethodConfig | None = None  # a lowbit config: --save-models saves the result


@dataclass
class CompareRun:
    records: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    reused: int = 0


@dataclass
class Session:
    base: LoadedModel
    windows: dict[str, torch.Tensor]
    calib: str
    seed: int
    preset: Preset
    device: torch.device
    protocol: dict[str, Any]
    store: ResultsStore
    console: Console
    reference: nn.Module | None = None  # the unquantized model, remembering its outputs on the eval windows
    save_models: Path | None = None
    calib_windows: torch.Tensor | None = None


def open_session(
    model: str, out: Path, preset: str = "quick", evals: list[str] | None = None, calib: str = "wikitext2",
    seed: int = 0, device: str = "cpu", save_models: bool = False, console: Console | None = None,
) -> Session:
    settings = PRESETS[preset]
    base = load_model(model)
    base.model.to(device)
    evals = evals or ["wikitext2"]
    protocol = {
        "preset": preset, "evals": evals, "seqlen": settings.seqlen, "windows": settings.eval_windows, "calib": calib,
        "nsamples": settings.nsamples, "calib_seqlen": settings.calib_seqlen, "seed": seed,
        "prompt_tokens": settings.speed_prompt, "new_tokens": settings.speed_new_tokens, "device": device,
    }
    windows = {name: _eval_windows(base, name, settings.seqlen, settings.eval_windows) for name in evals}
    n_windows = sum(w.shape[0] for w in windows.values())
    logits_bytes = 4 * n_windows * settings.seqlen * base.model.config.vocab_size
    capacity = n_windows if logits_bytes <= REFERENCE_CACHE_BYTES else 0
    return Session(
        base=base, windows=windows, calib=calib, seed=seed, preset=settings, device=torch.device(device),
        protocol=protocol, store=ResultsStore(out / "results.jsonl"), console=console or Console(stderr=True),
        reference=ReferenceMemo(base.model, capacity), save_models=out / "models" if save_models else None,
    )


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
    """Measure the baseline and the matrix (or exactly `configs`, instead of methods x bits x group sizes);
    the run's records come first, then others in the store with this protocol."""
    settings = PRESETS[preset]
    if configs is not None:
        matrix = Matrix(list(configs))
    else:
        matrix = build_matrix(methods or list(settings.methods), bits, group_sizes, settings.options)
    session = open_session(model, out, preset, evals, calib, seed, device, save_models, console)
    for label, reason in matrix.skipped:
        session.console.print(f"[yellow]skipped[/] {label}: {reason}")
    run = CompareRun(records=[], skipped=matrix.skipped)
    for setting in [baseline_setting(session), *map(lowbit_setting, matrix.configs)]:
        record, reused = run_setting(session, setting)
        run.records.append(record)
        run.reused += reused
    run.records += other_records(session, run.records)
    return run


def baseline_setting(session: Session) -> Setting:
    """The model as loaded: 'unquantized', or 'as loaded (gptq checkpoint)' for a quantized folder or GGUF."""
    config = getattr(session.base.model, "lowbit_config", None)
    if config is None:
        return Setting("unquantized", BASELINE, None)
    what = f"{config.source_format} checkpoint" if config.name == "imported" else f"lowbit {setting_label(config)}"
    return Setting(f"as loaded ({what})", BASELINE, None)


def lowbit_setting(config: MethodConfig) -> Setting:
    def quantizer(model: nn.Module, calib: torch.Tensor | None) -> None:
        quantize(model, config, calib)

    calib_samples = -1 if config.needs_calibration else 0  # -1: all of the session's windows
    return Setting(setting_label(config), config.to_dict(), quantizer, calib_samples, save_as=config)


def other_records(session: Session, own: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records in the store made with this model and protocol that are not in `own` (e.g. peers')."""
    keys = {r["key"] for r in own}
    return [
        r for r in session.store.latest()
        if r["key"] not in keys and r.get("protocol") == session.protocol and r.get("model") == session.base.source
    ]


def run_setting(session: Session, setting: Setting) -> tuple[dict[str, Any], bool]:
    """(record, reused): measure and store the setting, or return its finished record from an earlier run.

    A failing setting is recorded with its error (and retried on the next run); the comparison goes on.
    """
    key = record_key(session.base.source, setting.config, session.protocol)
    done = session.store.finished(key)
    if done:
        session.console.print(f"[dim]reused[/] {done['label']} (finished in an earlier run)")
        return done, True
    session.console.print(f"[bold]running[/] {setting.label}")
    record = {"key": key, "label": setting.label, "model": session.base.source, "config": setting.config,
              "protocol": session.protocol, "lowbit": __version__}
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        record |= _measure(session, setting)
        record["status"] = "ok"
    except Exception as err:  # one failing setting must not end the comparison: it is recorded
        record |= {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0]}
        session.console.print(f"[red]failed[/] {setting.label}: {record['error']}")
    # the whole setting: wall time, and this process's CPU time (all threads; robust to a shared machine)
    record |= {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    session.store.add(record)
    return record, False


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
    return consecutive_windows(evaluation_tokens(base.tokenizer, name), seqlen, windows)


def _measure(session: Session, setting: Setting) -> dict[str, Any]:
    model, result, foreign = session.base.model, {}, None
    if setting.quantizer is not None:
        calib = _calibration(session) if setting.calib_samples else None
        if setting.calib_samples > 0:
            calib = calib[: setting.calib_samples]  # (calib_samples, calib_seqlen)
        model = copy.deepcopy(session.base.model)
        with peak_memory(session.device) as quant_mem:
            start = time.perf_counter()
            foreign = setting.quantizer(model, calib)
            result["quantize_s"] = time.perf_counter() - start
        model.eval()  # layers a library swapped in may start in training mode
        result["quantize_peak_delta_bytes"] = quant_mem["delta_bytes"]
        result["calibration"] = {
            "needed": calib is not None,
            "data": session.calib if calib is not None else None,
            "samples": int(calib.shape[0]) if calib is not None else 0,
        }
        if session.save_models is not None and setting.save_as is not None:
            save(model, session.save_models / re.sub(r"[^\w.+-]+", "_", setting.label), session.base.tokenizer,
                 source=session.base.source, overwrite=True)
    evaluated, reference = (session.reference, None) if setting.quantizer is None else (model, session.reference)
    result["quality"] = {
        name: dataclasses.asdict(evaluate(evaluated, windows, reference)) for name, windows in session.windows.items()
    }
    memory = memory_report(model, foreign)
    with peak_memory(session.device) as run_mem:
        speed = measure_speed(model, session.preset.speed_prompt, session.preset.speed_new_tokens)
    result["speed"] = dataclasses.asdict(speed)
    result["memory"] = dataclasses.asdict(memory) | {
        "bits_per_param": memory.bits_per_param,
        "saving_vs_fp16": memory.saving_vs_fp16,
        "inference_peak_bytes": memory.weight_bytes + run_mem["delta_bytes"],
    }
    kernels = set(kernel_summary(model, rows=1, device=session.device))  # decode rows
    kernels |= {type(model.get_submodule(name)).__name__ for name in foreign or {}}
    result["kernels"] = sorted(kernels) or ["dense"]
    return result


def _calibration(session: Session) -> torch.Tensor:
    if session.calib_windows is None:
        preset = session.preset
        session.calib_windows = calibration_windows(
            session.base.tokenizer, session.calib, preset.nsamples, preset.calib_seqlen, session.seed
        )  # (nsamples, calib_seqlen)
    return session.calib_windows
