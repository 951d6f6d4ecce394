"""Fuzz the checkpoint loader: random corruptions of a saved stories260k model must each end in a
LowbitError or in a model whose logits equal the original's (never an uncaught exception, never a
silent wrong load).

    python benchmarks/fuzz_checkpoint.py --cases 1000     # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch

import lowbit
from lowbit.assets import assets_dir
from lowbit.errors import LowbitError
from lowbit.methods import make_config

from common import write_results

TOKENS = torch.arange(48).view(1, 48) + 3


def corrupt(folder: Path, rng: random.Random) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    target = rng.choice(files)
    data = bytearray(target.read_bytes())
    kind = rng.choice(["flip", "truncate", "zero", "delete", "append", "json-edit"])
    if kind == "flip" and data:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[: rng.randrange(len(data) + 1)]
    elif kind == "zero" and data:
        start = rng.randrange(len(data))
        data[start : start + rng.randint(1, 64)] = bytes(min(64, len(data) - start))
    elif kind == "delete":
        target.unlink()
        return f"{kind}:{target.name}"
    elif kind == "append":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    elif kind == "json-edit":
        target = folder / "lowbit.json"
        meta = json.loads(target.read_text())
        layer = rng.choice(sorted(meta["layers"]))
        field = rng.choice(["bits", "group_size", "in_features", "symmetric"])
        spec = meta["layers"][layer]["spec"]
        spec[field] = rng.choice([0, 1, 2, 3, 8, 64, True, False, None, "x"])
        target.write_text(json.dumps(meta))
        return f"{kind}:{field}"
    target.write_bytes(bytes(data))
    return f"{kind}:{target.name}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    model = lowbit.load(str(assets_dir() / "models" / "stories260k"))
    lowbit.quantize(model.model, make_config("rtn", bits=3, group_size=32))
    with torch.no_grad():
        expected = model.model(TOKENS).logits
    outcomes: Counter = Counter()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        clean = lowbit.save(model.model, Path(tmp) / "clean", model.tokenizer)
        for case in range(args.cases):
            work = Path(tmp) / "case"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(clean, work)
            what = corrupt(work, rng)
            try:
                loaded = lowbit.load(work).model
                with torch.no_grad():
                    same = torch.equal(loaded(TOKENS).logits, expected)
                outcomes["loaded, identical logits" if same else "SILENT WRONG LOAD"] += 1
                if not same:
                    failures.append((case, what))
            except LowbitError:
                outcomes["clear error"] += 1
            except Exception as err:  # the defect this benchmark exists to find
                outcomes["UNCAUGHT " + type(err).__name__] += 1
                failures.append((case, f"{what}: {type(err).__name__}: {err}"[:200]))
    table = "| outcome | cases |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in sorted(outcomes.items()))
    write_results("fuzz_checkpoint", {"cases": args.cases, "seed": args.seed, "outcomes": outcomes, "failures": failures}, table)
    if failures:
        raise SystemExit(f"{len(failures)} bad outcomes, first: {failures[0]}")


if __name__ == "__main__":
    main()
