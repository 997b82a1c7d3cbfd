"""The committed H100 reference profile: out of `profiles/` (where `solve` discovers the user's own), loadable
with today's loader, and the very file the example plans and the GPU benchmark scripts were solved on."""

import importlib.util
from pathlib import Path

import pytest

from mosaic_search.artifacts import schema

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "benchmarks" / "results" / "profiles" / "Qwen--Qwen3-VL-4B-Instruct--nvidia-h100-80gb-hbm3.json"
EXAMPLES = sorted((ROOT / "layer_plans" / "examples" / "Qwen--Qwen3-VL-4B-Instruct").glob("*.json"))


def test_the_reference_profile_loads_as_an_h100_profile_of_qwen3_vl_4b():
    prof = schema.load_profile(PROFILE)
    assert prof.header.model.id == "Qwen/Qwen3-VL-4B-Instruct"
    assert prof.header.model.num_hidden_layers == 36
    assert prof.header.env["device_name"] == "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("plan", EXAMPLES, ids=lambda p: p.stem)
def test_the_example_plans_were_solved_on_this_very_file(plan):
    assert schema.load_plan(plan).header.inputs["profile"] == schema.sha256_file(PROFILE)


def test_the_gpu_benchmarks_default_to_it():
    spec = importlib.util.spec_from_file_location("gpu_plans", ROOT / "benchmarks" / "gpu_plans.py")
    gpu_plans = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_plans)
    assert ROOT / gpu_plans.PROFILE == PROFILE


def test_the_three_example_plans_are_there():
    assert [p.stem for p in EXAMPLES] == ["tpot-1.5x-c96k", "tpot-2.5x-c96k", "ttft-1.5x-p32k"]
