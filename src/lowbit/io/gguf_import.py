"""Import a GGUF file without re-quantization: its simple block types become lowbit's packed layers.

Each tensor is read from the mapped file on its own. Linear weights (and a token embedding) stored in a
type of formats.ggml (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1) keep their codes, fp16 scales and minimums exactly,
as `IntLinear` (symmetric types) or `IntOffsetLinear` (Q4_1 / Q5_1) with groups of 32; transformers'
GGUF tables name them and give Llama's q/k row order, applied to whole rows of codes. Every other tensor
(float norms and biases, k-quants such as Q6_K, i-quants) is dequantized as transformers does and stays
float. A tied output head shares the token embedding's codes through an 8/4/5-bit `IntLinear` copy.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

from lowbit.core.affine import IntWeights
from lowbit.errors import LowbitError
from lowbit.formats.ggml import BLOCK, BLOCK_TYPES, decode_blocks
from lowbit.io.checkpoint import check_complete
from lowbit.io.on_the_fly import assign_tensor, skeleton
from lowbit.io.sources import LoadedModel, demo_path
from lowbit.io.tensor_sources import GGUFTensors
from lowbit.methods.imported import ImportedConfig
from lowbit.modules import IntLinear, IntOffsetLinear, QuantizedEmbedding
from lowbit.modules.plan import prepare_kernels
from lowbit.progress import track


@torch.no_grad()
def import_gguf(spec: str, progress: bool = False) -> LoadedModel:
    """Load a .gguf file (or 'demo') with its block-quantized weights kept as they are."""
    path = demo_path() if spec == "demo" else Path(spec).expanduser()
    if not (path.is_file() and path.suffix == ".gguf"):
        raise LowbitError(f"{spec} is not a .gguf file: --import-gguf reads GGUF files (or 'demo')")
    model, tokenizer = skeleton(path.parent, path.name, torch.float32)
    source = GGUFTensors(path, model)
    kept: Counter = Counter()  # "Q4_1 exact" / "Q6_K float" -> tensors
    for tensor in track(source.reader.tensors, "importing GGUF tensors", progress):
        type_name = tensor.tensor_type.name
        if type_name in BLOCK_TYPES and _place_exact(model, source, tensor, type_name):
            kept[f"{type_name} exact"] += 1
            continue
        name, values = source.float_tensor(tensor)
        if name is not None:
            assign_tensor(model, name, values, torch.float32)
            kept[f"{type_name} float"] += 1
    _untie_quantized_head(model)
    check_complete(model, spec)
    model.eval()
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(kept.items()))
    model.lowbit_config = ImportedConfig(source_format="gguf", detail=detail)
    prepare_kernels(model)
    return LoadedModel(model, tokenizer, str(path))


def _place_exact(model: nn.Module, source: GGUFTensors, tensor, type_name: str) -> bool:
    """Swap in a packed layer for a Linear weight or (symmetric types) the token embedding; False if the
    tensor is anything else, so the caller loads it as float."""
    rows = tensor.data.shape[0]
    name, order = source.row_order(tensor, rows)
    if name is None or not name.endswith(".weight"):
        return False
    module_name = name.removesuffix(".weight")
    module = model.get_submodule(module_name)
    blocks = decode_blocks(tensor.data, type_name)
    codes, scale = blocks.codes[order], blocks.scale[order]  # (out, in) uint8, (out, in / 32) fp16
    if tuple(codes.shape) != tuple(module.weight.shape):
        return False
    if isinstance(module, nn.Linear):
        bias = module.bias
        if bias is not None and bias.is_meta:  # its bias comes later in the file (assign_tensor fills it)
            bias = torch.zeros(bias.shape)
        if blocks.offset is None:
            layer = IntLinear.from_weights(IntWeights(codes, scale, None, blocks.bits, BLOCK), bias)
        else:
            layer = IntOffsetLinear.from_codes(codes, scale, blocks.offset[order], blocks.bits, BLOCK, bias)
    elif isinstance(module, nn.Embedding) and blocks.offset is None:
        layer = QuantizedEmbedding.from_weights(IntWeights(codes, scale, None, blocks.bits, BLOCK), None)
    else:
        return False
    model.set_submodule(module_name, layer)
    return True


def _untie_quantized_head(model: nn.Module) -> None:
    """A head tied to an imported embedding gets its own packed copy of the same codes (the rest of lowbit
    stores tied quantized tables untied too, methods.vocab)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if isinstance(emb, QuantizedEmbedding) and isinstance(head, nn.Linear) and head.weight.is_meta:
        name = next(n for n, m in model.named_modules() if m is head)
        weights = emb.int_weights()
        weights.scale = weights.scale.clone()  # its own storage: saving keeps one copy of shared tensors only
        model.set_submodule(name, IntLinear.from_weights(weights, None))
    if isinstance(emb, QuantizedEmbedding):
        model.config.tie_word_embeddings = False
