"""Atomic output folders: written under a temporary name beside the target, renamed into place at the end."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from lowbit.errors import LowbitError


def check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise LowbitError(f"output folder {target} already exists: pass --overwrite or choose another --out")
    if target.exists() and not target.is_dir():
        raise LowbitError(f"output path {target} exists and is not a folder: choose another --out")


@contextlib.contextmanager
def atomic_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `target`, on any failure it is removed.

    A crash at any point leaves either the old target or the new one in place, never a half-written one
    (the only window is between the two renames, where the old one still sits under its backup name).
    """
    target = Path(target)
    check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        backup = target.parent / f".{target.name}.old-{tag}"
        if target.exists():
            target.rename(backup)
        tmp.rename(target)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
