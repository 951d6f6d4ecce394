"""lowbit recommend: scenario rankings on a realistic model shape, exact memory, measurements over priors."""

import json
import math

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.methods import make_config, method_names
from lowbit.recommend.knowledge import FACTS, candidate_settings, registered_facts
from lowbit.recommend.measured import config_key
from lowbit.recommend.policy import Constraints
from lowbit.recommend.run import context, recommend
from lowbit.recommend.units import parse_duration, parse_size

# TinyLlama-1.1B's shapes (a Llama of 1.1B parameters): read as a meta-device skeleton, no weights exist.
LLAMA_1B = dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)
FAST_CPU = {"int4_cpu", "int4x2_cpu", "int8_cpp", "int8_cpu", "torch_int_mm"}


@pytest.fixture(scope="module")
def llama_1b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama1b")
    (folder / "config.json").write_text(json.dumps(LLAMA_1B))
    return str(folder)


@pytest.fixture(scope="module")
def contexts(llama_1b):
    """One skeleton per (device, dtype); constraints are swapped per scenario."""
    return {device: context(llama_1b, Constraints(device=device), dtype=torch.bfloat16) for device in ("cpu", "cuda")}


def scenario(contexts, device="cpu", **constraints):
    ctx = contexts[device]
    ctx.constraints = Constraints(device=device, **constraints)
    return recommend(ctx)


def size_of(rec, label):
    return next(c for c in rec.ranked + [c for c, _ in rec.excluded] if c.label == label).memory.weight_bytes


def assert_fits(rec):
    budget = rec.constraints.budget_bytes
    assert rec.ranked, "nothing recommended"
    for c in rec.ranked:
        assert budget is None or c.memory.weight_bytes <= budget, c.label
        assert c.reasons and c.reasons[0].startswith("memory ")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_priority_ranks_and_fits(contexts, device):
    budget = size_of(scenario(contexts, device), "rtn 4-bit g64")
    for priority in ("balanced", "memory", "speed", "quality", "simplicity"):
        rec = scenario(contexts, device, priority=priority, budget_bytes=budget)
        assert_fits(rec)
        scores = [c.score for c in rec.ranked if math.log(c.quality.value) <= math.log(2)]
        assert scores == sorted(scores, reverse=True)
        assert all("over the" in reason for c, reason in rec.excluded if c.memory and c.memory.weight_bytes > budget)


def test_priorities_follow_the_usual_advice(contexts):
    four_bit = size_of(scenario(contexts), "gptq 4-bit g64")
    top = {p: scenario(contexts, "cuda", priority=p).ranked[0] for p in ("balanced", "memory", "speed", "simplicity")}
    assert top["balanced"].label == "gptq 4-bit g64"
    if "aqlm" in method_names():  # memory-extreme: AQLM at 2 bits per weight
        assert top["memory"].config.name == "aqlm"
    else:  # the smallest usable
        assert top["memory"].bits == 3 and top["memory"].facts.data == "none"
    assert top["speed"].kernels and "triton int-group" in top["speed"].kernels
    assert top["simplicity"].facts.on_the_fly and top["simplicity"].facts.data == "none"
    quality = scenario(contexts, "cuda", priority="quality", budget_bytes=four_bit).ranked[0]
    assert quality.config.name == "awq" and quality.bits == 4
    # with no budget, quality goes to near-lossless 8-bit weights
    assert math.log(scenario(contexts, "cuda", priority="quality").ranked[0].quality.value) < 0.01


def test_memory_smallest_usable_and_aqlm_when_registered(contexts):
    rec = scenario(contexts, priority="memory")
    usable = [c for c in rec.ranked if math.log(c.quality.value) <= math.log(2)]
    assert usable[0].memory.weight_bytes == min(c.memory.weight_bytes for c in usable)
    assert ("aqlm" in method_names()) == any(c.config.name == "aqlm" for c in rec.ranked + [c for c, _ in rec.excluded])


