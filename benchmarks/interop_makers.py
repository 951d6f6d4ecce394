"""Checkpoints of stories260k made by other tools, for benchmarks/interop.py's import part.

Each maker quantizes stories260k with the tool's own quantizer (GPTQ, 4-bit, groups of 32, 64 calibration
windows of 128 tokens from the WikiText-2 validation text) and returns the saved folder. stories260k's
down_proj has 172 inputs, which groups of 32 do not divide, so both tools leave it (and GPTQModel the whole
MLP, whose 172 outputs its packing cannot hold either) in full precision.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lowbit.calib.data import calibration_windows


def _windows(tokenizer) -> torch.Tensor:
    return calibration_windows(tokenizer, "wikitext2", 64, 128, seed=0)  # (64, 128)


def llm_compressor(stories: Path, out: Path) -> Path:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(stories), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(stories))
    ids = _windows(tokenizer)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}
    recipe = GPTQModifier(config_groups={"g": {"targets": ["Linear"], "weights": weights}},
                          ignore=["lm_head", "re:.*down_proj$"])
    oneshot(model=model, dataset=data, recipe=recipe, max_seq_length=128, num_calibration_samples=ids.shape[0])
    model.save_pretrained(str(out), save_compressed=True)
    tokenizer.save_pretrained(str(out))
    return out


def gptqmodel(stories: Path, out: Path) -> Path:
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    ids = _windows(AutoTokenizer.from_pretrained(str(stories)))
    config = QuantizeConfig(bits=4, group_size=32, sym=False, dynamic={"-:.*mlp.*": {}})
    model = GPTQModel.load(str(stories), config)
    model.quantize([{"input_ids": row.tolist(), "attention_mask": [1] * row.numel()} for row in ids], batch_size=1)
    model.save(str(out))
    return out


def transformers_loader(folder: Path):
    """llm-compressor's folders are loaded by transformers (compressed-tensors), its documented consumer."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), device_map="cpu").eval()


def gptqmodel_loader(folder: Path):
    """GPTQModel's own loader: it honours the folder's per-module `dynamic` rules (the MLP left in float),
    which transformers' GPTQ integration does not."""
    from gptqmodel import GPTQModel

    return GPTQModel.load(str(folder), device="cpu").model.eval()


# name -> (maker, the tool's own loader)
MAKERS = {
    "llm-compressor GPTQ W4A16 g32": (llm_compressor, transformers_loader),
    "GPTQModel GPTQ 4-bit g32 asym": (gptqmodel, gptqmodel_loader),
}
