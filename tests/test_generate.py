"""`lowbit generate`: streamed text from a float folder and a lowbit folder, chat templates, bad inputs."""

import pytest
import torch

from conftest import assert_one_line_error
from lowbit.errors import LowbitError
from lowbit.generate import generate, prompt_ids

STORY = ", there was a little girl named Lily"  # what stories260k writes after "Once upon a time"


def test_generate_streams_the_continuation(run_cli, stories_path):
    code, stdout, err = run_cli("generate", stories_path, "--prompt", "Once upon a time", "--max-new-tokens", "12")
    assert code == 0, err
    assert stdout.startswith(STORY)


def test_generate_from_a_lowbit_folder(run_cli, stories_path, tmp_path):
    out = tmp_path / "q8"
    assert run_cli("quantize", stories_path, "--method", "rtn", "--bits", "8", "--group-size", "32", "--out", out)[0] == 0
    code, stdout, err = run_cli("generate", out, "-p", "Once upon a time", "--max-new-tokens", "12")
    assert code == 0, err
    assert stdout.startswith(STORY)


def test_returned_text_matches_and_sampling_is_seeded(stories):
    greedy = generate(stories.model, stories.tokenizer, "Once upon a time", 12, stream=False)
    assert greedy.startswith(STORY)
    a, b = (generate(stories.model, stories.tokenizer, "Once", 20, temperature=1.5, seed=3, stream=False) for _ in "ab")
    assert a == b


class _ChatTokenizer:
    """Just enough of a tokenizer with a chat template to see the template applied."""

    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "<user>" + messages[0]["content"] + "<assistant>"

    def __call__(self, text, return_tensors, add_special_tokens=True):
        class Out:
            input_ids = torch.tensor([[len(text), int(add_special_tokens)]])

        return Out()


def test_chat_template_is_used_where_there_is_one():
    assert prompt_ids(_ChatTokenizer(), "hi", None).tolist() == [[len("<user>hi<assistant>"), 0]]
    assert prompt_ids(_ChatTokenizer(), "hi", False).tolist() == [[2, 1]]


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--chat"], "has no chat template: drop --chat"),
        (["--prompt", "  "], "the prompt is empty"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be a positive integer"),
        (["--max-new-tokens", "600"], r"exceeds the model's context of 512 tokens"),
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--device", "nosuch"], "unknown device 'nosuch'"),
    ],
)
def test_bad_generate_inputs(run_cli, stories_path, args, pattern):
    assert_one_line_error(run_cli("generate", stories_path, "--prompt", "Once", *args), pattern)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(run_cli, stories_path):
    assert_one_line_error(run_cli("generate", stories_path, "-p", "Once", "--device", "cuda"), "no CUDA GPU")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generate_on_the_gpu(run_cli, stories_path):
    code, stdout, err = run_cli("generate", stories_path, "-p", "Once upon a time", "--max-new-tokens", "12", "--device", "cuda")
    assert code == 0, err
    assert stdout.startswith(STORY)


def test_model_without_tokenizer(stories):
    with pytest.raises(LowbitError, match="saved without a tokenizer"):
        generate(stories.model, None, "Once")
