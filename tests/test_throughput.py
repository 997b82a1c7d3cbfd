"""The serving regime: weights + cache as a row of the MIP (--max-memory), and the throughput target that picks the
plan and the largest batch fitting a memory budget; checked against exhaustive search (no torch)."""

from __future__ import annotations

import itertools
import random

import pytest

from mosaic_search.artifacts.header import Header, ModelRef, save
from mosaic_search.artifacts.plan import load_plan
from mosaic_search.artifacts.profile import LatencyProfile, ProfileEntry, Workload, load_profile, workload_name
from mosaic_search.artifacts.sensitivity import SensitivityEntry, SensitivityTable
from mosaic_search.cli import main
from mosaic_search.errors import InfeasibleError, UsageError
from mosaic_search.operators import Candidate, unbuildable
from mosaic_search.search import memory as memory_mod
from mosaic_search.search import problem, serving, solver

G, D, X = Candidate.of("gqa"), Candidate.of("gdn"), Candidate.of("drop")
W, O = Candidate.of("mlp", {"width": 96}), Candidate.of("nomlp")
CANDS = (G, D, X, W, O)
BATCHES = (1, 4, 16)
WL = [Workload(workload_name("decode", b, 256), "decode", b, 256) for b in BATCHES]
WEIGHTS = {G: 1000, D: 900, X: 0, W: 600, O: 300}  # a layer's weights with each (an MLP's under the teacher's gqa)
CACHE = {G: 1000, D: 10, X: 0, W: 1000, O: 1000}  # per sequence at context 256
FIXED = 5000
LAYERS = 3


def tables(seed=0):
    """A profile with weight bytes and a sensitivity table; a layer's decode time grows with the batch by its cache."""
    rng = random.Random(seed)
    base = {(l, c): (10.0 if c == G else round(rng.uniform(1, 9), 3)) for l in range(LAYERS) for c in CANDS}
    lat = {(l, c, w.name): base[l, c] + w.batch_size * CACHE[c] / 1000 for (l, c) in base for w in WL}
    loss = {(l, c): (0.0 if c == G else round(rng.uniform(0.01, 1), 4)) for (l, c) in base}
    ref = ModelRef("org/tiny", "cfg", LAYERS)
    entries = tuple(ProfileEntry(l, c, w, ms, None, None, "ok", CACHE[c]) for (l, c, w), ms in lat.items())
    fixed = {w.name: 2.0 for w in WL}
    baseline = {w.name: 2.0 + sum(lat[l, G, w.name] for l in range(LAYERS)) for w in WL}
    prof = LatencyProfile(Header.new(ref), tuple(WL), baseline, fixed, entries, teacher=(G,) * LAYERS,
                          weight_bytes=tuple(WEIGHTS.items()), fixed_weight_bytes=FIXED)
    sens = SensitivityTable(Header.new(ref), "kl", {}, tuple(SensitivityEntry(l, c, v, 0.0, 0)
                                                            for (l, c), v in loss.items()))
    return prof, sens


def memory_of(layers, batch):
    """By hand: fixed + per layer (mixer + MLP - teacher) of weights, + batch x the mixer's cache."""
    def part(c, table):
        return table[c] if not c.mlp else table[c.mixer] + table[c.mlp_candidate] - table[G]
    return FIXED + sum(part(c, WEIGHTS) + batch * part(c, CACHE) for c in layers)


def test_memory_row_is_weights_plus_batch_cache_and_the_mip_is_exact(tmp_path):
    """Every plan's memory is fixed + weights + batch x cache, composed across axes; the MIP under --max-memory finds
    exhaustive search's optimum; a fraction bounds against the teacher's memory; a profile saved and loaded keeps
    its weight bytes."""
    prof, sens = tables()
    path = save(prof, tmp_path / "p.json")
    assert load_profile(path).weight_bytes == prof.weight_bytes
    assert load_profile(path).fixed_weight_bytes == FIXED
    teacher = memory_of([G] * LAYERS, 4)
    for limit in (0.6, 0.5 * teacher, 0.9):
        p = problem.prepare(prof, sens, speedup=1.0, max_memory=limit, cache_batch=4, cache_context=256)
        bound = limit * teacher if limit <= 1 else limit
        assert p.memory.teacher_bytes == teacher and p.memory.limit_bytes == bound
        best = None
        for combo in itertools.product(*p.allowed):
            assert memory_mod.memory_bytes(p, combo) == memory_of(combo, 4)
            if not unbuildable(combo) and memory_of(combo, 4) <= bound:
                obj = sum(p.choice(l, c).loss for l, c in enumerate(combo))
                best = obj if best is None else min(best, obj)
        chosen, info = solver.run_mip(p)
        check = solver.verify(p, chosen, info["objective"])
        assert check["objective"] == pytest.approx(best) and check["memory_bytes"] <= bound


