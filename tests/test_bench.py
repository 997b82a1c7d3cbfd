"""`mosaic bench`: plans timed with random weights, built directories loaded as users load them."""

from __future__ import annotations

import pytest

from mosaic_search.artifacts.header import Header, save
from mosaic_search.artifacts.plan import LayerPlan
from mosaic_search.errors import UsageError
from mosaic_search.hf.models import load_config, model_ref
from mosaic_search.latency.bench import bench
from mosaic_search.operators import Candidate


class AlternatingTimer:
    """Runs each closure once (so the real code path executes) and reports 2 ms for the teacher, 1 ms for the model."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn, phase):
        import torch

        with torch.no_grad():
            fn()
        self.calls += 1
        return [2.0] if self.calls % 2 else [1.0]


def _plan(tmp_path, layers, predicted):
    ref = model_ref("tiny", load_config("tiny"))
    plan = LayerPlan(header=Header.new(ref), layers=tuple(layers), predicted=predicted, objective=0.0,
                     constraints={}, solver={})
    return save(plan, tmp_path / "plan.json")


def _layers(n):
    ops = [Candidate.of("gqa"), Candidate.of("swa", {"window": 16}), Candidate.of("gdn"), Candidate.of("none")]
    return [ops[i % len(ops)] for i in range(n)]


@pytest.mark.parametrize("rounds", [1, 3])
def test_plan_is_timed_against_the_teacher_and_compared_with_prediction(tmp_path, rounds):
    n = load_config("tiny").num_hidden_layers
    path = _plan(tmp_path, _layers(n), {"decode-b1-c64": {"speedup": 2.5, "latency_ms": 1, "baseline_ms": 2.5},
                                        "prefill-b1-p32": {"speedup": 1.6, "latency_ms": 1, "baseline_ms": 1.6}})
    timer = AlternatingTimer()
    rows = bench(path, timer=timer, rounds=rounds)
    assert timer.calls == 4 * rounds  # teacher and model alternate in every round
    by = {r["workload"]: r for r in rows}
    assert set(by) == {"decode-b1-c64", "prefill-b1-p32"}
    assert by["decode-b1-c64"]["measured_speedup"] == 2.0
    assert by["decode-b1-c64"]["error_pct"] == pytest.approx(25.0)
    assert by["prefill-b1-p32"]["error_pct"] == pytest.approx(-20.0)
    # what bench discovered is named: the plan's teacher and its predicted workloads
    assert {(r["teacher"], r["workloads_from"]) for r in rows} == {("tiny", "the plan's predictions")}


def test_a_paired_timer_measures_the_speedup_through_a_drifting_machine(tmp_path):
    """Each model step timed right after a teacher step: the machine's speed changing 3x between
    measurements leaves the measured speedup at the true work ratio."""
    from conftest import WorkTimer

    n = load_config("tiny").num_hidden_layers
    path = _plan(tmp_path, [Candidate.of("drop")] * (n // 2) + [Candidate.of("gqa")] * (n - n // 2), {})
    steady = bench(path, workloads=["decode:32"], timer=WorkTimer(paired=False, speeds=(1.0,)), rounds=1)
    drifting = bench(path, workloads=["decode:32"], timer=WorkTimer(speeds=(1.0, 3.0, 0.5)), rounds=3)
    assert steady[0]["measured_speedup"] > 1.5
    assert drifting[0]["measured_speedup"] == pytest.approx(steady[0]["measured_speedup"])
    assert drifting[0]["teacher_ms"] / drifting[0]["model_ms"] == pytest.approx(drifting[0]["measured_speedup"])


def test_explicit_workloads_without_prediction(tmp_path):
    n = load_config("tiny").num_hidden_layers
    rows = bench(_plan(tmp_path, _layers(n), {}), workloads=["decode:32:b2"], timer=AlternatingTimer())
    assert rows[0]["workload"] == "decode-b2-c32" and rows[0]["predicted_speedup"] is None
    assert rows[0]["workloads_from"] == "given"


def test_bad_targets(tmp_path):
    with pytest.raises(UsageError, match="expected a built model directory or a plan"):
        bench(tmp_path / "nothing.bin")
    with pytest.raises(UsageError, match="not a mosaic model directory"):
        bench(tmp_path)
    n = load_config("tiny").num_hidden_layers
    with pytest.raises(UsageError, match="no workloads"):
        bench(_plan(tmp_path, _layers(n), {}), timer=AlternatingTimer())
    with pytest.raises(UsageError, match="not available"):
        bench(_plan(tmp_path, _layers(n), {}), device="cuda", workloads=["decode:8"])


@pytest.mark.slow
def test_generate_is_timed_end_to_end_against_an_all_gqa_build_and_the_stock_teacher(tmp_path, monkeypatch):
    """`bench --generate`: the built directory loaded as users load it, and both references, each generating the
    requested tokens; speedups are the ratios of the reported times, next to the plan's prediction."""
    from transformers import GenerationMixin

    from mosaic_search import builder
    from mosaic_search.latency.bench import bench_generate

    n = load_config("tiny").num_hidden_layers
    plan = _plan(tmp_path, _layers(n), {"decode-b2-c16": {"speedup": 1.4, "latency_ms": 1, "baseline_ms": 1.4}})
    built = builder.build(plan, out=tmp_path / "built")
    calls = []
    real = GenerationMixin.generate

    def counted(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls.append((type(self).__name__, kwargs["max_new_tokens"], out.shape[1] - args[0].shape[1]))
        return out

    monkeypatch.setattr(GenerationMixin, "generate", counted)
    rows = bench_generate(built, new_tokens=6, batch_size=2, rounds=2)
    assert [(r["context"], r["batch_size"]) for r in rows] == [(16, 2)]  # the plan's decode context
    row = rows[0]
    assert row["predicted_tpot_speedup"] == 1.4 and row["stock_mode"] == "dynamic"
    if row["model_tpot_ms"] > 0:  # a loaded machine can leave 6 tokens no slower than one
        assert row["tpot_speedup_vs_all-gqa"] == pytest.approx(row["all-gqa_tpot_ms"] / row["model_tpot_ms"])
    assert row["ttft_speedup_vs_stock"] == pytest.approx(row["stock_ttft_ms"] / row["model_ttft_ms"])
    assert all(row[f"{m}_ttft_ms"] > 0 and row[f"{m}_tokens_per_s"] > 0 for m in ("model", "all-gqa", "stock"))
    assert all(asked == got for _, asked, got in calls)  # every call generated what it was timed for
    kinds = {name for name, _, _ in calls}
    assert kinds == {"MosaicQwen3ForCausalLM", "Qwen3ForCausalLM"}
    assert len(calls) == 3 * (1 + 2 * 2)  # per model: a warm-up, then a TTFT and a full call per round


def test_generate_bench_needs_a_built_directory(tmp_path):
    from mosaic_search.latency.bench import bench_generate

    n = load_config("tiny").num_hidden_layers
    with pytest.raises(UsageError, match="built model directory, not a plan"):
        bench_generate(_plan(tmp_path, _layers(n), {}))
