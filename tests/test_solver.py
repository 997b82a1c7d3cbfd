"""Stage 3: the MIP against exhaustive search, the baselines, the frontier, the checks and the CLI (no torch)."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic_search import to_frame
from mosaic_search.artifacts.header import Header, ModelRef, save, sha256_file, to_json
from mosaic_search.artifacts.pareto import load_pareto
from mosaic_search.artifacts.plan import load_plan
from mosaic_search.artifacts.profile import LatencyProfile, ProfileEntry, Workload
from mosaic_search.artifacts.sensitivity import SensitivityEntry, SensitivityTable, load_sensitivity
from mosaic_search.cli import main
from mosaic_search.cli.plots import plot_frontier
from mosaic_search.errors import InfeasibleError, MosaicError, StaleInputError, UsageError
from mosaic_search.operators import Candidate, unbuildable
from mosaic_search.search import baselines, problem, solver

G, D, N, X = (Candidate.of(op) for op in ("gqa", "gdn", "none", "drop"))
S512, S2K = Candidate.of("swa", {"window": 512}), Candidate.of("swa", {"window": 2048})
POOL = [G, D, S512, S2K, N, X]
WORKLOADS = [Workload("prefill_4k", "prefill", 1, 4096), Workload("decode_4k", "decode", 1, 4096),
             Workload("decode_16k", "decode", 1, 16384)]
H100 = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "torch": "2.9.0"}


def make(layers=4, cands=POOL, workloads=WORKLOADS, seed=0, sha="cfg", env=H100, lat=None, loss=None,
         status=None, cache=None, model="org/tiny"):
    """A profile and a sensitivity table built in code; gqa is the teacher (loss 0, the slowest)."""
    rng = random.Random(seed)
    lat = lat or (lambda l, c, w: 10.0 if c == G else round(rng.uniform(1, 9), 3))
    loss = loss or (lambda l, c: 0.0 if c == G else round(rng.uniform(0.01, 1), 4))
    status = status or (lambda l, c, w: "ok")
    cache = cache or (lambda l, c, w: {"gqa": 1000, "swa": 100, "gdn": 10}.get(c.op, 0))
    ref = ModelRef(model, sha, layers)
    entries = tuple(ProfileEntry(l, c, w.name, lat(l, c, w.name), None, None, status(l, c, w.name),
                                 cache(l, c, w.name)) for w in workloads for l in range(layers) for c in cands)
    fixed = {w.name: 2.0 for w in workloads}
    base = {w.name: fixed[w.name] + sum(e.latency_ms for e in entries if e.workload == w.name and e.candidate == G)
            for w in workloads}
    prof = LatencyProfile(Header.new(ref, env=env), tuple(workloads), base, fixed, entries, (G,) * layers)
    sens = SensitivityTable(Header.new(ref), "kl", {}, tuple(
        SensitivityEntry(l, c, loss(l, c), 0.0, 0) for l in range(layers) for c in cands))
    return prof, sens


def brute(prof, sens, speedup, max_gqa=None):
    """The least-loss assignment by trying every one, or None when none meets every budget."""
    lat = {(e.layer, e.candidate, e.workload): e.latency_ms for e in prof.entries}
    loss = {(e.layer, e.candidate): e.kl for e in sens.entries}
    cands = sorted({e.candidate for e in prof.entries})
    best = None
    for combo in itertools.product(cands, repeat=prof.header.model.num_hidden_layers):
        if (max_gqa is not None and combo.count(G) > max_gqa) or unbuildable(combo):
            continue
        if all(prof.fixed_ms[w.name] + sum(lat[l, c, w.name] for l, c in enumerate(combo))
               <= prof.baseline_ms[w.name] / speedup for w in prof.workloads):
            obj = sum(loss[l, c] for l, c in enumerate(combo))
            best = obj if best is None else min(best, obj)
    return best


def files(path: Path) -> list[str]:
    """Every file under `path`, relative: to show that a failure wrote nothing."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def save_pair(tmp_path, prof, sens, name="a"):
    """Write both tables as files, as the CLI reads them."""
    p, s = tmp_path / f"{name}-profile.json", tmp_path / f"{name}-scores.json"
    save(prof, p)
    save(sens, s)
    return str(p), str(s)


# ---- the MIP is exact ----------------------------------------------------------------------------

