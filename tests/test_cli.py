"""The command line end to end, and every bad input: one line on stderr and a non-zero exit code."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from conftest import assert_one_line_error as _assert_one_line_error


def test_quantize_info_eval(run_cli, stories_path, tmp_path):
    out = tmp_path / "q"
    code, stdout, _ = run_cli("quantize", stories_path, "--method", "rtn", "--bits", "4", "--group-size", "64", "--out", out)
    assert code == 0 and "rtn" in stdout
    code, stdout, _ = run_cli("info", out)
    assert code == 0 and '"bits": 4' in stdout and "35" in stdout
    code, stdout, _ = run_cli("eval", out, "--windows", "2", "--reference", stories_path, "--json")
    record = json.loads(stdout)
    assert code == 0 and record["windows"] == 2 and record["seqlen"] == 512
    assert {"ppl", "weight_bytes", "bits_per_param", "kl", "top1"} <= set(record)
    assert 0 < record["kl"] < 1 and 0 < record["top1"] <= 1


def test_method_options_pass_through(run_cli, stories_path, tmp_path):
    args = ["quantize", stories_path, "--method", "ptq", "-o", "observer=minmax", "--calib", "wikitext2"]
    code, _, err = run_cli(*args, "--nsamples", "4", "--out", tmp_path / "p")
    assert code == 0, err
    assert json.loads((tmp_path / "p" / "lowbit.json").read_text())["method"]["observer"] == "minmax"


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--method", "rtn", "--bits", "9"], "rtn supports 2..8 bits, got 9"),
        (["--method", "rtn", "--bits", "1"], "rtn supports 2..8 bits, got 1"),
        (["--method", "rtn", "--group-size", "0"], "group size must be a positive integer or -1"),
        (["--method", "rtn", "--group-size", "-5"], "group size must be a positive integer or -1"),
        (["--method", "nosuch"], "unknown method 'nosuch': choose one of"),
        (["--method", "rtn", "-o", "colour=red"], "rtn does not take colour"),
        (["--method", "rtn", "-o", "symmetric=3"], "option symmetric must be bool"),
        (["--method", "rtn", "--exclude", "("], "invalid layer regex"),
        (["--method", "ptq", "--calib", "no/such/file.txt"], "text not found"),
    ],
)
def test_bad_quantize_options(run_cli, stories_path, tmp_path, args, pattern):
    _assert_one_line_error(run_cli("quantize", stories_path, *args, "--out", tmp_path / "o"), pattern)
    assert not (tmp_path / "o").exists()


def test_missing_model(run_cli, tmp_path):
    result = run_cli("quantize", tmp_path / "nope", "--method", "rtn", "--out", tmp_path / "o")
    _assert_one_line_error(result, "model not found")


def test_folder_without_config(run_cli, tmp_path):
    result = run_cli("eval", tmp_path)
    _assert_one_line_error(result, "has no config.json")


def test_unsupported_architecture(run_cli, stories_path, tmp_path):
    model = tmp_path / "bert"
    shutil.copytree(stories_path, model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "bert"
    (model / "config.json").write_text(json.dumps(config))
    result = run_cli("quantize", model, "--method", "rtn", "--out", tmp_path / "o")
    _assert_one_line_error(result, "unsupported architecture 'bert': lowbit supports .*gpt2.*llama")


def test_existing_output_folder(run_cli, stories_path, tmp_path):
    (tmp_path / "o").mkdir()
    result = run_cli("quantize", stories_path, "--method", "rtn", "--out", tmp_path / "o")
    _assert_one_line_error(result, "already exists: pass --overwrite")


def test_nan_weights_are_named(run_cli, stories_path, tmp_path):
    model = tmp_path / "nan"
    shutil.copytree(stories_path, model)
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.2.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("quantize", model, "--method", "rtn", "--out", tmp_path / "o")
    _assert_one_line_error(result, r"weight of model\.layers\.2\.mlp\.up_proj has 1 NaN/Inf values")
    assert not (tmp_path / "o").exists()


def test_corrupt_checkpoint(run_cli, stories_path, tmp_path):
    out = tmp_path / "q"
    assert run_cli("quantize", stories_path, "--method", "rtn", "--out", out)[0] == 0
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _assert_one_line_error(run_cli("eval", out), "model.safetensors is corrupt")


def test_calibration_text_too_short(run_cli, stories_path, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("Once upon a time there was a cat.")
    result = run_cli("quantize", stories_path, "--method", "ptq", "--calib", text, "--out", tmp_path / "o")
    _assert_one_line_error(result, "calibration text too short")


def test_binary_calibration_file(run_cli, stories_path, tmp_path):
    text = tmp_path / "bin.txt"
    text.write_bytes(b"\x00\x01\x02abc")
    result = run_cli("quantize", stories_path, "--method", "ptq", "--calib", text, "--out", tmp_path / "o")
    _assert_one_line_error(result, "looks binary")


def test_debug_shows_the_traceback(run_cli, tmp_path):
    from lowbit.errors import LowbitError

    with pytest.raises(LowbitError):
        run_cli("eval", tmp_path / "nope", "--debug")


def test_preflight_refuses_with_the_numbers(run_cli, stories_path, tmp_path, monkeypatch):
    import psutil

    class Tiny:
        available = 10_000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    result = run_cli("quantize", stories_path, "--method", "rtn", "--out", tmp_path / "o")
    _assert_one_line_error(result, r"not enough memory: about 0\.0 GiB needed .* available: use fewer --nsamples")
    assert not (tmp_path / "o").exists()


def test_preflight_estimate_matches_the_real_quantized_size(stories):
    from lowbit.methods import make_config
    from lowbit.preflight import estimate

    est = estimate(stories.model, make_config("rtn", bits=4, group_size=64))
    params = sum(p.numel() for p in stories.model.parameters())
    assert est.model_bytes == 4 * params
    assert 4.4 / 8 * params < est.quantized_bytes < 4.6 / 8 * params
