"""Resumable calibration: per-block checkpoints, kill-and-resume, out-of-memory retry, the run's lock."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lowbit.api import quantize
from lowbit.calib.data import calibration_windows
from lowbit.calib.engine import split_batch
from lowbit.calib.resume import BlockCheckpoints, work_folder
from lowbit.errors import LowbitError
from lowbit.methods import make_config
from lowbit.methods.gptq import GPTQConfig

GPTQ_ARGS = ("--method", "gptq", "--bits", "3", "--group-size", "32", "--calib", "wikitext2", "--nsamples", "8", "--calib-seqlen", "64")

KILL_AFTER_SECOND_BLOCK = """
import os, signal, sys
from lowbit.calib import resume
from lowbit.cli import main

save = resume.BlockCheckpoints.save
def save_then_die(self, index, *args):
    save(self, index, *args)
    if index == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, as after a crash or an OOM kill
resume.BlockCheckpoints.save = save_then_die
sys.argv = ["lowbit", *sys.argv[1:]]
main()
"""


def _quantize_cli(stories_path, out: Path, *extra: str) -> list[str]:
    return ["quantize", str(stories_path), *GPTQ_ARGS, "--out", str(out), *extra]


def test_killed_run_resumes_at_the_third_block_with_identical_tensors(stories_path, tmp_path, run_cli, monkeypatch):
    code, _, err = run_cli(*_quantize_cli(stories_path, tmp_path / "straight"))
    assert code == 0, err
    out = tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SECOND_BLOCK, *_quantize_cli(stories_path, out)], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert not out.exists()
    assert sorted(p.name for p in work_folder(out).glob("block_*.json")) == ["block_0.json", "block_1.json"]

    calls = []
    calibrate = GPTQConfig.calibrate_block
    monkeypatch.setattr(GPTQConfig, "calibrate_block", lambda self, run: calls.append(run.prefix) or calibrate(self, run))
    code, stdout, err = run_cli(*_quantize_cli(stories_path, out))
    assert code == 0, err
    assert "resuming" in stdout
    assert calls == ["model.layers.2", "model.layers.3", "model.layers.4"]  # blocks 0 and 1 came from the checkpoints
    assert not work_folder(out).exists() and not (tmp_path / ".resumed.lock").exists()
    straight, resumed = load_file(tmp_path / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_same_command_gives_bit_identical_packed_weights(stories_path, tmp_path, run_cli):
    for name in ("a", "b"):
        assert run_cli(*_quantize_cli(stories_path, tmp_path / name))[0] == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_work_folder_of_another_run_is_refused(stories_path, tmp_path, run_cli):
    out = tmp_path / "q"
    BlockCheckpoints(work_folder(out), "fingerprint of some other run")
    code, _, err = run_cli(*_quantize_cli(stories_path, out))
    assert code == 2
    assert "holds a calibration run with other settings: delete it" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_corrupt_block_checkpoint_is_a_clear_error(stories, tmp_path):
    windows = calibration_windows(stories.tokenizer, "wikitext2", 4, 64, seed=0)
    config = make_config("gptq", bits=4, group_size=32)
    quantize(copy.deepcopy(stories.model), config, windows, work_dir=tmp_path / "work")
    assert (tmp_path / "work" / "block_4.json").exists()
    (tmp_path / "work" / "block_0.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LowbitError, match="block_0.safetensors .*delete .* to start afresh"):
        quantize(copy.deepcopy(stories.model), config, windows, work_dir=tmp_path / "work")


def test_split_batch_halves_batch_sized_tensors_only():
    hidden = torch.randn(5, 7, 3)
    mask = torch.ones(5, 1, 7, 7)
    cos = torch.randn(1, 7, 4)  # shared by every row: kept whole
    halves = split_batch((hidden, {"attention_mask": mask, "position_embeddings": (cos, cos), "use_cache": False}))
    assert [h.shape[0] for h, _ in halves] == [3, 2]
    assert torch.equal(torch.cat([h for h, _ in halves]), hidden)
    assert [kw["attention_mask"].shape[0] for _, kw in halves] == [3, 2]
    assert all(kw["position_embeddings"][0] is cos and kw["use_cache"] is False for _, kw in halves)
    single = (hidden[:1], {})
    assert len(split_batch(single)) == 1 and split_batch(single)[0] is single


class _OutOfMemoryAboveTwoRows(GPTQConfig):
    """GPTQ that runs out of memory (after quantizing one layer) while a batch holds more than two windows."""

    def calibrate_block(self, run):
        if max(h.shape[0] for h, _ in run.inputs) > 2:
            name = next(iter(run.linears))
            run.replace(name, torch.nn.Identity())  # a half-done block that the retry must undo
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().calibrate_block(run)


def test_out_of_memory_retries_the_block_with_smaller_batches(stories):
    windows = calibration_windows(stories.tokenizer, "wikitext2", 8, 64, seed=0)
    config = _OutOfMemoryAboveTwoRows(bits=4, group_size=32)
    with pytest.warns(UserWarning, match="out of memory on block 0: retrying with batches of 4 windows"):
        model = quantize(copy.deepcopy(stories.model), config, windows)
    layers = dict(model.named_modules())
    assert all(type(layers[f"model.layers.{i}.self_attn.q_proj"]).__name__ == "IntLinear" for i in range(5))
    plain = quantize(copy.deepcopy(stories.model), make_config("gptq", bits=4, group_size=32), windows)
    with torch.no_grad():
        torch.testing.assert_close(model(windows[:2]).logits, plain(windows[:2]).logits, rtol=1e-3, atol=1e-3)


def test_out_of_memory_with_one_window_is_a_clear_error(stories):
    class AlwaysOutOfMemory(GPTQConfig):
        def calibrate_block(self, run):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    windows = calibration_windows(stories.tokenizer, "wikitext2", 2, 64, seed=0)
    with pytest.warns(UserWarning), pytest.raises(LowbitError, match="out of memory calibrating block 0 even one window at a time"):
        quantize(copy.deepcopy(stories.model), AlwaysOutOfMemory(bits=4, group_size=32), windows)


def _interrupted_then_resumed(stories, config, windows, work: Path, monkeypatch, die_in) -> torch.nn.Module:
    """Quantize with `die_in` (module, attribute) raising on its third call, then rerun in a fresh model."""
    module, attribute = die_in
    real, calls = getattr(module, attribute), []

    def dies_on_third_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attribute, dies_on_third_call)
    with pytest.raises(KeyboardInterrupt):
        quantize(copy.deepcopy(stories.model), config, windows, work_dir=work)
    monkeypatch.setattr(module, attribute, real)
    return quantize(copy.deepcopy(stories.model), config, windows, work_dir=work)


@pytest.mark.parametrize("method,options,die_in", [
    ("aqlm", dict(codebooks=1, codebook_bits=4, preset="fast", finetune_samples=4, finetune_epochs=1), "block"),
    ("qat", dict(bits=2, group_size=32, init="rtn", mode="block+e2e", block_epochs=1, e2e_epochs=1, batch=2,
                 checkpoint_every=1), "e2e"),
])  # fmt: skip
def test_interrupted_aqlm_and_qat_runs_resume_to_identical_tensors(stories, tmp_path, monkeypatch, method, options, die_in):
    """AQLM resumes at the next block; QAT's end-to-end phase resumes from its last step checkpoint."""
    from lowbit.calib import end_to_end

    windows = calibration_windows(stories.tokenizer, "wikitext2", 8, 64, seed=0)
    config = make_config(method, **options)
    straight = quantize(copy.deepcopy(stories.model), config, windows)
    target = (BlockCheckpoints, "save") if die_in == "block" else (end_to_end, "window_loss")
    resumed = _interrupted_then_resumed(stories, config, windows, tmp_path / "work", monkeypatch, target)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
