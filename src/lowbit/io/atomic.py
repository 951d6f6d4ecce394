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


_HELD: set[Path] = set()  # locks this process holds: taking one again (save inside a quantize run) is a no-op


@contextlib.contextmanager
def output_lock(target: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside `target` so two processes never write the same output.

    A lock left by a process that no longer runs is taken over; one this process holds is simply kept.
    """
    lock = target.parent / f".{target.name}.lock"
    target.parent.mkdir(parents=True, exist_ok=True)
    key = lock.resolve()
    if key in _HELD:
        yield
        return
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and _alive(owner):
                raise LowbitError(f"another lowbit process (pid {owner}) is writing {target}: wait for it to finish")
            lock.unlink(missing_ok=True)
    else:
        raise LowbitError(f"cannot take the lock {lock}: remove it if no lowbit process is running")
    _HELD.add(key)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        _HELD.discard(key)
        lock.unlink(missing_ok=True)


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `target`, on any failure it is removed.

    A crash at any point leaves either the old target or the new one in place, never a half-written one
    (the only window is between the two renames, where the old one still sits under its backup name).
    """
    target = Path(target)
    with output_lock(target):
        check_target(target, overwrite)
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
