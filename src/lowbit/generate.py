"""Text generation from any model lowbit loads, streamed token by token through transformers' generate.

The prompt is wrapped in the tokenizer's chat template when it has one (or when `chat=True` asks for it;
a tokenizer without a template is then an error), else tokenized as plain text with its special tokens.
Greedy decoding unless a temperature > 0 is given.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import LowbitError


def prompt_ids(tokenizer, prompt: str, chat: bool | None) -> torch.Tensor:
    """(1, n) token ids of `prompt`; chat None: use the chat template when the tokenizer has one."""
    if not prompt.strip():
        raise LowbitError("the prompt is empty: pass --prompt 'some text'")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise LowbitError("this model's tokenizer has no chat template: drop --chat to continue plain text")
    if has_template and chat is not False:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return tokenizer(prompt, return_tensors="pt").input_ids


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    chat: bool | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    stream: bool = True,
) -> str:
    """Generate up to `max_new_tokens` after `prompt`; prints the text as it comes when `stream`."""
    from transformers import TextStreamer

    if tokenizer is None:
        raise LowbitError("this model was saved without a tokenizer: generation needs one, re-save with it")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise LowbitError(f"--max-new-tokens must be a positive integer, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise LowbitError(f"--temperature must be >= 0 (0 is greedy), got {temperature}")
    ids = prompt_ids(tokenizer, prompt, chat).to(model.device)  # (1, n)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and ids.shape[1] + max_new_tokens > context:
        raise LowbitError(
            f"prompt ({ids.shape[1]} tokens) + --max-new-tokens {max_new_tokens} exceeds the model's context "
            f"of {context} tokens: shorten the prompt or lower --max-new-tokens"
        )
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    torch.manual_seed(seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        streamer=streamer,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **sampling,
    )  # (1, n + new)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
