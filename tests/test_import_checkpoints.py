"""Import of GPTQ / AWQ / compressed-tensors folders into lowbit modules, without re-quantization.

Folders come from lowbit's exporter (whose layouts the loader round-trip tests check against the other
tools); the import must give back lowbit's weights bit for bit. Checkpoints quantized by llm-compressor and
GPTQModel themselves are imported in benchmarks/interop.py (their quantizers are too slow for the suite).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import assert_one_line_error
from export_fixture import lowbit_logits, make_folder, sample_ids
from lowbit.errors import LowbitError
from lowbit.io.export import export
from lowbit.io.sources import load_model
from lowbit.modules import IntLinear, set_kernel_preference


@pytest.fixture(scope="module")
def folders(stories, tmp_path_factory):
    root = tmp_path_factory.mktemp("imp")
    return {n: make_folder(stories.model, stories.tokenizer, n, root / n) for n in ("rtn4", "rtn4_all", "rtn4_all_sym")}


@torch.no_grad()
def imported_logits(folder) -> tuple[torch.Tensor, torch.nn.Module]:
    loaded = load_model(str(folder))
    set_kernel_preference(loaded.model, "reference")
    return loaded.model(sample_ids()).logits.float(), loaded.model


@pytest.mark.parametrize("name, fmt", [
    ("rtn4", "gptq"), ("rtn4", "awq"), ("rtn4_all", "compressed-tensors"), ("rtn4_all_sym", "compressed-tensors"),
])
def test_exported_folders_import_bit_for_bit(folders, tmp_path, name, fmt):
    out = export(folders[name], fmt, tmp_path / fmt)
    got, model = imported_logits(out)
    assert torch.equal(got, lowbit_logits(folders[name]))
    layers = [m for m in model.modules() if isinstance(m, IntLinear)]
    assert len(layers) == (20 if name == "rtn4" else 35)
    assert model.lowbit_config.source_format == fmt
    assert all((m.layout.symmetric) == name.endswith("sym") for m in layers)


def test_act_order_out_of_column_order_is_refused(folders, tmp_path):
    out = export(folders["rtn4"], "gptq", tmp_path / "gptq")
    tensors = load_file(str(out / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_proj.g_idx"] = tensors["model.layers.0.self_attn.q_proj.g_idx"].flip(0)
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(LowbitError, match="activation order with groups out of column order"):
        load_model(str(out))


def test_unsupported_variants_are_one_line_errors(folders, tmp_path, run_cli):
    out = export(folders["rtn4"], "awq", tmp_path / "awq")
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["version"] = "gemv"
    (out / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run_cli("eval", out, "--windows", "1"), "AWQ gemv 4-bit checkpoints are not supported")
