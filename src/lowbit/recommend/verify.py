"""`--verify K`: quantize and measure the top K on the user's model, then recommend from the measurements.

The K settings run through `lowbit compare`'s runner (one protocol, by default the cheap `small` preset
of 8 evaluation and 8 calibration windows; the unquantized baseline in the same run; every record kept
in the results store, so a rerun reuses them). The recommendation is then made
again with those measurements; the final choice is the best of the K by measured score. A setting whose
measurement failed keeps its priors and cannot be the final choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from lowbit.compare.presets import PRESETS
from lowbit.compare.runner import run_compare
from lowbit.errors import LowbitError
from lowbit.recommend.measured import config_key
from lowbit.recommend.run import Context, Recommendation, recommend


@dataclass
class Verification:
    k: int
    preset: str
    results: str
    before: list[str]  # the K labels in the order the first ranking gave them
    after: list[str]  # the measured ones among them, best first
    failed: list[str]
    final: str | None

    def lines(self) -> list[str]:
        p = PRESETS[self.preset]
        out = [f"verified the top {self.k} with compare's {self.preset} protocol ({p.eval_windows} windows of "
               f"{p.seqlen} tokens; records in {self.results}):"]
        out.append("  before (priors):      " + " > ".join(self.before))
        out.append("  after (measurements): " + " > ".join(self.after))
        if self.failed:
            out.append("  failed: " + ", ".join(self.failed))
        moved = "kept" if self.after and self.after[0] == self.before[0] else "changed"
        out.append(f"  final choice: {self.final} (best measured of the {self.k}; the first place was {moved})")
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def verify(ctx: Context, first: Recommendation, k: int, results: str, preset: str = "small",
           console: Console | None = None) -> Recommendation:
    """Measure the top `k` of `first` into `results`, rank again from the measurements."""
    if k < 1:
        raise LowbitError(f"--verify needs a positive number of settings, got {k}")
    top = first.ranked[:k]
    if not top:
        raise LowbitError("nothing to verify: every setting was excluded (see the excluded list)")
    run = run_compare(ctx.source, Path(results), preset, configs=[c.config for c in top],
                      device=ctx.constraints.device, console=console)
    ctx.results = results
    again = recommend(ctx)
    keys = {config_key(c.config.to_dict()) for c in top}
    verified = [c for c in again.ranked if config_key(c.config.to_dict()) in keys and c.quality.origin == "measured"]
    failed = [r["label"] for r in run.records if r["status"] != "ok"]
    again.verification = Verification(
        k=len(top), preset=preset, results=str(results), before=[c.label for c in top],
        after=[c.label for c in verified], failed=failed, final=verified[0].label if verified else None,
    )
    if verified:  # the final choice leads the list: it is the best measured setting
        again.ranked.remove(verified[0])
        again.ranked.insert(0, verified[0])
    return again
