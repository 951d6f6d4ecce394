"""Where the shared test assets live: $LOWBIT_ASSETS, else a `shared/assets` folder beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

from lowbit.errors import LowbitError

# Built-in names for text files in the assets folder.
EVAL_TEXTS = {"wikitext2": "data/wikitext2-test.raw", "ptb": "data/ptb-valid.txt"}
CALIB_TEXTS = {"wikitext2": "data/wikitext2-valid-tokenized.txt", "ptb": "data/ptb-valid.txt"}


def assets_dir() -> Path:
    env = os.environ.get("LOWBIT_ASSETS")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd() / ".." / "shared" / "assets", Path(__file__).resolve().parents[3] / "shared" / "assets"]
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    raise LowbitError("assets folder not found: set LOWBIT_ASSETS to the folder holding data/ and models/")


def resolve_text(name_or_path: str, builtin: dict[str, str]) -> Path:
    """A built-in dataset name (see EVAL_TEXTS / CALIB_TEXTS) or a path to a text file."""
    if name_or_path in builtin:
        return assets_dir() / builtin[name_or_path]
    path = Path(name_or_path).expanduser()
    if not path.exists():
        names = ", ".join(builtin)
        raise LowbitError(f"text not found: {name_or_path!r} is neither a file nor a built-in name ({names})")
    return path
