"""`lowbit eval`: load, evaluate with the protocol, account memory, return one flat record."""

from __future__ import annotations

from typing import Any

from lowbit.calib.data import consecutive_windows, evaluation_tokens
from lowbit.eval.memory import memory_report
from lowbit.eval.quality import evaluate
from lowbit.io.sources import load_model
from lowbit.kernels.select import check_preference
from lowbit.modules.base import set_kernel_preference
from lowbit.modules.plan import kernel_summary

DEFAULT_SEQLEN = 2048


def run_eval(
    model: str,
    dataset: str = "wikitext2",
    seqlen: int | None = None,
    windows: int | None = None,
    batch_size: int = 1,
    reference: str | None = None,
    progress: bool = False,
    kernel: str = "auto",
    import_gguf: bool = False,
) -> dict[str, Any]:
    check_preference(kernel)
    loaded = load_model(model, import_gguf=import_gguf)
    set_kernel_preference(loaded.model, kernel)
    ref = load_model(reference).model if reference else None
    context = getattr(loaded.model.config, "max_position_embeddings", DEFAULT_SEQLEN)
    seqlen = seqlen or min(DEFAULT_SEQLEN, context)
    tokens = evaluation_tokens(loaded.tokenizer, dataset)
    quality = evaluate(loaded.model, consecutive_windows(tokens, seqlen, windows), ref, batch_size, progress)
    memory = memory_report(loaded.model)
    config = getattr(loaded.model, "lowbit_config", None)
    record: dict[str, Any] = {
        "model": loaded.source,
        "method": config.to_dict() if config else None,
        "dataset": dataset,
        "tokenizer": getattr(loaded.tokenizer, "name_or_path", None) or type(loaded.tokenizer).__name__,
        "seqlen": quality.seqlen,
        "windows": quality.windows,
        "tokens": quality.tokens,
        "ppl": quality.ppl,
        "nll": quality.nll,
        "weight_bytes": memory.weight_bytes,
        "fp16_bytes": memory.fp16_bytes,
        "quantized_bytes": memory.quantized_bytes,
        "kernel_cache_bytes": memory.kernel_cache_bytes,
        "quantized_fraction_of_fp16": memory.quantized_fraction_of_fp16,
        "bits_per_param": memory.bits_per_param,
        "kernel": kernel,
        "kernels": kernel_summary(loaded.model, rows=batch_size * quality.seqlen),
    }
    if ref is not None:
        record |= {"reference": reference, "kl": quality.kl, "top1": quality.top1}
    return record