def test_budget_only_two_bit_fits(contexts):
    budget = size_of(scenario(contexts), "rtn 2-bit g64")
    rec = scenario(contexts, priority="balanced", budget_bytes=budget)
    assert_fits(rec)
    ints = [c for c in rec.ranked if c.config.name != "aqlm"]
    assert ints and {c.bits for c in ints} == {2}
    assert all("warning: perplexity expected to more than double" in c.reasons for c in ints)
    if "aqlm" in method_names():  # a codebook method at 2 bits per weight is the only usable setting here
        assert rec.ranked[0].config.name == "aqlm" and rec.ranked[0].memory.bits_per_param <= 2.5
    assert any(c.label == "gptq 3-bit g64" and "over the" in reason for c, reason in rec.excluded)


def test_no_calibration_data(contexts):
    rec = scenario(contexts, calibration_data=False)
    assert_fits(rec)
    assert all(c.facts.data == "none" for c in rec.ranked)
    excluded = {c.config.name: reason for c, reason in rec.excluded}
    assert "needs calibration data" in excluded["gptq"] and "needs calibration data" in excluded["awq"]


def test_cpu_only_uses_this_machines_kernels(contexts):
    rec = scenario(contexts, "cpu", priority="speed")
    assert_fits(rec)
    assert set(rec.ranked[0].kernels) <= FAST_CPU  # checked with the selector, not assumed
    nf4 = next(c for c in rec.ranked if c.label == "nf4")
    assert set(nf4.kernels) == {"reference"} and nf4.speed.value < rec.ranked[0].speed.value


def test_training_and_time_limits_exclude(contexts):
    rec = scenario(contexts, "cpu", max_quantize_s=600)
    reasons = {c.label: r for c, r in rec.excluded}
    assert "over the 10 min limit" in reasons["gptq 4-bit g64"]  # hours on a CPU for 1.1B weights
    assert all(c.quantize_s.value <= 600 for c in rec.ranked)
    if "qat" in method_names():
        assert "needs a training run" in reasons["qat 4-bit g64"]


def test_knowledge_covers_every_registered_method_and_names_sources():
    facts = registered_facts()
    assert set(facts) == set(method_names()) & set(FACTS)
    for f in facts.values():
        for settings in candidate_settings(f):
            config = make_config(f.method, **settings)
            prior = f.quality_prior(getattr(config, "bits", None))
            assert prior.value >= 1 and prior.source
        assert all(p.source for p in f.cost_s_per_mweight.values()) and f.maturity.source


