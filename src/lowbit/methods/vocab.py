"""Optional quantization of the token embedding and the output head, whatever the method (off by default).

On small models these are a large share of the weights (a quarter of SmolLM2-135M's parameters, tied),
and the head is read in full for every generated token. Both use round-to-nearest, asymmetric, groups
of VOCAB_GROUP along the hidden dimension, in the shared group-wise format; a tied pair is untied (each
quantized copy is stored and counted on its own, and an unquantized side keeps the float table).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.core.affine import rtn_quantize
from lowbit.errors import LowbitError
from lowbit.modules import IntLinear, QuantizedEmbedding

VOCAB_BITS = (0, 4, 8)  # 0: leave in float
VOCAB_GROUP = 64


def check_vocab_bits(bits: int, what: str) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in VOCAB_BITS:
        raise LowbitError(f"{what} must be one of {', '.join(map(str, VOCAB_BITS))} (0 = not quantized), got {bits!r}")


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


@torch.no_grad()
def quantize_vocab_layers(model: nn.Module, embedding_bits: int, head_bits: int) -> list[str]:
    """Replace the input embedding and/or output head in place; returns the names replaced."""
    if not embedding_bits and not head_bits:
        return []
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    replaced = []
    if head_bits:
        if not isinstance(head, nn.Linear):
            raise LowbitError("the output head is already quantized (by --include): drop head_bits or the pattern")
        name = _module_name(model, head)
        w = rtn_quantize(head.weight.detach().float(), head_bits, VOCAB_GROUP, symmetric=False)
        model.set_submodule(name, IntLinear.from_weights(w, head.bias))
        replaced.append(name)
    if embedding_bits:
        name = _module_name(model, emb)
        w = rtn_quantize(emb.weight.detach().float(), embedding_bits, VOCAB_GROUP, symmetric=False)
        q = QuantizedEmbedding.from_weights(w, None)
        q.out_dtype = str(emb.weight.dtype).removeprefix("torch.")
        model.set_submodule(name, q)
        replaced.append(name)
    model.config.tie_word_embeddings = False  # the saved config must not re-tie on load
    return replaced
