"""Text -> token windows, for evaluation (consecutive) and calibration (random, seeded)."""

from __future__ import annotations

from pathlib import Path

import torch

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


def calibration_windows(tokenizer, name_or_path: str, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """Random windows from a calibration text (built-in names map to splits never used for evaluation)."""
    from lowbit.assets import CALIB_TEXTS, resolve_text

    tokens = tokenize(tokenizer, read_text(resolve_text(name_or_path, CALIB_TEXTS)))
    return random_windows(tokens, n, seqlen, seed)