instances = st.fixed_dictionaries({
    "layers": st.integers(1, 4), "cands": st.integers(1, 4), "workloads": st.integers(1, 3),
    "seed": st.integers(0, 10_000), "speedup": st.sampled_from([1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0]),
    "max_gqa": st.none() | st.integers(0, 2)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances)
def test_mip_equals_exhaustive_search(case):
    prof, sens = make(case["layers"], POOL[:case["cands"]], WORKLOADS[:case["workloads"]], case["seed"])
    want = brute(prof, sens, case["speedup"], case["max_gqa"])
    kw = dict(speedup=case["speedup"], max_count={"gqa": case["max_gqa"]} if case["max_gqa"] is not None else None,
              mip_gap=0, write=False)
    if want is None:
        with pytest.raises(InfeasibleError, match="largest reachable speedup|no buildable assignment"):
            solver.solve(prof, sens, **kw)
        return
    plan = solver.solve(prof, sens, **kw)
    assert plan.objective == pytest.approx(want, abs=1e-9)
    assert len(plan.layers) == case["layers"]
    assert all(v["speedup"] >= case["speedup"] * (1 - 1e-9) for v in plan.predicted.values())
    if case["max_gqa"] is not None:
        assert plan.layers.count(G) <= case["max_gqa"]


@settings(max_examples=20, deadline=None)
@given(st.integers(8, 14), st.integers(0, 10_000), st.floats(1.1, 2.5), st.booleans())
def test_column_fixing_keeps_the_optimum_on_larger_instances(layers, seed, speedup, cap):
    """Too big for brute force: the reduced MIP must match the plain MIP solved to a zero gap."""
    prof, sens = make(layers, POOL, WORKLOADS, seed)
    p = problem.prepare(prof, sens, speedup=speedup, max_count={"drop": layers // 4} if cap else None)
    plain, _ = solver.run_mip(p, mip_gap=0, reduce=False)
    fast, info = solver.run_mip(p, mip_gap=0)
    assert (plain is None) == (fast is None)
    if plain is not None:
        assert sum(p.choice(l, cs[0]).loss for l, cs in enumerate(fast)) == pytest.approx(
            sum(p.choice(l, cs[0]).loss for l, cs in enumerate(plain)), abs=1e-9)
        assert info["columns_kept"] <= info["columns"]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(1.0, 3.0), st.floats(1.0, 3.0))
def test_objective_never_rises_as_the_budget_loosens(seed, a, b):
    prof, sens = make(5, POOL, WORKLOADS, seed)
    loose, tight = sorted((a, b))
    try:
        hard = solver.solve(prof, sens, speedup=tight, mip_gap=0, write=False).objective
    except InfeasibleError:
        return
    assert solver.solve(prof, sens, speedup=loose, mip_gap=0, write=False).objective <= hard + 1e-9


def test_plan_artifact_round_trips_and_records_the_inputs(tmp_path):
    prof, sens = make(6, seed=3)
    p, s = save_pair(tmp_path, prof, sens)
    out = tmp_path / "plan.json"
    plan = solver.solve(p, s, speedup=1.6, out=out)
    back = load_plan(out, num_layers=6)
    assert back.layers == plan.layers and back.objective == pytest.approx(plan.objective)
    assert back.header.env == prof.header.env and back.header.model == prof.header.model
    assert back.header.inputs == {"profile": sha256_file(p), "scores": sha256_file(s)}
    assert json.loads(out.read_text())["pattern"] == plan.pattern
    assert set(back.predicted) == {w.name for w in WORKLOADS}
    assert back.solver["name"] == "highs" and back.solver["mip_gap"] is not None
    assert [r["layer"] for r in back.solver["per_layer"]] == list(range(6))


def test_speedups_are_predicted_against_the_teacher_under_the_same_additive_model(tmp_path):
    """A measured whole teacher 25% slower than fixed + its layers (the glue that layers timed alone miss)
    must not turn into 25% of promised speedup: targets and predictions use fixed + the gqa layers."""
    import dataclasses

    prof, sens = make(6, seed=4)
    additive = dict(prof.baseline_ms)
    prof = dataclasses.replace(prof, baseline_ms={w: 1.25 * ms for w, ms in additive.items()})
    assert all(prof.teacher_ms(w) == pytest.approx(ms) for w, ms in additive.items())
    p, s = save_pair(tmp_path, prof, sens)
    plan = solver.solve(p, s, speedup=1.6, out=tmp_path / "plan.json")
    for w, pred in plan.predicted.items():
        assert pred["speedup"] == pytest.approx(additive[w] / pred["latency_ms"])
        assert pred["measured_baseline_ms"] == pytest.approx(1.25 * additive[w])
    assert min(pred["speedup"] for pred in plan.predicted.values()) >= 1.6 - 1e-6
    # without a gqa entry in every layer there is no additive teacher: the measured whole model is the reference
    partial = dataclasses.replace(prof, entries=tuple(e for e in prof.entries if (e.layer, e.candidate) != (0, G)))
    assert partial.teacher_ms("decode_4k") == prof.baseline_ms["decode_4k"]


# ---- constraints ---------------------------------------------------------------------------------

def test_workload_narrowing_and_phase_targets():
    prof, sens = make(6, seed=1)
    plan = solver.solve(prof, sens, speedup=1.8, workloads=["decode_16k"], write=False)
    assert set(plan.predicted) == {"decode_16k"} and plan.predicted["decode_16k"]["speedup"] >= 1.8 - 1e-9
    plan = solver.solve(prof, sens, ttft_speedup=1.2, tpot_speedup=2.0, write=False)
    assert plan.constraints["targets"] == {"prefill_4k": 1.2, "decode_4k": 2.0, "decode_16k": 2.0}
    assert plan.predicted["prefill_4k"]["speedup"] >= 1.2 - 1e-9 and plan.predicted["decode_4k"]["speedup"] >= 2 - 1e-9
    with pytest.raises(UsageError, match='unknown workload "decode_4"'):
        solver.solve(prof, sens, speedup=1.5, workloads=["decode_4"], write=False)


def test_pins_ops_and_counts():
    prof, sens = make(6, seed=2)
    plan = solver.solve(prof, sens, speedup=1.7, pins=["0=gqa", "5=swa"], write=False)
    assert plan.layers[0] == G and plan.layers[5].op == "swa"
    plan = solver.solve(prof, sens, speedup=1.5, ops="gqa,swa:window=512,none", write=False)
    assert set(plan.layers) <= {G, S512, N}
    plan = solver.solve(prof, sens, speedup=1.2, min_count=["gqa=3"], max_count={"drop": 0, "none": 1}, write=False)
    assert plan.layers.count(G) >= 3 and X not in plan.layers and plan.layers.count(N) <= 1
    with pytest.raises(InfeasibleError, match="no buildable assignment"):
        solver.solve(prof, sens, speedup=1.1, min_count={"gqa": 4}, max_count={"gqa": 3}, write=False)


def test_status_not_ok_and_missing_scores_are_not_allowed():
    prof, sens = make(3, seed=4, status=lambda l, c, w: "oom" if c == X and w == "decode_16k" else "ok")
    sens = SensitivityTable(sens.header, "kl", {},
                            tuple(e for e in sens.entries if not (e.layer == 1 and e.candidate == N)))
    p = problem.prepare(prof, sens, speedup=1.5)
    assert all(X not in cs for cs in p.allowed) and N not in p.allowed[1] and N in p.allowed[0]
    # narrowed to the workloads drop ran on, drop is back
    assert X in problem.prepare(prof, sens, speedup=1.5, workloads=["prefill_4k"]).allowed[0]


def test_cache_bound_reads_the_longest_context_per_sequence():
    # gqa's cache grows with the context, a window's does not
    prof, sens = make(4, seed=5, cache=lambda l, c, w: {"gqa": 4000, "swa": 400, "gdn": 40}.get(c.op, 0) *
                      (4 if w == "decode_16k" and c.op == "gqa" else 1))
    plan = solver.solve(prof, sens, speedup=1.0, max_cache_bytes=2 * 1000, cache_batch=2, write=False)
    assert plan.solver["cache_bytes"] <= 2000 and plan.constraints["cache_workload"] == "decode_16k"
    assert G not in plan.layers  # one gqa layer alone holds 2 x 16000 bytes
    plan = solver.solve(prof, sens, speedup=1.0, max_cache_bytes=8000, cache_context=4096, write=False)
    assert plan.constraints["cache_workload"] == "decode_4k" and plan.solver["cache_bytes"] <= 8000
    with pytest.raises(UsageError, match="cache_context 999"):
        solver.solve(prof, sens, speedup=1.0, max_cache_bytes=1, cache_context=999, write=False)


# ---- infeasible, bad and stale input -------------------------------------------------------------

def test_infeasible_reports_the_best_reachable_speedup_and_writes_nothing(tmp_path):
    prof, sens = make(3, seed=6)
    lat = {(e.layer, e.candidate, e.workload): e.latency_ms for e in prof.entries}
    best = {w.name: prof.baseline_ms[w.name] / min(
        prof.fixed_ms[w.name] + sum(lat[l, c, w.name] for l, c in enumerate(combo))
        for combo in itertools.product(POOL, repeat=3) if not unbuildable(combo)) for w in prof.workloads}
    with pytest.raises(InfeasibleError) as e:
        solver.solve(prof, sens, speedup=50, out=tmp_path / "plan.json")
    msg = str(e.value)
    assert "\n" not in msg and all(f"{w} {v:.3f}x (target 50.000x)" in msg for w, v in best.items())
    assert files(tmp_path) == []


@pytest.mark.parametrize("kw, match", [
    (dict(speedup=0), "speedup must be a positive number, got 0"),
    (dict(speedup=-1.5), "got -1.5"),
    (dict(speedup=float("nan")), "speedup must be a positive"),
    (dict(speedup=1.5, pins=["2=gqq"]), 'pins 2=gqq: unknown operator "gqq" \\(did you mean "gqa"\\?\\)'),
    (dict(speedup=1.5, pins=["9=gqa"]), "pins 9=gqa: layer 9 is outside 0..3"),
    (dict(speedup=1.5, pins=["x=gqa"]), "the layer must be an integer"),
    (dict(speedup=1.5, pins=["1=mla:rank=64"]), "pins 1=mla:rank=64: not an allowed candidate at layer 1"),
    (dict(speedup=1.5, pins=["1=gqa", "1=gdn"]), r"pins 1=gdn: not an allowed candidate at layer 1 \(after 1=gqa: "
                                                 r"allowed: gqa\)"),
    (dict(speedup=1.5, max_count=["gdn=-1"]), "max_count gdn=-1: a count of layers must be within 0..4"),
    (dict(speedup=1.5, min_count=["gqa=5"]), "min_count gqa=5: a count of layers must be within 0..4"),
    (dict(strategy="pattern:GGDDG"), "pattern GGDDG: 5 symbols for a model of 4 layers"),
    (dict(speedup=1.5, ops=""), "ops: empty operator list"),
    (dict(speedup=1.5, cache_context=4096), "describe the `max_cache_bytes` bound"),
    (dict(speedup=1.5, ops="mla:rank=100000"), "ops mla:rank=100000: not in both the profile and the sensitivity"),
    (dict(speedup=1.5, min_count=["gdm=1"]), 'did you mean "gdn"'),
    (dict(speedup=1.5, ops="gqa,sw"), 'ops: unknown operator "sw"'),
    (dict(speedup=1.5, metric="ppl"), 'unknown metric "ppl"'),
    (dict(speedup=1.5, strategy="annealing"), 'unknown strategy "annealing"'),
    (dict(), "nothing to trade quality for"),
    (dict(tpot_speedup=2, workloads=["prefill_4k"]), "no decode workload in scope"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, kw, match):
    prof, sens = make(4)
    with pytest.raises(UsageError, match=match) as e:
        solver.solve(prof, sens, out=tmp_path / "plan.json", **kw)
    assert "\n" not in str(e.value) and files(tmp_path) == []


def test_mismatched_and_stale_inputs(tmp_path):
    prof, sens = make(4)
    _, other = make(4, sha="another-config", model="org/other")
    with pytest.raises(StaleInputError, match="pass `allow_stale`") as e:
        solver.solve(prof, other, speedup=1.2, write=False)
    assert e.value.exit_code == 4
    assert solver.solve(prof, other, speedup=1.2, allow_stale=True, write=False).objective >= 0
    _, deeper = make(5)
    for stale in (False, True):  # tables that cannot line up are refused even with allow_stale
        with pytest.raises(UsageError, match="the profile has 4 layers .* sensitivity table has 5"):
            solver.solve(prof, deeper, speedup=1.2, allow_stale=stale, write=False)
    with pytest.raises(StaleInputError, match='device="NVIDIA H100 80GB HBM3", not "a100"'):
        solver.solve(prof, sens, speedup=1.2, device="a100", write=False)
    assert solver.solve(prof, sens, speedup=1.2, device="h100", write=False)
    assert solver.solve(prof, sens, speedup=1.2, device="a100", allow_stale=True, write=False)
    with pytest.raises(StaleInputError, match='torch="2.9.0", not "2.5.1"'):
        solver.solve(prof, sens, speedup=1.2, target_env=["torch=2.5.1"], write=False)


# ---- verify, don't trust -------------------------------------------------------------------------

@pytest.mark.parametrize("corrupt", ["over budget", "two in a layer", "wrong objective", "not allowed"])
def test_verification_refuses_a_corrupted_solver_answer(tmp_path, monkeypatch, corrupt):
    prof, sens = make(4, seed=7)
    real = solver.run_mip

    def bad(p, **kw):
        chosen, info = real(p, **kw)
        if corrupt == "over budget":
            chosen = [[G] for _ in chosen]
            info["objective"] = 0.0
        elif corrupt == "two in a layer":
            chosen[1] = [G, D]
        elif corrupt == "wrong objective":
            info["objective"] += 0.5
        else:
            chosen[0] = [Candidate.of("kda")]
        return chosen, info

    monkeypatch.setattr(solver, "run_mip", bad)
    with pytest.raises(MosaicError, match="solver check failed") as e:
        solver.solve(prof, sens, speedup=1.5, out=tmp_path / "plan.json")
    assert e.value.exit_code == 1 and files(tmp_path) == []


# ---- baselines -----------------------------------------------------------------------------------

def test_greedy_meets_the_budget_and_is_no_better_than_the_mip():
    for seed in range(5):
        prof, sens = make(8, seed=seed)
        mip = solver.solve(prof, sens, speedup=1.6, write=False)
        greedy = solver.solve(prof, sens, speedup=1.6, strategy="greedy", write=False)
        assert greedy.solver["name"] == "greedy" and set(greedy.predicted) == set(mip.predicted)
        assert all(v["speedup"] >= 1.6 - 1e-9 for v in greedy.predicted.values())
        assert greedy.objective >= mip.objective - 1e-9
    with pytest.raises(UsageError, match="greedy strategy does not support min counts"):
        solver.solve(prof, sens, speedup=1.6, strategy="greedy", min_count={"gqa": 1}, write=False)
    with pytest.raises(InfeasibleError, match="greedy stalled .* largest reachable speedup"):
        solver.solve(prof, sens, speedup=40, strategy="greedy", write=False)


def test_pattern_tiles_symbols_and_takes_the_least_loss_window():
    # swa:window=2048 costs less loss than 512 at every layer, so S means window 2048
    prof, sens = make(6, seed=8, loss=lambda l, c: {G: 0.0, S2K: 0.1, S512: 0.3}.get(c, 0.5))
    plan = solver.solve(prof, sens, strategy="pattern:SSG", write=False)
    assert plan.pattern == "SSGSSG" and plan.layers[0] == S2K and plan.solver["name"] == "pattern"
    assert plan.objective == pytest.approx(4 * 0.1)
    assert solver.solve(prof, sens, strategy="pattern:SSG", ops="gqa,swa:window=512", write=False).layers[0] == S512
    assert solver.solve(prof, sens, strategy="pattern:DDDG", pins={0: "gqa"}, write=False).pattern == "GDDGDD"
    with pytest.raises(InfeasibleError, match="pattern GGGD misses the constraints: .* reaches"):
        solver.solve(prof, sens, strategy="pattern:GGGD", speedup=3, write=False)
    with pytest.raises(UsageError, match='unknown pattern symbol "Q"'):
        solver.solve(prof, sens, strategy="pattern:DQ", write=False)
    with pytest.raises(UsageError, match='pattern symbol "d": a lower-case letter marks a plan\'s layer with a '
                                         'changed MLP and does not say which'):
        solver.solve(prof, sens, strategy="pattern:Dd", write=False)


def test_no_strategy_returns_a_plan_without_an_attention_layer():
    # dropping is the fastest and the cheapest move everywhere: only the validity rule keeps attention
    prof, sens = make(4, seed=3, lat=lambda l, c, w: {"gqa": 10.0, "drop": 0.1}.get(c.op, 5.0),
                      loss=lambda l, c: {"gqa": 0.0, "drop": 0.0}.get(c.op, 0.5))
    best = prof.baseline_ms["decode_4k"] / (2.0 + 5.0 + 3 * 0.1)  # one swa layer, three dropped
    for strategy in ("mip", "greedy"):
        plan = solver.solve(prof, sens, speedup=best * 0.999, strategy=strategy, write=False)
        assert unbuildable(plan.layers) is None and plan.pattern.count("X") == 3
    assert all(unbuildable([Candidate.parse(c) for c in pt["layers"]]) is None
               for pt in solver.sweep("1.1:40:0.5", profile=prof, scores=sens, write=False).points if pt["feasible"])
    with pytest.raises(InfeasibleError, match=f"decode_4k {best:.3f}x"):
        solver.solve(prof, sens, speedup=best * 1.01, write=False)
    with pytest.raises(InfeasibleError, match="pattern XN misses the constraints: only drop, none layers"):
        solver.solve(prof, sens, strategy="pattern:XN", write=False)
    with pytest.raises(InfeasibleError, match="no buildable assignment"):
        solver.solve(prof, sens, speedup=1.1, ops="gdn,none,drop", write=False)


def test_incumbent_heuristic_returns_a_feasible_assignment_or_none():
    import numpy as np

    cost, layer = np.array([0.0, 1.0, 0.0, 2.0]), np.array([0, 0, 1, 1])
    A, b = np.array([[10.0, 1.0, 10.0, 1.0]]), np.array([11.5])
    cur = baselines.incumbent(np.array([1.0, 0.0, 1.0, 0.0]), cost, A, b, layer)
    assert list(cur) == [0, 3] or list(cur) == [1, 2]
    assert list(cur) == [1, 2]  # the cheaper repair: loss 1 instead of 2
    assert baselines.incumbent(np.array([1.0, 0.0, 1.0, 0.0]), cost, A, np.array([1.0]), layer) is None


# ---- the problem ---------------------------------------------------------------------------------

def test_one_constraint_check_names_every_broken_rule():
    prof, sens = make(4, seed=5)
    p = problem.prepare(prof, sens, speedup=1.5, max_cache_bytes=1500, max_count={"gqa": 1}, min_count={"none": 1})
    assert p.choice(0, G).loss == 0.0 and p.choice(0, G).latency_ms == {w.name: 10.0 for w in WORKLOADS}
    assert p.choice(0, G).cache_bytes == 1000 and p.cache.workload == "decode_16k"  # the longest context
    teacher = [G] * 4
    rows = problem.predicted(p, teacher)
    assert all(row["latency_ms"] == prof.predicted_ms(w, teacher) == 2.0 + 40.0 and row["speedup"] == 1.0
               for w, row in rows.items())
    assert problem.violations(p, teacher, 0.0) == [
        *(f"{w.name} reaches 1.000x (target 1.500x)" for w in WORKLOADS), "cache 4000 bytes over the bound of 1500",
        "0 layers of none (min 1)", "4 layers of gqa (max 1)"]
    assert "only drop layers" in problem.violations(p, [X] * 4, 0.0)[-1]
    gone = dataclasses.replace(prof, entries=tuple(e for e in prof.entries if (e.layer, e.candidate) != (2, D)))
    p = problem.prepare(gone, sens, speedup=1.1)
    assert D not in p.allowed[2] and problem.predicted(p, [G, G, D, G])["decode_4k"]["latency_ms"] is None
    assert problem.violations(p, [G, G, D, G], 0.0)[0] == "layer 2: gdn has no ok latency for prefill_4k"


def test_the_problem_is_complete_when_built_and_each_variant_is_a_new_one():
    """`prepare` returns the whole problem, frozen; other targets or more pins make another problem, equal to the
    one `prepare` builds from those arguments, and leave the first as it was."""
    prof, sens = make(4)
    kw = dict(max_count={"drop": 1}, ops="gqa,gdn,none,drop")
    p = problem.prepare(prof, sens, speedup=1.2, pins=["0=gqa"], **kw)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.pins = ()
    assert p.with_speedups(speedup=1.5) == problem.prepare(prof, sens, speedup=1.5, pins=["0=gqa"], **kw)
    assert p.with_pins({1: "gdn"}) == problem.prepare(prof, sens, speedup=1.2, pins=["0=gqa", "1=gdn"], **kw)
    assert p.targets == {w.name: 1.2 for w in WORKLOADS} and p.allowed[0] == [G] and len(p.allowed[1]) == 4
    assert p.constraints == {"workloads": [w.name for w in WORKLOADS], "metric": "kl", "max_cache_bytes": None,
                             "cache_batch": None, "cache_workload": None, "ops": ["gqa", "gdn", "none", "drop"],
                             "pins": {"0": "gqa"}, "min_count": None, "max_count": {"drop": 1}, "speedup": 1.2,
                             "ttft_speedup": None, "tpot_speedup": None, "targets": {w.name: 1.2 for w in WORKLOADS}}
    with pytest.raises(UsageError, match="pins 0=gdn: not an allowed candidate at layer 0"):
        p.with_pins(["0=gdn"])


def test_baselines_do_not_import_the_solver():
    run = subprocess.run([sys.executable, "-c", "import sys, mosaic_search.search.baselines; "
                          "assert 'mosaic_search.search.solver' not in sys.modules"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert run.returncode == 0, run.stderr


# ---- frontier and diverse plans ------------------------------------------------------------------

def test_sweep_is_monotone_and_writes_json_csv_png(tmp_path):
    prof, sens = make(8, seed=9)
    res = solver.sweep("1.1:3.0:0.1", profile=prof, scores=sens, reserve=(".png",), out=tmp_path / "front.json")
    assert files(tmp_path) == ["front.csv", "front.json"]  # the PNG is reserved for the caller, not drawn
    plot_frontier(res, res.files[2])
    pts = res.points
    assert [p["target_speedup"] for p in pts] == pytest.approx([1.1 + 0.1 * i for i in range(20)])
    ok = [p for p in pts if p["feasible"]]
    assert ok and all(a["objective"] <= b["objective"] + 1e-12 for a, b in zip(ok, ok[1:]))
    assert all(min(v["speedup"] for v in p["predicted"].values()) >= p["target_speedup"] - 1e-9 for p in ok)
    assert not any(p["feasible"] for p in pts[len(ok):])  # infeasible only at the tight end
    assert files(tmp_path) == ["front.csv", "front.json", "front.png"]
    rows = list(csv.DictReader((tmp_path / "front.csv").open()))
    assert len(rows) == 20 and rows[0]["pattern"] == ok[0]["pattern"]
    assert json.loads((tmp_path / "front.json").read_text())["points"] == json.loads(json.dumps(list(pts)))
    with pytest.raises(UsageError, match="speedups sets the speedup itself"):
        solver.sweep("1.1:2:0.1", profile=prof, scores=sens, speedup=2, write=False)
    with pytest.raises(UsageError, match='speedups "3:1:0.1"'):
        solver.sweep("3:1:0.1", profile=prof, scores=sens, write=False)


def test_pareto_record_round_trips_and_older_files_still_load(tmp_path):
    prof, sens = make(6, seed=9)
    res = solver.sweep("1.2:2.0:0.4", profile=prof, scores=sens, out=tmp_path / "front.json")
    back = load_pareto(tmp_path / "front.json")
    assert to_json(back) == json.loads(json.dumps(to_json(res))) and back.header.command
    assert back.files == (str(tmp_path / "front.json"), str(tmp_path / "front.csv"))
    assert to_frame(back).equals(to_frame(res))
    # as sweeps wrote it before the record: the header built by hand, without `command`
    old = {k: v for k, v in to_json(res).items() if k != "command"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_pareto(tmp_path / "old.json").points == back.points
    short = dict(old, points=[{"target_speedup": 1.2, "feasible": True, "objective": 0.1, "layers": ["gqa"]}])
    (tmp_path / "short.json").write_text(json.dumps(short))
    with pytest.raises(UsageError, match=r"points\[0\]\.layers: has 1 entries but model.num_hidden_layers in the "
                                         r"same file says 6"):
        load_pareto(tmp_path / "short.json")
    point = next(p for p in old["points"] if p["feasible"])
    edited = dict(old, points=[dict(point, pattern="X" * 6)])
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(UsageError, match=r'points\[0\]\.pattern: "XXXXXX" contradicts the layers in the same file'):
        load_pareto(tmp_path / "edited.json")


def test_solve_many_gives_distinct_plans_far_enough_apart(tmp_path):
    prof, sens = make(8, seed=10)
    plans = solver.solve_many(4, 3, profile=prof, scores=sens, speedup=1.5, mip_gap=0, out=tmp_path / "plan.json")
    assert len(plans) == 4 and files(tmp_path) == ["plan-2.json", "plan-3.json", "plan-4.json", "plan.json"]
    for a, b in itertools.combinations(plans, 2):
        assert sum(x != y for x, y in zip(a.layers, b.layers)) >= 3
    objs = [p.objective for p in plans]
    assert objs == sorted(objs)
    assert objs[0] == pytest.approx(solver.solve(prof, sens, speedup=1.5, write=False).objective)
    # two layers, three candidates: only 3 plans pairwise differ in both layers
    prof, sens = make(2, cands=[G, S512, S2K], seed=1)
    assert len(solver.solve_many(5, 2, profile=prof, scores=sens, speedup=1.0, write=False)) == 3
    with pytest.raises(UsageError, match="min_distance must be within 1..2"):
        solver.solve_many(2, 3, profile=prof, scores=sens, speedup=1.0, write=False)


# ---- newest artifacts and the CLI ----------------------------------------------------------------

def _layout(root: Path):
    """profiles/ and layer_plans/<model>/ as the stages leave them: two tables, the newer one different."""
    prof, sens = make(4, seed=11)
    save(prof, root / "profiles" / "org--tiny--h100.json")
    old = SensitivityTable(Header(sens.header.model, created_at="2020-01-01T00:00:00+00:00"), "kl", {},
                           tuple(SensitivityEntry(e.layer, e.candidate, 0.0, 0.0, 0) for e in sens.entries))
    save(old, root / "layer_plans" / "org--tiny" / "old.json")
    save(sens, root / "layer_plans" / "org--tiny" / "sensitivity.json")
    _, alien = make(4, sha="other", model="org/other")
    save(alien, root / "layer_plans" / "org--other" / "sensitivity.json")
    (root / "layer_plans" / "notes.json").write_text("{not json")
    return prof, sens


def test_cli_solve_takes_the_newest_matching_artifacts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _layout(tmp_path)
    assert main(["solve", "--speedup", "1.3"]) == 0
    plan = load_plan(tmp_path / "layer_plans" / "org--tiny" / "plan.json")
    newest = tmp_path / "layer_plans" / "org--tiny" / "sensitivity.json"
    assert plan.header.inputs["scores"] == sha256_file(newest)
    assert plan.objective > 0  # the older table scores every swap 0
    captured = capsys.readouterr()
    shown = captured.out
    assert plan.pattern in shown and "wrote layer_plans/org--tiny/plan.json" in shown
    # what was discovered is named, with its model, device and date: in the output, on stderr and in the plan
    made = load_sensitivity(newest).header.created_at
    words = " ".join(shown.split())  # the lines wrap at the terminal's width
    assert "profile: profiles/org--tiny--h100.json (model org/tiny, device NVIDIA H100 80GB HBM3, made " in words
    assert f"scores: layer_plans/org--tiny/sensitivity.json (model org/tiny, made {made})" in words
    assert "note: using the newest matching profile: profiles/org--tiny--h100.json (model org/tiny" in captured.err
    assert plan.solver["read"]["scores"] == {"path": "layer_plans/org--tiny/sensitivity.json", "model": "org/tiny",
                                             "device": plan.solver["read"]["scores"]["device"], "created_at": made,
                                             "discovered": True}
    before = (tmp_path / "layer_plans" / "org--tiny" / "plan.json").read_bytes()
    # a plan is replaced only when asked, as a build is
    assert main(["solve", "--speedup", "1.6"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "layer_plans" / "org--tiny" / "plan.json").read_bytes() == before
    assert main(["solve", "--speedup", "1.3", "--json", "--overwrite"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["kind"] == "mosaic/layer-plan" and obj["path"] == "layer_plans/org--tiny/plan.json"
    assert obj["solver"]["read"]["profile"]["path"] == "profiles/org--tiny--h100.json"


def test_cli_exit_codes_and_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    prof, sens = make(4, seed=12)
    p, s = save_pair(tmp_path, prof, sens)
    _, alien = make(4, sha="other")
    a = str(tmp_path / "alien.json")
    save(alien, a)
    before = files(tmp_path)
    cases = [(["--speedup", "0"], 2, "speedup must be a positive number, got 0"),
             (["--speedup", "1.2", "--pin", "7=gqa"], 2, "layer 7 is outside 0..3"),
             (["--speedup", "60"], 3, "largest reachable speedup"),
             (["--speedup", "1.2", "--scores", a], 4, "--allow-stale"),
             (["--speedup", "1.2", "--device", "a100"], 4, "not \"a100\""),
             (["--speedup", "1.2", "--plot"], 2, "--plot needs --sweep")]
    for args, code, text in cases:
        args = ["solve", "--profile", p, *(["--scores", s] if "--scores" not in args else []), *args]
        assert main(args) == code, args
        errline = capsys.readouterr().err
        assert text in errline and errline.count("\n") == 1, errline
    assert files(tmp_path) == before
    assert main(["solve", "--profile", p, "--speedup", "1.2", "--scores", a, "--allow-stale", "--out", "x.json"]) == 0


def test_cli_sweep_and_solutions(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    prof, sens = make(6, seed=13)
    p, s = save_pair(tmp_path, prof, sens)
    assert main(["solve", "--profile", p, "--scores", s, "--sweep", "1.2:2.0:0.2", "--plot"]) == 0
    shown = capsys.readouterr().out
    assert "Pareto frontier" in shown and "1.40x" in shown
    assert {"pareto.json", "pareto.csv", "pareto.png"} <= set(os.listdir(tmp_path / "layer_plans" / "org--tiny"))
    assert main(["solve", "--profile", p, "--scores", s, "--speedup", "1.3", "--solutions", "2",
                 "--min-distance", "2", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert [x["path"] for x in plans] == ["layer_plans/org--tiny/plan.json", "layer_plans/org--tiny/plan-2.json"]


def test_mosaic_solve_does_not_import_torch(tmp_path):
    prof, sens = make(4, seed=14)
    p, s = save_pair(tmp_path, prof, sens)
    code = ("import sys; from mosaic_search.cli import main; "
            f"rc = main(['solve', '--profile', {p!r}, '--scores', {s!r}, "
            f"'--out', {str(tmp_path / 'front.json')!r}, '--sweep', '1.1:1.3:0.1', '--plot']); "
            "rc = rc or main(['solve', '--profile', %r, '--scores', %r, '--speedup', '1.2', '--out', %r]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
            ) % (p, s, str(tmp_path / "plan.json"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "plan.json").exists() and (tmp_path / "front.png").exists()


def test_the_frontier_plot_keeps_every_label_inside_its_panel_and_the_figure(tmp_path, monkeypatch):
    """The y label of the top panel stays beside that panel (it used to run into the lower one) and every text,
    the legend right of the panels included, lies inside the saved image."""
    import matplotlib.figure

    prof, sens = make(6, seed=9)
    res = solver.sweep("1.2:2.0:0.4", profile=prof, scores=sens, write=False)
    saved = {}
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.update(fig=fig, kwargs=kwargs)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    from mosaic_search.cli.plots import plot_frontier

    plot_frontier(res, tmp_path / "f.png", title="t",
                  measured={"measured KL, built": [(1.2, 0.1)], "measured KL, distilled": [(1.2, 0.05)]})
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = saved["fig"]
    renderer = FigureCanvasAgg(fig).get_renderer()
    front, plans = fig.axes[:2]
    label = front.yaxis.label.get_window_extent(renderer)
    assert label.y0 >= plans.get_window_extent(renderer).y1  # beside the top panel only
    assert saved["kwargs"].get("bbox_inches") == "tight"  # the saved image grows to hold labels and legend


def test_counts_split_at_the_last_equals_so_a_candidate_keeps_its_params():
    from mosaic_search.search.specs import counts, pairs

    got = counts(["gqa:kv_heads=1=2", "mlp:width=96=0", "swa=3"], "max_count", 8)
    assert [(str(spec), n) for spec, n in got] == [("gqa:kv_heads=1", 2), ("mlp:width=96", 0), ("swa", 3)]
    assert pairs(["3=gqa:kv_heads=1"], "pins") == [("3", "gqa:kv_heads=1")]  # a pin splits at the first
