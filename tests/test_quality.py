"""Quality targets on the real stories260k model, over every eighth 512-token window of wikitext2-test (198 of the
1580; benchmarks/quality_targets.py measures the same targets over all of them)."""

import sys
from pathlib import Path

import pytest

from lowbit.eval.quality import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quality_targets import TARGETS, quantized_ppl  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def windows(all_windows):
    return all_windows[::8]


@pytest.fixture(scope="module")
def fp32_ppl(stories, windows):
    return evaluate(stories.model, windows, batch_size=16).ppl


@pytest.mark.parametrize(("method", "options", "max_increase"), TARGETS)
def test_ppl_within_target(method, options, max_increase, stories, windows, fp32_ppl):
    ppl = quantized_ppl(stories, method, options, windows)
    print(f"{method} {options}: ppl {ppl:.3f} vs fp32 {fp32_ppl:.3f} ({ppl / fp32_ppl - 1:+.2%})")
    assert ppl / fp32_ppl - 1 <= max_increase
