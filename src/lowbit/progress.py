"""Progress bars for long work (rich, on stderr so stdout stays clean for --json), silent when disabled."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def track(items: Iterable[T], description: str, enabled: bool, total: int | None = None) -> Iterator[T]:
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextmanager
def loss_bar(description: str, total: int, enabled: bool, done: int = 0) -> Iterator[Callable[[float], None]]:
    """A progress bar of `total` steps (the first `done` already finished) showing the latest loss;
    yields update(loss), called once per step. Silent when disabled."""
    if not enabled:
        yield lambda _loss: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, completed=done)
        yield lambda loss: bar.update(task, advance=1, description=f"{description} loss {loss:.4f}")
