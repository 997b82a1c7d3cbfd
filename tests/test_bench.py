"""`mosaic bench`: plans timed with random weights, built directories loaded as users load them."""

from __future__ import annotations

import pytest

from mosaic_search import schema
from mosaic_search.speedup import bench
from mosaic_search.errors import UsageError
from mosaic_search.models import load_config, model_ref
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
    plan = schema.LayerPlan(header=schema.Header.new(ref), layers=tuple(layers), predicted=predicted, objective=0.0,
                            constraints={}, solver={})
    return schema.save(plan, tmp_path / "plan.json")


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
