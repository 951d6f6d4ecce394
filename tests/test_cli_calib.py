"""`lowbit quantize` with calibration methods, end to end on stories260k."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lowbit.assets import assets_dir
from lowbit.cli import app
from lowbit.io.checkpoint import read_metadata


@pytest.mark.parametrize("method,options", [("gptq", ["-o", "desc_act=true", "-o", "static_groups=true"]), ("awq+gptq", ["-o", "n_grid=4"])])
def test_quantize_with_calibration_writes_a_checkpoint(tmp_path, method, options):
    model = str(assets_dir() / "models" / "stories260k")
    args = ["quantize", model, "--method", method, "--bits", "3", "--group-size", "32", "--calib", "wikitext2",
            "--nsamples", "4", "--calib-seqlen", "64", "--out", str(tmp_path / "q"), *options]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "q")
    assert meta["method"]["method"] == method and meta["method"]["bits"] == 3
    assert len(meta["layers"]) == 35


def test_too_little_calibration_text_fails_before_quantizing(tmp_path):
    (tmp_path / "tiny.txt").write_text("Once upon a time.")
    model = str(assets_dir() / "models" / "stories260k")
    result = CliRunner().invoke(app, ["quantize", model, "--method", "gptq", "--calib", str(tmp_path / "tiny.txt"),
                                      "--out", str(tmp_path / "q")])
    assert result.exit_code != 0 and "calibration text too short" in str(result.exception)
