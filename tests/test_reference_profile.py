"""The committed H100 reference profile: out of `profiles/` (where `solve` discovers the user's own), loadable
with today's loader, and the very file the example plans and the GPU benchmark scripts were solved on."""

import importlib.util
from pathlib import Path

import pytest

from mosaic_search.artifacts.header import sha256_file
from mosaic_search.artifacts.plan import load_plan
from mosaic_search.artifacts.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "benchmarks" / "results" / "profiles" / "Qwen--Qwen3-VL-4B-Instruct--nvidia-h100-80gb-hbm3.json"
EXAMPLES = sorted((ROOT / "layer_plans" / "examples" / "Qwen--Qwen3-VL-4B-Instruct").glob("*.json"))


def test_the_reference_profile_loads_as_an_h100_profile_of_qwen3_vl_4b():
    prof = load_profile(PROFILE)
    assert prof.header.model.id == "Qwen/Qwen3-VL-4B-Instruct"
    assert prof.header.model.num_hidden_layers == 36
    assert prof.header.env["device_name"] == "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("plan", EXAMPLES, ids=lambda p: p.stem)
def test_the_example_plans_were_solved_on_this_very_file(plan):
    assert load_plan(plan).header.inputs["profile"] == sha256_file(PROFILE)


def test_the_gpu_benchmarks_default_to_it():
    spec = importlib.util.spec_from_file_location("gpu_plans", ROOT / "benchmarks" / "gpu_plans.py")
    gpu_plans = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_plans)
    assert ROOT / gpu_plans.PROFILE == PROFILE


def test_the_three_example_plans_are_there():
    assert [p.stem for p in EXAMPLES] == ["tpot-1.5x-c96k", "tpot-2.5x-c96k", "ttft-1.5x-p32k"]


DERIVED = ROOT / "benchmarks" / "results" / "serving-4b" / "profile-h100-with-weight-bytes.json"


def test_the_derived_serving_profile_is_the_h100_profile_plus_computed_weight_bytes():
    """benchmarks/serving_4b.py: every measured field as committed, the weight bytes computed (and said to be)."""
    from mosaic_search.operators import Candidate

    src, derived = load_profile(PROFILE), load_profile(DERIVED)
    assert (derived.workloads, derived.entries, derived.baseline_ms, derived.fixed_ms, derived.header.model) == (
        src.workloads, src.entries, src.baseline_ms, src.fixed_ms, src.header.model)
    assert derived.header.inputs["profile"] == sha256_file(PROFILE)
    assert derived.header.env["latencies_measured_at"] == src.header.created_at
    assert "computed from the shipped config" in derived.header.env["derived"]
    layer = dict(derived.weight_bytes)
    # one decoder layer at bf16: q and o 2560x4096, k and v 2560x1024, q/k norms 128, two norms 2560, MLP 3x2560x9728
    assert layer[Candidate.teacher()] == 2 * (2 * 2560 * 4096 + 2 * 2560 * 1024 + 2 * 128 + 2 * 2560 + 3 * 2560 * 9728)
    assert layer[Candidate.of("none")] == 2 * (2 * 2560 + 3 * 2560 * 9728) and layer[Candidate.of("drop")] == 0
    assert {c for c, _ in derived.weight_bytes} == {e.candidate for e in src.entries}