def test_measurements_replace_priors(contexts, tmp_path):
    ctx = contexts["cpu"]
    protocol = {"evals": ["wikitext2"], "seqlen": 512, "windows": 8, "device": "cpu"}
    hqq4 = make_config("hqq", bits=4, group_size=64).to_dict()
    gptq4 = make_config("gptq", bits=4, group_size=64).to_dict()

    def record(config, ppl, decode):
        return {"key": config_key(config), "label": "x", "model": ctx.source, "config": config, "status": "ok",
                "protocol": protocol, "quality": {"wikitext2": {"ppl": ppl, "kl": 0.1}}, "quantize_s": 5.0,
                "speed": {"decode_tokens_per_s": decode}, "memory": {"weight_bytes": 123}}

    lines = [record({"method": "unquantized"}, 10.0, 2.0), record(hqq4, 20.0, 4.0), record(gptq4, 11.0, 3.0)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    ctx.results, ctx.constraints = str(tmp_path), Constraints(priority="quality")
    try:
        rec = recommend(ctx)
    finally:
        ctx.results = None
    by_label = {c.label: c for c in rec.ranked}
    hqq = by_label["hqq 4-bit g64"]
    assert (hqq.quality.value, hqq.quality.origin, hqq.speed.value, hqq.speed.origin) == (2.0, "measured", 2.0, "measured")
    assert by_label["gptq 4-bit g64"].quality.value == pytest.approx(1.1)
    assert rec.prior_scale is not None and "to fit 2 measured" in by_label["rtn 4-bit g64"].quality.source
    assert by_label["rtn 4-bit g64"].quality.origin == "prior"
    assert any(r.startswith("note: measured 123 bytes") for r in hqq.reasons)  # a prediction mismatch is shown


def test_memory_prediction_is_exact(stories):
    import copy

    from lowbit.api import quantize
    from lowbit.eval.memory import memory_report
    from lowbit.recommend.predict import predict_memory

    for name, options in [("rtn", dict(bits=3, group_size=32)), ("hqq", dict(axis=0)), ("nf4", {}), ("eetq", {}),
                          ("int8", {}), ("fp4", dict(double_quant=False))]:
        config = make_config(name, **options)
        model = quantize(copy.deepcopy(stories.model), config)
        assert predict_memory(stories.model, config).weight_bytes == memory_report(model).weight_bytes, name


def test_empty_layer_matches_quantize_layer_for_every_method():
    from lowbit.preflight import _UniformStats

    for name in method_names():
        if name == "mixed" or make_config(name).empty_layer(4, 8) is None:
            continue
        for shape in [(33, 172), (7, 5)]:
            config = make_config(name, **({"preset": "fast"} if name == "aqlm" else {}))
            stats = torch.eye(shape[1]) if config.calibrates_blocks else _UniformStats()
            real = config.quantize_layer(torch.randn(*shape), torch.randn(shape[0]), stats)
            empty = config.empty_layer(*shape, has_bias=True)
            assert type(real) is type(empty) and real.spec() == empty.spec(), name
            assert {n: (b.shape, b.dtype) for n, b in real.named_buffers()} == {
                n: (b.shape, b.dtype) for n, b in empty.named_buffers()}, name


@pytest.mark.parametrize(("text", "value"), [("6GB", 6 * 10**9), ("512MiB", 512 * 2**20), ("1.5g", 1.5e9), ("1000", 1000)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "6XB", "-1GB", "GB", "0MB"])
def test_bad_sizes_are_one_line_errors(text):
    with pytest.raises(LowbitError, match="cannot read memory size"):
        parse_size(text)


def test_parse_duration():
    assert parse_duration("30m") == 1800 and parse_duration("2h") == 7200 and parse_duration("90s") == 90
    with pytest.raises(LowbitError, match="cannot read duration"):
        parse_duration("soon")


def test_cli_recommend_text_and_json(run_cli, stories_path):
    code, out, err = run_cli("recommend", stories_path, "--memory-budget", "300KB", "--priority", "memory")
    assert code == 0, err
    assert "lowbit recommend:" in out and "#1 " in out and "make it: lowbit quantize" in out and "excluded:" in out
    code, out, err = run_cli("recommend", stories_path, "--memory-budget", "300KB", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["ranked"] and all(e["memory_bytes"] <= 300_000 for e in rec["ranked"])
    assert all(e["memory_origin"] == "exact" and e["quality"]["origin"] == "prior" for e in rec["ranked"])
    assert all("over the" in e["reason"] for e in rec["excluded"] if e["memory_bytes"] and e["memory_bytes"] > 300_000)


def test_cli_verify_measures_the_top_k_and_picks_the_best_measured(run_cli, stories_path, tmp_path):
    """--verify 2 on stories260k: both settings measured into the store, the final choice the best of them."""
    results = tmp_path / "res"
    code, out, err = run_cli("recommend", stories_path, "--calibration-data", "no", "--verify", "2",
                             "--results", results, "--json")
    assert code == 0, err
    rec = json.loads(out)
    v = rec["verification"]
    assert len(v["before"]) == 2 and not v["failed"] and sorted(v["after"]) == sorted(v["before"])
    measured = [e for e in rec["ranked"] if e["label"] in v["before"]]
    assert all(e["quality"]["origin"] == "measured" for e in measured)
    assert v["final"] == rec["ranked"][0]["label"] == max(measured, key=lambda e: e["score"])["label"]
    lines = (results / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3  # the unquantized baseline and the two settings


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--priority", "cheap"], "priority"),
        (["--device", "tpu"], "device"),
        (["--calibration-data", "maybe"], "--calibration-data answer"),
        (["--memory-budget", "lots"], "cannot read memory size"),
        (["--max-quantization-time", "soon"], "cannot read duration"),
        (["--verify", "2"], "--verify needs --results DIR"),
        (["--verify-preset", "huge"], "verify preset"),
        (["--mixed", "rtn"], "--mixed needs --memory-budget"),
    ],
)
def test_cli_recommend_errors(run_cli, stories_path, args, pattern):
    code, _, err = run_cli("recommend", stories_path, *args)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: ")
    assert pattern in lines[0], lines[0]
