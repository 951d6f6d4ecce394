"""Text -> token windows, for evaluation (consecutive) and calibration (random, seeded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lowbit.assets import CALIB_TEXTS, EVAL_TEXTS, resolve_text
from lowbit.errors import LowbitError


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text; binary, undecodable or empty files are refused."""
    if not path.is_file():
        raise LowbitError(f"text file not found: {path}")
    data = path.read_bytes()
    if b"\x00" in data:
        raise LowbitError(f"{path} looks binary (it contains NUL bytes): give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LowbitError(f"{path} is not UTF-8 text (byte {err.start}): re-encode it as UTF-8")
    if not text.strip():
        raise LowbitError(f"{path} is empty: give a file with text in it")
    return text


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """The whole text tokenized once, without special tokens -> (n_tokens,) int64."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)


def evaluation_tokens(tokenizer, dataset: str = "wikitext2") -> torch.Tensor:
    """An evaluation text (a built-in name from EVAL_TEXTS, or a text file) tokenized once -> (n_tokens,) int64."""
    return tokenize(tokenizer, read_text(resolve_text(dataset, EVAL_TEXTS)))


def consecutive_windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows from the start of the text -> (k, seqlen); the tail shorter than seqlen is dropped."""
    if seqlen < 2:
        raise LowbitError(f"sequence length must be at least 2, got {seqlen}")
    k = tokens.numel() // seqlen
    if k == 0:
        raise LowbitError(f"the text has {tokens.numel()} tokens, fewer than one window of {seqlen}: use a shorter --seqlen")
    if max_windows is not None:
        if max_windows < 1:
            raise LowbitError(f"number of windows must be at least 1, got {max_windows}")
        k = min(k, max_windows)
    return tokens[: k * seqlen].view(k, seqlen)


def random_windows(tokens: torch.Tensor, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """n distinct non-overlapping windows of seqlen tokens chosen at random with `seed` -> (n, seqlen)."""
    if n < 1:
        raise LowbitError(f"number of calibration samples must be at least 1, got {n}")
    available = tokens.numel() // max(seqlen, 1)
    if available < n:
        raise LowbitError(
            f"calibration text too short: {tokens.numel()} tokens give {available} windows of {seqlen}, "
            f"{n} requested; give more text, fewer samples or a shorter calibration seqlen"
        )
    all_windows = consecutive_windows(tokens, seqlen)
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n]
    return all_windows[order]


def calibration_windows(tokenizer, source: str | list[str], n: int, seqlen: int, seed: int) -> torch.Tensor:
    """n random windows of seqlen tokens (seeded) from a calibration source -> (n, seqlen).

    source: a built-in name (wikitext2, ptb: splits never used for evaluation), a text file, a JSON-lines
    file with a "text" field per line, a folder saved by `datasets` (needs that package), or a list of strings.
    """
    return random_windows(tokenize(tokenizer, calibration_text(source)), n, seqlen, seed)


def calibration_text(source: str | list[str]) -> str:
    """The calibration source as one text, documents separated by blank lines."""
    if isinstance(source, (list, tuple)):
        return _join(source, "the calibration list")
    path = resolve_text(source, CALIB_TEXTS)
    if path.is_dir():
        return _join(_dataset_texts(path), str(path))
    if path.suffix in (".jsonl", ".ndjson"):
        return _join(_jsonl_texts(path), str(path))
    return read_text(path)


def _join(texts: list, where: str) -> str:
    if not all(isinstance(t, str) for t in texts):
        raise LowbitError(f"{where} holds non-string entries: give a list of strings")
    text = "\n\n".join(t for t in texts if t.strip())
    if not text:
        raise LowbitError(f"{where} has no text in it: give non-empty documents")
    return text


def _jsonl_texts(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LowbitError(f"{path} line {number} is not JSON ({err.msg}): give one JSON object per line")
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise LowbitError(f'{path} line {number} has no string "text" field: give {{"text": "..."}} per line')
        texts.append(record["text"])
    return texts


def _dataset_texts(path: Path) -> list[str]:
    """The "text" column of a folder written by datasets' save_to_disk (the train split of a DatasetDict)."""
    try:
        import datasets
    except ImportError:
        raise LowbitError(f"{path} is a folder: reading a saved dataset needs the datasets package (pip install datasets)")
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise LowbitError(f"{path} is not a folder saved by datasets ({err}): give a text or JSON-lines file")
    if isinstance(data, datasets.DatasetDict):
        data = data["train"] if "train" in data else next(iter(data.values()))
    if "text" not in data.column_names:
        raise LowbitError(f"{path} has no 'text' column (it has {', '.join(data.column_names)})")
    return list(data["text"])
