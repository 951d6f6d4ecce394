"""Quality targets on the real stories260k model, over every 512-token window of wikitext2-test."""

import pytest

import lowbit
from lowbit.calib.data import calibration_windows
from lowbit.eval.quality import evaluate
from lowbit.methods import make_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fp32_ppl(stories, all_windows):
    return evaluate(stories.model, all_windows, batch_size=16).ppl


@pytest.mark.parametrize(
    ("method", "options", "max_increase"),
    [
        ("rtn", dict(bits=8, group_size=128), 0.005),
        ("rtn", dict(bits=4, group_size=32), 0.10),
        ("ptq", dict(), 0.03),
    ],
)
def test_ppl_within_target(method, options, max_increase, stories, stories_copy, all_windows, fp32_ppl):
    config = make_config(method, **options)
    calib = calibration_windows(stories.tokenizer, "wikitext2", 128, 512, seed=0) if config.needs_calibration else None
    model = lowbit.quantize(stories_copy, config, calib)
    ppl = evaluate(model, all_windows, batch_size=16).ppl
    print(f"{method} {options}: ppl {ppl:.3f} vs fp32 {fp32_ppl:.3f} ({ppl / fp32_ppl - 1:+.2%})")
    assert ppl / fp32_ppl - 1 <= max_increase
