"""Shared fixtures: the real stories260k model, its evaluation windows, and tiny random models."""

from __future__ import annotations

import copy
import re
import sys

import pytest
import torch

from lowbit.assets import assets_dir
from lowbit.calib.data import consecutive_windows, evaluation_tokens
from lowbit.io.sources import load_model


@pytest.fixture
def triton_interpreter(monkeypatch):
    """Triton's interpreter on for the test where there is no GPU (kernel_checks.import_triton imported Triton
    under it); a test module asks for it with pytestmark."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def stories_path():
    return assets_dir() / "models" / "stories260k"


@pytest.fixture(scope="session")
def stories(stories_path):
    """The loaded fp32 model; tests that change it must deepcopy (see `stories_copy`)."""
    return load_model(str(stories_path))


@pytest.fixture
def stories_copy(stories):
    return copy.deepcopy(stories.model)


@pytest.fixture(scope="session")
def wikitext_tokens(stories):
    return evaluation_tokens(stories.tokenizer)


@pytest.fixture(scope="session")
def all_windows(wikitext_tokens):
    """Every 512-token window of wikitext2-test (the protocol's full evaluation set for stories260k)."""
    return consecutive_windows(wikitext_tokens, 512)


@pytest.fixture(scope="session")
def few_windows(wikitext_tokens):
    return consecutive_windows(wikitext_tokens, 128, 4)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the real CLI entry point in-process; returns (exit code, stdout, stderr)."""
    from lowbit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["lowbit", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_one_line_error(result: tuple[int, str, str], pattern: str) -> None:
    """A CLI result that failed with exactly one `error: ...` line on stderr matching `pattern`."""
    code, _, err = result
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
