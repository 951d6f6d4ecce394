"""Save/load: identical logits, atomic writes, and corrupt checkpoints named on load."""

import json
import os
import subprocess
import sys

import pytest
import torch

import lowbit
from lowbit.errors import LowbitError
from lowbit.io import checkpoint
from lowbit.methods import make_config

TOKENS = torch.arange(64).view(1, 64) + 5


@pytest.fixture
def saved(stories, stories_copy, tmp_path):
    model = lowbit.quantize(stories_copy, make_config("rtn", bits=3, group_size=32))
    out = lowbit.save(model, tmp_path / "q3", stories.tokenizer, source="stories260k")
    with torch.no_grad():
        return out, model(TOKENS).logits


def test_reload_gives_identical_logits(saved):
    out, logits = saved
    loaded = lowbit.load(out)
    with torch.no_grad():
        assert torch.equal(loaded.model(TOKENS).logits, logits)
    assert loaded.model.lowbit_config == make_config("rtn", bits=3, group_size=32)
    assert loaded.tokenizer is not None


def test_metadata_records_method_source_versions_and_layers(saved):
    meta = json.loads((saved[0] / "lowbit.json").read_text())
    assert meta["method"]["method"] == "rtn" and meta["method"]["bits"] == 3
    assert meta["source"] == "stories260k" and meta["format_version"] == 1  # uniform settings: format 1
    assert len(meta["layers"]) == 35
    assert set(meta["sha256"]) >= {"model.safetensors", "config.json"}


def test_eval_from_a_fresh_process(saved):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "lowbit", "eval", str(saved[0]), "--windows", "2", "--seqlen", "128", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    record = json.loads(result.stdout)
    assert record["windows"] == 2 and record["seqlen"] == 128 and record["ppl"] > 1
    layers = json.loads((saved[0] / "lowbit.json").read_text())["layers"].values()
    params = sum(layer["spec"]["in_features"] * layer["spec"]["out_features"] for layer in layers)
    assert record["quantized_bytes"] == sum(layer["bytes"] for layer in layers)
    assert record["bits_per_param"] == pytest.approx(8 * record["quantized_bytes"] / params)
    assert 3.5 < record["bits_per_param"] < 4.5  # 3-bit codes + fp16 scale and zero per 32 weights


def test_existing_output_is_refused_without_overwrite(saved, stories):
    out, _ = saved
    model = lowbit.load(out).model
    with pytest.raises(LowbitError, match="already exists: pass --overwrite"):
        lowbit.save(model, out)
    lowbit.save(model, out, overwrite=True)
    assert (out / "lowbit.json").is_file()


def test_failed_save_leaves_nothing_behind(stories_copy, tmp_path, monkeypatch):
    model = lowbit.quantize(stories_copy, make_config("rtn", bits=4, group_size=32))

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        lowbit.save(model, tmp_path / "q")
    assert list(tmp_path.iterdir()) == []


def test_flipped_byte_is_detected(saved):
    path = saved[0] / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LowbitError, match="model.safetensors is corrupt"):
        lowbit.load(saved[0])


def test_truncated_file_is_detected(saved):
    path = saved[0] / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LowbitError, match="model.safetensors is corrupt"):
        lowbit.load(saved[0])


def test_missing_file_is_named(saved):
    (saved[0] / "model.safetensors").unlink()
    with pytest.raises(LowbitError, match="model.safetensors is missing"):
        lowbit.load(saved[0])


def test_newer_format_version_is_refused(saved):
    meta_path = saved[0] / "lowbit.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = checkpoint.FORMAT_VERSION + 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LowbitError, match="newer than this lowbit .*upgrade lowbit"):
        lowbit.load(saved[0])


def test_corrupt_metadata_is_refused(saved):
    (saved[0] / "lowbit.json").write_text("{not json")
    with pytest.raises(LowbitError, match="lowbit.json is unreadable"):
        lowbit.load(saved[0])


def test_edited_metadata_is_detected(saved):
    meta_path = saved[0] / "lowbit.json"
    meta = json.loads(meta_path.read_text())
    meta["layers"]["model.layers.0.mlp.up_proj"]["spec"]["group_size"] = 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LowbitError, match="lowbit.json is corrupt"):
        lowbit.load(saved[0])


def test_lock_refuses_a_second_writer(stories_copy, tmp_path):
    model = lowbit.quantize(stories_copy, make_config("rtn", bits=4, group_size=32))
    (tmp_path / ".q.lock").write_text(str(os.getpid()))  # a live process holds it
    with pytest.raises(LowbitError, match=f"another lowbit process \\(pid {os.getpid()}\\) is writing"):
        lowbit.save(model, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_stale_lock_is_taken_over(stories_copy, tmp_path):
    model = lowbit.quantize(stories_copy, make_config("rtn", bits=4, group_size=32))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".q.lock").write_text(dead.stdout.strip())
    lowbit.save(model, tmp_path / "q")
    assert (tmp_path / "q" / "lowbit.json").is_file() and not (tmp_path / ".q.lock").exists()


def test_lost_metadata_is_not_loaded_as_a_plain_model(saved):
    (saved[0] / "lowbit.json").unlink()
    with pytest.raises(LowbitError, match="lacks .* weights .*lost its lowbit.json"):
        lowbit.load(saved[0])
