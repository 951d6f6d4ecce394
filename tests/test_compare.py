"""lowbit compare: the matrix, the resumable store, failures recorded, reports, and numbers equal to eval."""

import csv
import json

import pytest

from lowbit.calib.arch import arch_spec, find_targets
from lowbit.compare.plots import pareto_front
from lowbit.compare.presets import build_matrix
from lowbit.compare.report import write_reports
from lowbit.compare.runner import Setting, baseline_setting, open_session, run_compare, run_setting
from lowbit.compare.store import ResultsStore
from lowbit.eval.run import run_eval
from lowbit.methods.rtn import RTNConfig


@pytest.fixture(scope="module")
def compared(stories_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    run = run_compare(str(stories_path), out, methods=["rtn", "ptq", "nosuch"], bits=[4, 8], save_models=True)
    return out, run


def test_matrix_skips_what_a_method_cannot_do():
    matrix = build_matrix(["rtn", "ptq"], bits=[3, 8], group_sizes=None)
    labels = [(c.name, getattr(c, "bits", None)) for c in matrix.configs]
    assert labels == [("rtn", 3), ("rtn", 8), ("ptq", 8)]
    assert any("ptq" in s and "8..8 bits" in reason for s, reason in matrix.skipped)


def test_every_setting_is_measured(compared):
    out, run = compared
    labels = [r["label"] for r in run.records]
    assert labels == ["unquantized", "rtn 4-bit g64", "rtn 8-bit g64", "ptq 8-bit"]
    assert all(r["status"] == "ok" for r in run.records)
    assert ("nosuch", ) == tuple(s for s, _ in run.skipped if s == "nosuch")
    for record in run.records:
        assert record["speed"]["decode_tokens_per_s"] > 0 and record["memory"]["weight_bytes"] > 0
    assert run.records[1]["memory"]["bits_per_param"] == pytest.approx(4.5, abs=0.1)


def test_rerun_reuses_everything(compared, stories_path):
    out, run = compared
    again = run_compare(str(stories_path), out, methods=["rtn", "ptq"], bits=[4, 8])
    assert again.reused == len(again.records) == 4
    assert [r["key"] for r in again.records] == [r["key"] for r in run.records]


@pytest.mark.parametrize("label", ["rtn 4-bit g64", "ptq 8-bit"])
def test_report_numbers_equal_lowbit_eval(compared, stories_path, label):
    """results.csv (the report) and `lowbit eval` on the saved model give the same numbers."""
    out, run = compared
    write_reports(run.records, run.skipped, out)
    with open(out / "results.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["label"] == label and r["eval"] == "wikitext2")
    evaluated = run_eval(str(out / "models" / label.replace(" ", "_")), seqlen=512, windows=8, reference=str(stories_path))
    assert float(row["ppl"]) == evaluated["ppl"]
    assert float(row["kl"]) == evaluated["kl"] and float(row["top1"]) == evaluated["top1"]
    assert float(row["bits_per_param"]) == evaluated["bits_per_param"]
    assert float(row["weight_mb"]) == evaluated["weight_bytes"] / 1e6


def test_reports_are_written(compared):
    out, run = compared
    paths = write_reports(run.records, run.skipped, out)
    names = {p.name for p in paths}
    assert {"report.md", "report.html", "results.csv", "quality_vs_memory.png", "decode_speed.png", "kl.png"} <= names
    md = (out / "report.md").read_text()
    for label in ("rtn 4-bit g64", "ptq 8-bit", "unquantized", "nosuch: skipped"):
        assert label in md
    assert "<table" in (out / "report.html").read_text()
    assert len((out / "results.csv").read_text().splitlines()) == 5


def test_a_failing_setting_is_recorded_and_the_rest_continue(stories_path, tmp_path, monkeypatch):
    def broken(self, weight, bias, stats=None):
        if self.bits == 3:
            raise RuntimeError("boom")
        return original(self, weight, bias, stats)

    original = RTNConfig.quantize_layer
    monkeypatch.setattr(RTNConfig, "quantize_layer", broken)
    run = run_compare(str(stories_path), tmp_path, methods=["rtn"], bits=[3, 8])
    status = {r["label"]: r["status"] for r in run.records}
    assert status == {"unquantized": "ok", "rtn 3-bit g64": "failed", "rtn 8-bit g64": "ok"}
    assert "boom" in run.records[1]["error"]
    write_reports(run.records, run.skipped, tmp_path)
    assert "- rtn 3-bit g64: failed: RuntimeError: boom" in (tmp_path / "report.md").read_text()
    assert "rtn 3-bit g64: failed: RuntimeError: boom" in (tmp_path / "report.html").read_text()


def test_store_survives_a_line_cut_short(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"key": "a", "status": "ok"}) + "\n" + '{"key": "b", "sta')
    store = ResultsStore(path)
    assert store.finished("a") and not store.finished("b")


def test_pareto_front():
    points = [(1.0, 10.0), (2.0, 5.0), (3.0, 6.0), (4.0, 1.0)]
    assert pareto_front(points) == [0, 1, 3]


def test_another_implementation_is_recorded_and_reported_beside_its_twin(stories_path, tmp_path):
    """A setting quantized by another library (here: weights rounded to bf16, held as 2 bytes each) goes into
    the same store and the report lists it right after lowbit's row of the same method."""

    def bf16_library(model, calib):
        targets = find_targets(model, arch_spec(model.config.model_type))
        for linear in targets.values():
            linear.weight.data = linear.weight.data.bfloat16().float()
        return {name: (2 * m.weight.numel(), m.weight.numel()) for name, m in targets.items()}

    run_compare(str(stories_path), tmp_path, methods=["rtn", "eetq"], bits=[8])
    session = open_session(str(stories_path), tmp_path)
    twin = Setting("rtn-like bf16 (other)", {"method": "rtn", "library": "other 1.0"}, bf16_library)
    record, reused = run_setting(session, twin)
    assert record["status"] == "ok" and not reused
    assert record["memory"]["bits_per_param"] == 16.0
    again = run_compare(str(stories_path), tmp_path, methods=["rtn", "eetq"], bits=[8])
    assert again.reused == 3 and again.records[-1]["label"] == "rtn-like bf16 (other)"
    write_reports(again.records, again.skipped, tmp_path)
    with open(tmp_path / "results.csv") as f:
        table = [(r["label"], r["library"]) for r in csv.DictReader(f)]
    assert table == [("unquantized", "lowbit"), ("rtn 8-bit g64", "lowbit"), ("rtn-like bf16 (other)", "other 1.0"),
                     ("eetq", "lowbit")]


def test_a_quantized_model_is_labelled_as_loaded_not_unquantized(compared, tmp_path):
    out, _ = compared
    session = open_session(str(out / "models" / "rtn_4-bit_g64"), tmp_path, preset="small")
    assert baseline_setting(session).label == "as loaded (lowbit rtn 4-bit g64)"
