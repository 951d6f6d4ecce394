"""lowbit folders of stories260k made once per session for the export and import tests, and a logits check."""

from __future__ import annotations

import copy

import torch

from lowbit.api import quantize, save
from lowbit.io.checkpoint import load_quantized
from lowbit.methods import make_config
from lowbit.modules import set_kernel_preference

# name -> (method, options). stories260k's MLP has 172 features, which neither GPTQ's nor AWQ's packing
# holds at 2/3/4 bits (nor AWQ's outputs), so those settings keep the MLP float (the loaders skip it).
SETTINGS = {
    "rtn4": ("rtn", {"bits": 4, "group_size": 32, "integer_zero": True, "exclude": "mlp"}),
    "rtn4_sym": ("rtn", {"bits": 4, "group_size": 32, "symmetric": True, "exclude": "mlp"}),
    "rtn4_all": ("rtn", {"bits": 4, "group_size": -1, "integer_zero": True}),
    "rtn4_all_sym": ("rtn", {"bits": 4, "group_size": -1, "symmetric": True}),
    "rtn2": ("rtn", {"bits": 2, "group_size": 32, "symmetric": True, "exclude": "mlp"}),  # asymmetric 2-bit has zeros of 0
    "rtn3": ("rtn", {"bits": 3, "group_size": 32, "integer_zero": True, "exclude": "mlp"}),
    "rtn8_all": ("rtn", {"bits": 8, "group_size": -1, "integer_zero": True}),
    "rtn_float_zero": ("rtn", {"bits": 4, "group_size": 32}),
    "nf4": ("nf4", {}),
    "fp4_plain": ("fp4", {"double_quant": False}),
    "hqq": ("hqq", {"bits": 4, "group_size": 32}),
}


def make_folder(model: torch.nn.Module, tokenizer, name: str, out) -> str:
    method, options = SETTINGS[name]
    quantized = quantize(copy.deepcopy(model), make_config(method, **options))  # calibration-free: no data
    return str(save(quantized, out, tokenizer))


def sample_ids() -> torch.Tensor:
    return torch.randint(3, 512, (2, 48), generator=torch.Generator().manual_seed(0))  # (batch, seq)


@torch.no_grad()
def lowbit_logits(folder: str) -> torch.Tensor:
    """Logits of the saved lowbit model through the reference kernel (fp32 dequantize + matmul)."""
    model = load_quantized(folder).model
    set_kernel_preference(model, "reference")
    return model(sample_ids()).logits.float()


def assert_close_logits(got: torch.Tensor, want: torch.Tensor, rel: float) -> float:
    """max |got - want| within `rel` of the largest logit, and the same next-token choices; returns the error."""
    err = (got.float() - want).abs().max().item()
    assert err <= rel * want.abs().max().item(), f"max |logit difference| {err:.3g}"
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.98
    return err
