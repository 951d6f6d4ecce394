"""Calibration sources: text, JSON lines, datasets folders, lists of strings; bad input is a one-line error."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from lowbit.calib.data import calibration_text, calibration_windows, evaluation_tokens, tokenize
from lowbit.errors import LowbitError
from tiny_models import stories

LINES = ["Once upon a time there was a little girl.", "She liked to play in the park with her dog."]


@pytest.fixture(scope="module")
def tokenizer():
    return stories().tokenizer


def test_list_jsonl_and_text_give_the_same_text(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(LINES)))
    (tmp_path / "a.txt").write_text("\n\n".join(LINES))
    assert calibration_text(LINES) == calibration_text(str(tmp_path / "a.jsonl")) == calibration_text(str(tmp_path / "a.txt"))


def test_windows_are_seeded_and_come_from_the_calibration_split(tokenizer):
    a = calibration_windows(tokenizer, "wikitext2", 4, 32, seed=0)
    assert a.shape == (4, 32) and a.dtype == torch.int64
    assert torch.equal(a, calibration_windows(tokenizer, "wikitext2", 4, 32, seed=0))
    assert not torch.equal(a, calibration_windows(tokenizer, "wikitext2", 4, 32, seed=1))


def test_too_little_text_is_an_error(tokenizer):
    with pytest.raises(LowbitError, match="calibration text too short"):
        calibration_windows(tokenizer, LINES, 8, 64, seed=0)


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"\x00\x01\x02binary", "binary"),
    (b"\xff\xfe\xfa", "not UTF-8"),
])
def test_bad_files_are_one_line_errors(tokenizer, tmp_path, content, message):
    path = tmp_path / "calib.txt"
    path.write_bytes(content)
    with pytest.raises(LowbitError, match=message) as err:
        calibration_windows(tokenizer, str(path), 1, 8, seed=0)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("line,message", [("not json", "is not JSON"), ('{"txt": "x"}', '"text" field'), ("[1, 2]", '"text" field')])
def test_bad_jsonl_lines_are_named(tmp_path, line, message):
    path = tmp_path / "calib.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(LowbitError, match=f"line 2 .*{message}"):
        calibration_text(str(path))


def test_bad_lists_are_errors():
    with pytest.raises(LowbitError, match="non-string"):
        calibration_text(["ok", 3])
    with pytest.raises(LowbitError, match="no text"):
        calibration_text(["", "  "])


def test_evaluation_tokens_take_a_built_in_name_or_a_file(tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text(LINES[0])
    assert torch.equal(evaluation_tokens(tokenizer, str(tmp_path / "a.txt")), tokenize(tokenizer, LINES[0]))
    assert evaluation_tokens(tokenizer, "ptb").numel() > 10_000
    with pytest.raises(LowbitError, match="neither a file nor a built-in name"):
        evaluation_tokens(tokenizer, "no-such-evaluation-set")


def test_missing_source_is_an_error():
    with pytest.raises(LowbitError, match="neither a file nor a built-in name"):
        calibration_text("no-such-calibration-set")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_datasets_folder_without_datasets_package_is_a_clear_error(tmp_path):
    with pytest.raises(LowbitError, match="needs the datasets package"):
        calibration_text(str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets is not installed")
def test_datasets_folder_is_read(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": LINES}).save_to_disk(str(tmp_path / "ds"))
    assert calibration_text(str(tmp_path / "ds")) == calibration_text(LINES)