def test_memory_below_every_plan_exits_3_naming_the_smallest(tmp_path):
    prof, sens = tables()
    least = min(memory_of(combo, 1) for combo in itertools.product(
        CANDS[:3], *([[G, D, X, G.with_mlp(W), D.with_mlp(W), G.with_mlp(O), D.with_mlp(O)]] * (LAYERS - 1)))
        if not unbuildable(combo))
    with pytest.raises(InfeasibleError, match=f"smallest reachable memory, {least} bytes"):
        solver.solve(prof, sens, speedup=1.0, max_memory=least - 1, write=False)
    plan = solver.solve(prof, sens, speedup=1.0, max_memory=least, write=False)
    assert plan.solver["memory_bytes"] == least
    with pytest.raises(UsageError, match="max_memory must be a positive number"):
        solver.solve(prof, sens, speedup=1.0, max_memory=-1, write=False)


def test_throughput_target_picks_the_plan_and_the_largest_fitting_batch():
    """Against exhaustive search over batches and assignments: the least-loss plan whose memory at its batch fits
    and whose batch / TPOT is at least X times the teacher's best fitting batch / TPOT; ties go to the larger batch;
    the plan records the batch; an unreachable target is exit 3 with the best reachable."""
    prof, sens = tables()
    memory = memory_of([G] * LAYERS, 4)  # the teacher fits batch 4, not 16
    tpot = {w.batch_size: (lambda layers, w=w: prof.predicted_ms(w.name, layers)) for w in WL}
    teacher = max(b / tpot[b]([G] * LAYERS) for b in BATCHES if memory_of([G] * LAYERS, b) <= memory)
    assert teacher == 4 / tpot[4]([G] * LAYERS)
    space = [[G, D, X, G.with_mlp(W), D.with_mlp(W), G.with_mlp(O), D.with_mlp(O)]] * LAYERS
    loss = {(e.layer, e.candidate): e.kl for e in sens.entries}

    def cost(combo):
        return sum(loss[l, c.mixer] + (loss[l, c.mlp_candidate] if c.mlp else 0) for l, c in enumerate(combo))

    for x in (1.5, 3.0):
        best = None
        for b in BATCHES:
            for combo in itertools.product(*space):
                if unbuildable(combo) or memory_of(combo, b) > memory:
                    continue
                if b / tpot[b](combo) >= x * teacher * (1 - 1e-9):
                    key = (round(cost(combo), 9), -b)
                    best = key if best is None else min(best, key)
        plan = serving.solve_serving(x, memory, 256, profile=prof, scores=sens, write=False)
        record = plan.constraints["serving"]
        assert (round(plan.objective, 9), -record["batch"]) == best
        assert record["teacher_batch"] == 4 and record["memory_bytes"] <= memory
        assert record["throughput_tokens_per_s"] >= x * record["teacher_throughput_tokens_per_s"] * (1 - 1e-9)
    with pytest.raises(InfeasibleError, match=r"throughput speedup 100.000x not reachable .* the best is"):
        serving.solve_serving(100, memory, 256, profile=prof, scores=sens, write=False)
    with pytest.raises(UsageError, match=r"throughput_speedup must be at least 1 \(a speedup over the teacher\), "
                                         r"got 0.5"):
        serving.solve_serving(0.5, memory, 256, profile=prof, scores=sens, write=False)


def test_serving_flags_on_the_command_line(tmp_path, capsys):
    prof, sens = tables()
    p, s = save(prof, tmp_path / "p.json"), save(sens, tmp_path / "s.json")
    memory = memory_of([G] * LAYERS, 4)
    args = ["solve", "--profile", str(p), "--scores", str(s), "--out", str(tmp_path / "plan.json")]
    assert main(args + ["--throughput-speedup", "1.5", "--memory", str(memory), "--context", "256"]) == 0
    record = load_plan(tmp_path / "plan.json").constraints["serving"]
    assert record["batch"] in BATCHES
    got = record["throughput_tokens_per_s"]
    assert (f"serving: batch {record['batch']} at context 256, {got:.1f} tokens/s predicted, "
            f"{got / record['teacher_throughput_tokens_per_s']:.2f}x the teacher's "
            f"{record['teacher_throughput_tokens_per_s']:.1f} at batch 4; memory ") in " ".join(
        capsys.readouterr().out.split())  # joined: the console wraps to the terminal
    assert main(args + ["--throughput-speedup", "1.5"]) == 2
    assert main(args + ["--speedup", "1.0", "--max-memory", "10", "--overwrite"]) == 3
    assert "smallest reachable memory" in capsys.readouterr().err
