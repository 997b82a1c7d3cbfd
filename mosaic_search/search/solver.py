"""Stage 3: one candidate per layer, least predicted loss under latency, cache and count budgets (PuLP + HiGHS).

The problem itself (inputs, budgets, predicted latency, the constraint check) is `problem.py`; this module
solves it, re-checks the answer, and writes plans and the Pareto frontier (its plot: `cli/plots.py`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from ..artifacts import files, frames
from ..artifacts.files import PLANS_DIR
from ..artifacts.header import Header, save
from ..artifacts.pareto import Pareto
from ..artifacts.plan import LayerPlan
from ..errors import InfeasibleError, MosaicError, UsageError, check, did_you_mean, flags, invalid, listed, number
from ..hf.models import slug
from ..operators import compose, pattern_string
from . import baselines
from .memory import MEMORY, memory_bytes
from .problem import Problem, cache_bytes, check_keywords, predicted, prepare, read_paths, violations
from .specs import positive

STRATEGIES = "mip, greedy, pattern:SYMBOLS"
# Search settings, not the model: with a near-optimal warm start, HiGHS's sub-MIP heuristics, restarts and
# cuts inside the tree cost more than they save on these small multiple-choice knapsacks (2.5x on the
# median in benchmarks/bench_solver.py). The answer stays optimal to `mip_gap` either way.
HIGHS_OPTIONS = {"mip_allow_restart": False, "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False,
                 "mip_allow_cut_separation_at_nodes": False}
_TOL = 1e-6  # relative slack when re-checking: HiGHS accepts rows violated by up to 1e-6 (mip_feasibility_tolerance)


# ---- the MIP -------------------------------------------------------------------------------------

def _pulp():
    try:
        import pulp
    except ImportError:
        raise MosaicError("pulp is not installed: pip install pulp highspy") from None
    return pulp


def _rows(p: Problem, columns: list, minimize, budgets: bool, avoid, min_distance: int):
    """Objective and every constraint but one-per-layer, as dense `A x <= b` rows over `columns` (Choices)."""
    import numpy as np

    cost = [ch.loss if minimize is None else p.memory.per_choice[ch.layer, ch.candidate] if minimize == MEMORY else
            ch.latency_ms[minimize] for ch in columns]
    rows, rhs = [], []
    for row in p.rows(latency=budgets):
        rows.append([row.usage(ch) for ch in columns])
        rhs.append(row.limit)
    for prev in avoid:
        rows.append([float(ch.candidate == prev[ch.layer]) for ch in columns])
        rhs.append(p.num_layers - min_distance)
    return np.array(cost, float), np.array(rows, float).reshape(len(rhs), len(columns)), np.array(rhs, float)


def _model(pulp, columns, cols, cost, A, b, integer: bool):
    """The PuLP model over the columns `cols` (indices into `columns`): one candidate per layer, `A x <= b`,
    least `cost`."""
    prob = pulp.LpProblem("mosaic", pulp.LpMinimize)
    cat = pulp.LpBinary if integer else pulp.LpContinuous
    x = {j: prob.add_variable(f"x_{j}", 0, 1, cat) for j in cols}
    prob += pulp.LpAffineExpression([(x[j], cost[j]) for j in cols])
    layers = {}
    for j in cols:
        layers.setdefault(columns[j].layer, []).append(x[j])
    for vs in layers.values():
        prob += pulp.LpAffineExpression([(v, 1) for v in vs]) == 1
    for r in range(len(b)):
        prob += pulp.LpAffineExpression([(x[j], A[r, j]) for j in cols if A[r, j]]) <= b[r]
    return prob, x


def _highs(pulp, start=None, **options):
    """pulp.HiGHS that hands HiGHS a starting assignment (pulp's own class has no warm start for highspy)."""
    class Started(pulp.HiGHS):
        def callSolver(self, lp):
            if start:
                import highspy

                col = [0.0] * len(lp.variables())
                for v in lp.variables():
                    col[v.index] = 1.0 if v.name in start else 0.0
                sol = highspy.HighsSolution()
                sol.col_value, sol.value_valid = col, True
                lp.solverModel.setSolution(sol)
            super().callSolver(lp)

    return Started(msg=False, **HIGHS_OPTIONS, **options)


def run_mip(p: Problem, minimize=None, budgets=True, avoid=(), min_distance=1, time_limit_s=60, mip_gap=1e-4,
            start=None, reduce=True):
    """Solve the MIP: (chosen candidates per layer, solver info), or (None, info) when infeasible.

    `minimize=None` minimises the summed scores; a workload name minimises its latency instead (the best
    reachable speedup), `MEMORY` the layers' weights + cache (`memory`). `avoid` lists assignments the answer
    must differ from in >= `min_distance` layers.
    `start` (one candidate per layer), if feasible, is a warm start: the answer is never worse than it.
    Exact speed-up, measured in benchmarks/bench_solver.py: the LP relaxation gives a bound and a rounded
    incumbent; a column whose LP reduced cost exceeds (incumbent - bound) cannot be in any optimum and is
    dropped; HiGHS then solves the smaller MIP from that incumbent. `reduce=False` solves the plain MIP.
    """
    import numpy as np

    pulp = _pulp()
    began = time.perf_counter()
    columns = [ch for cs in p.choices for ch in cs]
    cost, A, b = _rows(p, columns, minimize, budgets, avoid, min_distance)
    layer = np.array([ch.layer for ch in columns])
    info = {"name": "highs", "seconds": 0.0, "mip_gap": None, "time_limit_s": time_limit_s, "columns": len(columns)}
    lp, x = _model(pulp, columns, range(len(columns)), cost, A, b, integer=False)
    lp.solve(pulp.HiGHS(msg=False, mip=False, timeLimit=time_limit_s))
    if pulp.LpStatus[lp.status] == "Infeasible":  # no fractional assignment fits, so no integer one does
        info.update(status="Infeasible", seconds=round(time.perf_counter() - began, 6))
        return None, info
    cols, warm = range(len(columns)), None
    if reduce and pulp.LpStatus[lp.status] == "Optimal":
        xv = np.array([x[j].varValue or 0.0 for j in cols])
        warm = baselines.incumbent(xv, cost, A, b, layer)
    if start is not None:
        index = {(ch.layer, ch.candidate): j for j, ch in enumerate(columns)}
        given = np.array([index[l, c] for l, c in enumerate(start)]) if all(
            (l, c) in index for l, c in enumerate(start)) else None
        if given is not None and np.all(A[:, given].sum(axis=1) <= b + 1e-9 * np.maximum(1.0, np.abs(b))) and (
                warm is None or cost[given].sum() < cost[warm].sum()):
            warm = given
    if warm is not None and reduce:
        bound, upper = float(lp.objective.value() or 0.0), float(cost[warm].sum())
        reduced = np.array([x[j].dj or 0.0 for j in cols])
        keep = bound + reduced <= upper + 1e-6 * max(1.0, abs(upper))
        keep[warm] = True
        cols = np.flatnonzero(keep)
    prob, y = _model(pulp, columns, cols, cost, A, b, integer=True)
    left = max(0.01, time_limit_s - (time.perf_counter() - began))
    names = {y[j].name for j in warm} if warm is not None else None
    prob.solve(_highs(pulp, names, timeLimit=left, gapRel=mip_gap))
    h = prob.solverModel
    status, hinfo = h.modelStatusToString(h.getModelStatus()), h.getInfo()
    gap = float(hinfo.mip_gap)
    info.update(status=status, seconds=round(time.perf_counter() - began, 6), columns_kept=len(cols),
                mip_gap=gap if math.isfinite(gap) else None)
    if pulp.LpStatus[prob.status] == "Infeasible":
        return None, info
    if hinfo.primal_solution_status != 2:  # 2 = feasible: a time limit can end the search with nothing
        raise MosaicError(f"HiGHS found no assignment within {time_limit_s} s ({status}); raise `time_limit_s`")
    info["objective"] = float(hinfo.objective_function_value)
    picked = {(columns[j].layer, columns[j].candidate) for j in cols if (y[j].varValue or 0) > 0.5}
    return [[c for c in cs if (l, c) in picked] for l, cs in enumerate(p.allowed)], info


def smallest_memory(p: Problem, time_limit_s=60) -> int | None:
    """The least memory any buildable assignment allowed by `p` takes (its other budgets dropped), or None."""
    # no bound: PuLP refuses an infinite right-hand side
    free = dataclasses.replace(p, memory=dataclasses.replace(p.memory, layer_limit=1e300))
    chosen, _ = run_mip(free, minimize=MEMORY, budgets=False, time_limit_s=time_limit_s)
    return None if chosen is None else memory_bytes(p, [cs[0] for cs in chosen])


def memory_note(p: Problem, time_limit_s=60) -> str | None:
    """One line when a memory-bounded problem's bound is below every plan's memory (naming the smallest), else None."""
    if (m := p.memory) is None:
        return None
    least = smallest_memory(p, time_limit_s)
    if least is None or least <= m.limit_bytes * (1 + 1e-9):  # None: the other rows (a cache bound) leave no plan
        return None
    return (f"memory limit {m.limit_bytes:.0f} bytes is below the smallest reachable memory, {least} bytes (weights + "
            f"cache at batch {m.batch}, workload {m.workload})")


def reachability(p: Problem, time_limit_s=60) -> str:
    """One line: the largest speedup each constrained workload reaches alone (its minimum-latency assignment)."""
    parts, reach_all = [], True
    for w, target in p.targets.items():
        chosen, _ = run_mip(p, minimize=w, budgets=False, time_limit_s=time_limit_s)
        if chosen is None:
            break
        got = predicted(p, [cs[0] for cs in chosen])[w]["speedup"]
        best = math.inf if got is None else got
        reach_all &= best >= target
        parts.append(f"{w} {best:.3f}x (target {target:.3f}x)")
    if not parts:
        return ("no buildable assignment (at least one attention layer) satisfies the ops, pins, operator counts "
                "and cache bound, even with no latency target")
    note = " (each is reachable alone, not all together with the other constraints)" if reach_all else ""
    return f"speedup target not reachable; largest reachable speedup, each workload alone: {', '.join(parts)}{note}"


# ---- verify, don't trust -------------------------------------------------------------------------

def verify(p: Problem, chosen, claimed=None) -> dict:
    """Recompute latency, cache, counts and objective from the input artifacts; refuse any broken rule.

    `chosen`: a list of candidates per layer (as `run_mip` returns); `claimed`: the solver's objective.
    Returns {layers, predicted, objective, cache_bytes, per_layer}; raises MosaicError (exit 1) otherwise.
    """
    def fail(why):
        raise MosaicError(f"solver check failed: {why}; the answer was not trusted and nothing was written")

    if len(chosen) != p.num_layers:
        fail(f"{len(chosen)} layers assigned, the model has {p.num_layers}")
    for l, cs in enumerate(chosen):
        if len(cs) != 1:
            fail(f"layer {l} got {len(cs)} candidates, not exactly one")
    layers = [cs[0] for cs in chosen]
    for l, c in enumerate(layers):
        if c not in p.allowed[l]:
            fail(f"layer {l}: {c} is not allowed there (ops, pins, status or missing entry)")
    if broken := violations(p, layers, _TOL):
        fail(broken[0])
    # Read the artifacts again rather than the solver's tables, so a bug in building them shows up here.
    table = {(e.layer, e.candidate): getattr(e, p.metric) for e in p.scores.entries}
    teacher = p.profile.teacher  # a mixer with an MLP is scored as both axes' entries compose
    scored = {(l, c): compose(lambda x, l=l: table.get((l, x)), c, teacher[l]) for l, c in enumerate(layers)}
    if any(v is None for v in scored.values()):
        fail("a chosen candidate has no score")
    objective = float(sum(scored[l, c] for l, c in enumerate(layers)))
    if claimed is not None and abs(claimed - objective) > _TOL * max(1.0, abs(objective)):
        fail(f"the solver's objective {claimed:.6g} differs from the recomputed {objective:.6g}")
    rows = predicted(p, layers)
    per_layer = []  # "latency saved" is measured from the teacher's own operator in the layer
    for l, c in enumerate(layers):
        saved = {}
        for w in rows:
            t = p.profile.layer_ms(l, teacher[l], w)
            saved[w] = t - p.profile.layer_ms(l, c, w) if t is not None else None
        per_layer.append({"layer": l, "candidate": str(c), "loss": float(scored[l, c]), "saved_ms": saved})
    return {"layers": layers, "predicted": rows, "objective": objective, "cache_bytes": cache_bytes(p, layers),
            "memory_bytes": memory_bytes(p, layers), "per_layer": per_layer}


def _plan(p: Problem, check: dict, info: dict) -> LayerPlan:
    header = Header.new(p.profile.header.model, env=p.profile.header.env, inputs=p.inputs)
    solver = {**info, "cache_bytes": check["cache_bytes"], "memory_bytes": check["memory_bytes"],
              "per_layer": check["per_layer"], "read": p.sources}
    return LayerPlan(header=header, layers=tuple(check["layers"]), predicted=check["predicted"],
                     objective=check["objective"], constraints=p.constraints, solver=solver)


def plan_path(model_id: str, out=None, rank: int = 1, plans_dir=PLANS_DIR, name="plan.json") -> Path:
    """Where a plan is written: `out`, or layer_plans/<model>/plan.json; the k-th of several gets '-k'."""
    return _ranked(files.output_path(out, Path(plans_dir) / slug(model_id) / name), rank)


def _ranked(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.stem}-{rank}{path.suffix}") if rank > 1 else path


def _assign(p: Problem, strategy: str, time_limit_s, mip_gap):
    if strategy == "mip":
        chosen, info = run_mip(p, time_limit_s=time_limit_s, mip_gap=mip_gap)
        if chosen is None:
            raise InfeasibleError(memory_note(p, time_limit_s) or reachability(p, time_limit_s))
        return chosen, info
    if strategy == "greedy":
        chosen, info = baselines.greedy(p)
        if chosen is None:
            raise InfeasibleError(f"greedy stalled before meeting every budget; {reachability(p, time_limit_s)}")
        return chosen, info
    if strategy.startswith("pattern:"):
        return baselines.pattern(p, strategy.partition(":")[2])
    raise UsageError(f'unknown strategy "{strategy}"{did_you_mean(strategy, ("mip", "greedy"))}; known: {STRATEGIES}')


def _begin(caller, inputs: dict, time_limit_s, mip_gap, out, write: bool, overwrite: bool,
           strategy: str | None = "mip", name: str = "plan.json",
           outputs=lambda path: [path]) -> tuple[Problem, list[Path]]:
    """Every entry's first steps, before any solving: the problem (`problem.prepare`'s keywords, any other refused
    naming the entry, `caller`), something to trade quality for (unless `strategy` is None: the sweep sets the
    speedups itself), the time limit, and the output files (`outputs` of the first one's path, `name` under
    layer_plans/<model>/ or `out`), checked writable and none of them an input."""
    check_keywords(caller, inputs)
    check_gap(mip_gap)
    flags(write=write, overwrite=overwrite)
    check(strategy is None or isinstance(strategy, str), "strategy", f"must be one of {STRATEGIES}, got {strategy!r}")
    p = prepare(**inputs)
    if strategy is not None and not strategy.startswith("pattern:") and not p.bounded:
        raise UsageError("nothing to trade quality for: give `speedup`, `ttft_speedup`, `tpot_speedup`, "
                         "`max_cache_bytes` or `max_memory`")
    positive("time_limit_s", time_limit_s)
    paths = outputs(plan_path(p.profile.header.model.id, out, plans_dir=inputs.get("plans_dir", PLANS_DIR), name=name))
    if write:
        files.check_not_input(paths, read_paths(p))
        for path in paths:
            files.check_output(path, overwrite=overwrite)
    return p, paths



def check_gap(mip_gap) -> None:
    """Refuse a relative MIP gap outside [0, 1] (0: proven optimal; HiGHS's own `mip_rel_gap`)."""
    check(number(mip_gap) and 0 <= mip_gap <= 1, "mip_gap", f"must be a number within 0..1, got {mip_gap!r}")


def solve(profile=None, scores=None, *, strategy="mip", time_limit_s=60, mip_gap=1e-4, out=None, write=True,
          overwrite=False, **inputs) -> LayerPlan:
    """The least-loss plan meeting every target (or a greedy / fixed-pattern baseline), verified and saved.

    `strategy`: "mip", "greedy" or "pattern:SYMBOLS"; other keywords are those of `problem.prepare` (the
    inputs, speedup targets and constraints). The plan goes to `out` or layer_plans/<model>/plan.json; an
    existing one is replaced only with `overwrite` (as `build` replaces a model directory). Raises UsageError
    (exit 2) for bad input, StaleInputError (exit 4), InfeasibleError (exit 3, with the reachable speedups).
    """
    p, (path,) = _begin(solve, dict(inputs, profile=profile, scores=scores), time_limit_s, mip_gap, out, write,
                        overwrite, strategy)
    chosen, info = _assign(p, strategy, time_limit_s, mip_gap)
    plan = _plan(p, verify(p, chosen, info.get("objective")), {"strategy": strategy, **info})
    if write:
        save(plan, path)
    return plan


def solve_many(solutions=3, min_distance=1, *, time_limit_s=60, mip_gap=1e-4, out=None, write=True,
               overwrite=False, **inputs) -> list[LayerPlan]:
    """Up to `solutions` least-loss plans, each differing from every other in >= `min_distance` layers.

    Other keywords are those of `problem.prepare` (as in `solve`). Fewer plans come back when no more exist.
    """
    solutions = positive("solutions", solutions, integer=True)
    p, paths = _begin(solve_many, inputs, time_limit_s, mip_gap, out, write, overwrite,
                      outputs=lambda path: [_ranked(path, rank) for rank in range(1, solutions + 1)])
    if isinstance(min_distance, bool) or not isinstance(min_distance, int) or not 1 <= min_distance <= p.num_layers:
        raise invalid("min_distance", f"must be within 1..{p.num_layers} (the model's layers), got {min_distance}")
    plans, seen = [], []
    for rank in range(1, solutions + 1):
        chosen, info = run_mip(p, avoid=seen, min_distance=min_distance, time_limit_s=time_limit_s, mip_gap=mip_gap)
        if chosen is None:
            if not plans:
                raise InfeasibleError(reachability(p, time_limit_s))
            break
        check = verify(p, chosen, info["objective"])
        for prev in seen:
            if sum(a != b for a, b in zip(prev, check["layers"])) < min_distance:
                raise MosaicError(f"solver check failed: plan {rank} is closer than {min_distance} layers to another")
        seen.append(check["layers"])
        plans.append(_plan(p, check, {"strategy": "mip", "rank": rank, "min_distance": min_distance, **info}))
    if write:  # only once every plan passed its check, so a failure leaves nothing behind
        for plan, path in zip(plans, paths):
            save(plan, path)
    return plans


# ---- the Pareto frontier -------------------------------------------------------------------------

def parse_sweep(text) -> list[float]:
    """'1.1:3.0:0.1' (start:stop:step, stop included) or a list of speedups."""
    if not isinstance(text, str):
        return [positive("speedups", v) for v in listed("speedups", text)]
    try:
        start, stop, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise invalid("speedups", f'"{text}": expected START:STOP:STEP, e.g. 1.1:3.0:0.1') from None
    if not (start > 0 and step > 0 and stop >= start) or not all(map(math.isfinite, (start, stop, step))):
        raise invalid("speedups", f'"{text}": need 0 < START <= STOP and STEP > 0')
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > 1000:
        raise invalid("speedups", f'"{text}": {count} points; at most 1000')
    return [round(start + i * step, 9) for i in range(count)]


def sweep(speedups="1.1:3.0:0.1", *, reserve=(), time_limit_s=60, mip_gap=1e-4, out=None, write=True,
          overwrite=False, **inputs) -> Pareto:
    """The Pareto frontier: the least predicted loss at each speedup target, saved as JSON + CSV.

    `speedups`: as `parse_sweep` takes them; other keywords are those of `problem.prepare`, except the
    speedups, which the sweep sets. Returns the `Pareto` record; the files go to `out` (default
    layer_plans/<model>/pareto.json) and its .csv sibling. `reserve`: suffixes of siblings the caller writes from
    the record (the CLI's plot, `cli.plots.plot_frontier`: (".png",)), checked writable with the others before
    any solving and listed in the record's `files`.
    """
    for key in ("speedup", "ttft_speedup", "tpot_speedup"):
        if inputs.get(key) is not None:
            raise invalid("speedups", f"sets the speedup itself; drop `{key}` and narrow with `workloads` instead")
    values = parse_sweep(speedups)
    p, written = _begin(sweep, inputs, time_limit_s, mip_gap, out, write, overwrite, strategy=None, name="pareto.json",
                        outputs=lambda path: [path] + [path.with_suffix(x) for x in (".csv", *reserve)])
    points, start = [], None
    # Tightest first: each plan is feasible for the next, looser target and warm-starts it, so the
    # frontier's loss never rises as the target loosens, whatever the MIP gap.
    for s in sorted(values, reverse=True):
        q = p.with_speedups(speedup=s)
        chosen, info = run_mip(q, time_limit_s=time_limit_s, mip_gap=mip_gap, start=start)
        if chosen is None:
            points.append({"target_speedup": s, "feasible": False})
            continue
        check = verify(q, chosen, info["objective"])
        start = check["layers"]
        points.append({"target_speedup": s, "feasible": True, "objective": check["objective"],
                       "pattern": pattern_string(check["layers"]),
                       "layers": [str(c) for c in check["layers"]], "predicted": check["predicted"],
                       "seconds": info["seconds"], "mip_gap": info["mip_gap"]})
    points.sort(key=lambda pt: pt["target_speedup"])
    model = p.profile.header.model
    given = {k: v for k, v in p.constraints.items() if k not in p.speedups.to_json()}
    front = Pareto(header=Header.new(model, env=p.profile.header.env, inputs=p.inputs), constraints=given,
                   speedups=tuple(values), points=tuple(points), files=tuple(map(str, written)))
    if write:
        frames.write_table(front, written[1])
        save(front, written[0])
    return front
