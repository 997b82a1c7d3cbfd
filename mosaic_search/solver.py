"""Stage 3: one candidate per layer, least predicted loss under latency, cache and count budgets (PuLP + HiGHS)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import files, frames, schema
from .errors import InfeasibleError, MosaicError, StaleInputError, UsageError, did_you_mean
from .operators import REGISTRY, Candidate, plot_color, unbuildable
from .schema import Header, LatencyProfile, LayerPlan, SensitivityTable

METRICS = ("kl", "delta_loss")
STRATEGIES = "mip, greedy, pattern:SYMBOLS"
# Search settings, not the model: with a near-optimal warm start, HiGHS's sub-MIP heuristics, restarts and
# cuts inside the tree cost more than they save on these small multiple-choice knapsacks (2.5x on the
# median in benchmarks/bench_solver.py). The answer stays optimal to `mip_gap` either way.
HIGHS_OPTIONS = {"mip_allow_restart": False, "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False,
                 "mip_allow_cut_separation_at_nodes": False}
_TOL = 1e-6  # relative slack when re-checking: HiGHS accepts rows violated by up to 1e-6 (mip_feasibility_tolerance)


@dataclass
class Problem:
    """The solver's view of a profile and a sensitivity table: allowed candidates, their costs, and the budgets."""

    profile: LatencyProfile
    scores: SensitivityTable
    inputs: dict
    workloads: tuple
    allowed: list
    lat: dict
    loss: dict
    metric: str
    cache: dict = field(default_factory=dict)
    cache_limit: float | None = None
    min_count: list = field(default_factory=list)
    max_count: list = field(default_factory=list)
    targets: dict = field(default_factory=dict)
    given: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        """Decoder layers in the model."""
        return len(self.allowed)

    def budget(self, w: str) -> float:
        """What the layers of workload `w` may take: the whole-model budget minus the fixed part."""
        return self.profile.teacher_ms(w) / self.targets[w] - self.profile.fixed_ms[w]


def matches(spec, c: Candidate) -> bool:
    """Whether a candidate is `spec`: an op name matches every param choice, a Candidate only itself."""
    return c == spec if isinstance(spec, Candidate) else c.op == spec


def parse_spec(text, where: str = "") -> str | Candidate:
    """'swa' (any window) or 'swa:window=1024' (that one); unknown ops fail with a suggestion."""
    if isinstance(text, Candidate):
        return text
    text = str(text).strip()
    try:
        if ":" in text:
            return Candidate.parse(text)
        if text not in REGISTRY:
            raise UsageError(f'unknown operator "{text}"{did_you_mean(text, REGISTRY)}; known: {", ".join(REGISTRY)}')
    except UsageError as e:
        raise UsageError(f"{where}: {e}" if where else str(e)) from None
    return text


def _pairs(items, what: str) -> list[tuple[str, str]]:
    """A mapping, or 'KEY=VALUE' strings as the CLI gives them, as (key, value) pairs."""
    if not items:
        return []
    if isinstance(items, dict):
        return [(str(k), v) for k, v in items.items()]
    out = []
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f'{what}: cannot parse "{item}", expected KEY=VALUE')
        out.append((key.strip(), value.strip()))
    return out


def _counts(items, what: str, layers: int) -> list:
    out = []
    for key, value in _pairs(items, what):
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise UsageError(f"{what} {key}: count must be an integer, got {value!r}") from None
        if n < 0 or (what == "--min" and n > layers):  # a --max above the layers is merely no bound
            raise UsageError(f"{what} {key}={value}: a count of layers must be within 0..{layers}")
        out.append((parse_spec(key, f"{what} {key}={value}"), n))
    return out


# ---- inputs --------------------------------------------------------------------------------------

def _ranked(folder, kind: str, want=None) -> list[Path]:
    """Artifacts of `kind` under `folder`, newest `created_at` first, optionally only those for the model `want`."""
    found = []
    for path in Path(folder).glob("**/*.json"):
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # only the chosen file is validated, by its loader; others may belong to other tools
        if not isinstance(obj, dict) or obj.get("kind") != kind:
            continue
        m = obj.get("model") if isinstance(obj.get("model"), dict) else {}
        if want is not None and (m.get("config_sha256"), m.get("num_hidden_layers")) != (
                want.config_sha256, want.num_hidden_layers):
            continue
        found.append((str(obj.get("created_at", "")), str(path), path))
    return [p for *_, p in sorted(found, reverse=True)]


def _load(thing, loader):
    if thing is None or isinstance(thing, (LatencyProfile, SensitivityTable)):
        return thing, None
    return loader(thing), Path(thing)


def _fingerprint(artifact, path) -> str:
    return schema.sha256_file(path) if path else schema.sha256_json(schema.to_json(artifact))


def _env_has(env: dict, key: str, value) -> bool:
    """Whether a profile's env matches: a device by name fragment ('h100' in 'NVIDIA H100 80GB HBM3'), else exactly."""
    if key == "device":
        return any(str(value).lower() in str(env.get(k, "")).lower() for k in ("device_name", "device"))
    return str(env.get(key, "")) == str(value)


def load_inputs(profile=None, scores=None, allow_stale=False, device=None, target_env=None,
                profiles_dir="profiles", plans_dir="layer_plans") -> tuple[LatencyProfile, SensitivityTable, dict]:
    """Load (or find the newest matching) profile and sensitivity table and check they belong together."""
    profile, ppath = _load(profile, schema.load_profile)
    scores, spath = _load(scores, schema.load_sensitivity)
    if profile is None and scores is not None:
        ppath = next(iter(_ranked(profiles_dir, schema.PROFILE_KIND, scores.header.model)), None)
        if ppath is None:
            raise UsageError(f"no latency profile for {scores.header.model.id} under {profiles_dir}/; "
                             "run `mosaic profile` or pass --profile")
        profile = schema.load_profile(ppath)
    elif profile is None:
        for path in _ranked(profiles_dir, schema.PROFILE_KIND):
            loaded = schema.load_profile(path)
            match = _ranked(plans_dir, schema.SENSITIVITY_KIND, loaded.header.model)
            if match:
                profile, ppath, spath = loaded, path, match[0]
                scores = schema.load_sensitivity(spath)
                break
        else:
            raise UsageError(f"no latency profile under {profiles_dir}/ with a matching sensitivity table under "
                             f"{plans_dir}/; run `mosaic profile` and `mosaic score`, or pass --profile/--scores")
    if scores is None:
        spath = next(iter(_ranked(plans_dir, schema.SENSITIVITY_KIND, profile.header.model)), None)
        if spath is None:
            raise UsageError(f"no sensitivity table for {profile.header.model.id} under {plans_dir}/; "
                             "run `mosaic score` or pass --scores")
        scores = schema.load_sensitivity(spath)
    pm, sm = profile.header.model, scores.header.model
    if pm.num_hidden_layers != sm.num_hidden_layers:
        raise UsageError(f"the profile has {pm.num_hidden_layers} layers ({pm.id}) but the sensitivity table has "
                         f"{sm.num_hidden_layers} ({sm.id}); they cannot describe the same model")
    schema.check_same_model(pm, sm, "sensitivity table", allow_stale)
    want = dict(_pairs(target_env, "env"))
    if device:
        want["device"] = device
    env = profile.header.env
    for key, value in want.items():
        if not allow_stale and not _env_has(env, key, value):
            have = env.get("device_name", env.get("device")) if key == "device" else env.get(key)
            raise StaleInputError(f'the profile was measured with {key}="{have}", not "{value}"; '
                                  "profile on the target or pass --allow-stale")
    inputs = {"profile": _fingerprint(profile, ppath), "scores": _fingerprint(scores, spath)}
    return profile, scores, inputs


# ---- the problem ---------------------------------------------------------------------------------

def _positive(name: str, value, integer: bool = False):
    if value is None:
        return None
    try:
        v = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0 or (integer and v != value):
        raise UsageError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return v


def _cache_workload(profile: LatencyProfile, context):
    """The workload whose recorded cache_bytes (per sequence, docs/design.md §2) the cache bound reads."""
    if not profile.workloads:
        raise UsageError("the profile declares no workloads")
    if context is None:
        return max(profile.workloads, key=lambda w: (w.seq_len, w.phase == "decode"))
    fits = [w for w in profile.workloads if w.seq_len == context]
    if not fits:
        have = ", ".join(sorted({str(w.seq_len) for w in profile.workloads}))
        raise UsageError(f"--cache-context {context}: the profile has no workload at that context (has: {have})")
    return max(fits, key=lambda w: w.phase == "decode")


def set_targets(p: Problem, speedup=None, ttft_speedup=None, tpot_speedup=None) -> Problem:
    """Per-workload speedup targets: ttft_speedup for prefill, tpot_speedup for decode, speedup for the rest."""
    speedup = _positive("--speedup", speedup)
    by_phase = {"prefill": _positive("--ttft-speedup", ttft_speedup),
                "decode": _positive("--tpot-speedup", tpot_speedup)}
    for phase, name in (("prefill", "--ttft-speedup"), ("decode", "--tpot-speedup")):
        if by_phase[phase] is not None and not any(w.phase == phase for w in p.workloads):
            raise UsageError(f"{name} {by_phase[phase]}: no {phase} workload in scope")
    targets = {}
    for w in p.workloads:
        s = by_phase[w.phase] if by_phase[w.phase] is not None else speedup
        if s is None:
            continue
        base, fixed = p.profile.teacher_ms(w.name), p.profile.fixed_ms.get(w.name)
        if base is None or base <= 0 or fixed is None:
            raise UsageError(f"workload {w.name}: the profile has no baseline_ms/fixed_ms for it")
        targets[w.name] = s
    p.targets = targets
    p.given.update(speedup=speedup, ttft_speedup=by_phase["prefill"], tpot_speedup=by_phase["decode"],
                   targets=dict(targets))
    return p


def prepare(profile=None, scores=None, speedup=None, workloads=None, ttft_speedup=None, tpot_speedup=None,
            max_cache_bytes=None, cache_batch=1, cache_context=None, ops=None, pins=None, min_count=None,
            max_count=None, metric="kl", allow_stale=False, device=None, target_env=None,
            profiles_dir="profiles", plans_dir="layer_plans") -> Problem:
    """Check every input and turn the profile and the sensitivity table into one Problem."""
    if metric not in METRICS:
        raise UsageError(f'unknown metric "{metric}"{did_you_mean(metric, METRICS)}; known: {", ".join(METRICS)}')
    profile, scores, inputs = load_inputs(profile, scores, allow_stale, device, target_env, profiles_dir, plans_dir)
    by_name = {w.name: w for w in profile.workloads}
    names = [workloads] if isinstance(workloads, str) else list(workloads or by_name)
    for name in names:
        if name not in by_name:
            raise UsageError(f'unknown workload "{name}"{did_you_mean(name, by_name)}; the profile has: '
                             f'{", ".join(by_name) or "none"}')
    scope = tuple(by_name[n] for n in dict.fromkeys(names))
    if not scope:
        raise UsageError("the profile declares no workloads")
    lat, failed = {}, set()
    for e in profile.entries:
        if e.workload in names:
            if e.status == "ok" and e.latency_ms is not None:
                lat.setdefault((e.layer, e.candidate), {})[e.workload] = e.latency_ms
            else:
                failed.add((e.layer, e.candidate))
    loss = {(e.layer, e.candidate): float(getattr(e, metric)) for e in scores.entries}
    cache, cache_limit, ref = {}, _positive("--max-cache-bytes", max_cache_bytes), None
    batch = _positive("--cache-batch", cache_batch, integer=True)
    if cache_limit is None and (cache_context is not None or batch != 1):
        raise UsageError("--cache-context and --cache-batch describe the --max-cache-bytes bound; give it too")
    if cache_limit is not None:
        ref = _cache_workload(profile, cache_context)
        cache = {(e.layer, e.candidate): batch * e.cache_bytes for e in profile.entries if e.workload == ref.name}
    items = (ops.split(",") if isinstance(ops, str) else ops) if ops is not None else []
    keep = [parse_spec(t, "--ops") for t in items if str(t).strip()]
    if ops is not None and not keep:
        raise UsageError("--ops: empty operator list")
    held = {c for _, c in lat} & {c for _, c in loss}
    for spec in keep:
        if not any(matches(spec, c) for c in held):
            raise UsageError(f"--ops {spec}: not in both the profile and the sensitivity table (they hold: "
                             f"{', '.join(c.label for c in sorted(held))})")
    allowed = [[] for _ in range(profile.header.model.num_hidden_layers)]
    # A candidate is allowed at a layer only if it ran (status ok) on every workload in scope and was scored.
    for key in sorted(lat, key=lambda k: (k[0], k[1])):
        if (len(lat[key]) == len(scope) and key not in failed and key in loss and (cache_limit is None or key in cache)
                and (not keep or any(matches(s, key[1]) for s in keep))):
            allowed[key[0]].append(key[1])
    given_pins = {}
    for layer_text, spec_text in _pairs(pins, "--pin"):
        try:
            layer = int(layer_text)
        except ValueError:
            raise UsageError(f'--pin "{layer_text}={spec_text}": the layer must be an integer') from None
        if not 0 <= layer < len(allowed):
            raise UsageError(f"--pin {layer}={spec_text}: layer {layer} is outside 0..{len(allowed) - 1}")
        spec = parse_spec(spec_text, f"--pin {layer}={spec_text}")
        here = [c for c in allowed[layer] if matches(spec, c)]
        if not here:
            raise UsageError(f"--pin {layer}={spec}: not an allowed candidate at layer {layer} (allowed: "
                             f"{', '.join(map(str, allowed[layer])) or 'none'})")
        allowed[layer], given_pins[str(layer)] = here, str(spec)
    for layer, cs in enumerate(allowed):
        if not cs:
            raise UsageError(f"layer {layer} has no allowed candidate: none is profiled ok on every workload in "
                             "scope, scored, and in --ops")
    mins, maxs = _counts(min_count, "--min", len(allowed)), _counts(max_count, "--max", len(allowed))
    given = {"workloads": [w.name for w in scope], "metric": metric, "max_cache_bytes": cache_limit,
             "cache_batch": cache_batch if ref else None, "cache_workload": ref.name if ref else None,
             "ops": [str(s) for s in keep] or None, "pins": given_pins or None,
             "min_count": {str(s): n for s, n in mins} or None, "max_count": {str(s): n for s, n in maxs} or None}
    p = Problem(profile=profile, scores=scores, inputs=inputs, workloads=scope, allowed=allowed, lat=lat, loss=loss,
                metric=metric, cache=cache, cache_limit=cache_limit, min_count=mins, max_count=maxs, given=given)
    return set_targets(p, speedup, ttft_speedup, tpot_speedup)


# ---- the MIP -------------------------------------------------------------------------------------

def _pulp():
    try:
        import pulp
    except ImportError:
        raise MosaicError("pulp is not installed: pip install pulp highspy") from None
    return pulp


def _rows(p: Problem, keys: list, minimize, budgets: bool, avoid, min_distance: int):
    """Objective and every constraint but one-per-layer, as dense `A x <= b` rows over the columns `keys`."""
    import numpy as np

    cost = [p.loss[k] if minimize is None else p.lat[k][minimize] for k in keys]
    rows, rhs = [], []
    if budgets:
        for w in p.targets:
            rows.append([p.lat[k][w] for k in keys])
            rhs.append(p.budget(w))
    if p.cache_limit is not None:
        rows.append([p.cache[k] for k in keys])
        rhs.append(p.cache_limit)
    for specs, sign in ((p.min_count, -1.0), (p.max_count, 1.0)):  # min counts as -count <= -n
        for spec, n in specs:
            rows.append([sign * matches(spec, c) for _, c in keys])
            rhs.append(sign * n)
    rows.append([-float(c.spec.counts_tokens) for _, c in keys])  # operators.unbuildable: >= 1 attention layer
    rhs.append(-1.0)
    for prev in avoid:
        rows.append([float(c == prev[l]) for l, c in keys])
        rhs.append(p.num_layers - min_distance)
    return np.array(cost, float), np.array(rows, float).reshape(len(rhs), len(keys)), np.array(rhs, float)


def _model(pulp, keys, cols, cost, A, b, integer: bool):
    """The PuLP model over the columns `cols`: one candidate per layer, `A x <= b`, least `cost`."""
    prob = pulp.LpProblem("mosaic", pulp.LpMinimize)
    cat = pulp.LpBinary if integer else pulp.LpContinuous
    x = {j: prob.add_variable(f"x_{j}", 0, 1, cat) for j in cols}
    prob += pulp.LpAffineExpression([(x[j], cost[j]) for j in cols])
    layers = {}
    for j in cols:
        layers.setdefault(keys[j][0], []).append(x[j])
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
    reachable speedup). `avoid` lists assignments the answer must differ from in >= `min_distance` layers.
    `start` (one candidate per layer), if feasible, is a warm start: the answer is never worse than it.
    Exact speed-up, measured in benchmarks/bench_solver.py: the LP relaxation gives a bound and a rounded
    incumbent; a column whose LP reduced cost exceeds (incumbent - bound) cannot be in any optimum and is
    dropped; HiGHS then solves the smaller MIP from that incumbent. `reduce=False` solves the plain MIP.
    """
    import numpy as np

    pulp = _pulp()
    began = time.perf_counter()
    keys = [(l, c) for l, cs in enumerate(p.allowed) for c in cs]
    cost, A, b = _rows(p, keys, minimize, budgets, avoid, min_distance)
    layer = np.array([l for l, _ in keys])
    info = {"name": "highs", "seconds": 0.0, "mip_gap": None, "time_limit_s": time_limit_s, "columns": len(keys)}
    lp, x = _model(pulp, keys, range(len(keys)), cost, A, b, integer=False)
    lp.solve(pulp.HiGHS(msg=False, mip=False, timeLimit=time_limit_s))
    if pulp.LpStatus[lp.status] == "Infeasible":  # no fractional assignment fits, so no integer one does
        info.update(status="Infeasible", seconds=round(time.perf_counter() - began, 6))
        return None, info
    cols, warm = range(len(keys)), None
    if reduce and pulp.LpStatus[lp.status] == "Optimal":
        xv = np.array([x[j].varValue or 0.0 for j in cols])
        from .baselines import incumbent

        warm = incumbent(xv, cost, A, b, layer)
    if start is not None:
        given = np.array([keys.index((l, c)) for l, c in enumerate(start)]) if all(
            c in p.allowed[l] for l, c in enumerate(start)) else None
        if given is not None and np.all(A[:, given].sum(axis=1) <= b + 1e-9 * np.maximum(1.0, np.abs(b))) and (
                warm is None or cost[given].sum() < cost[warm].sum()):
            warm = given
    if warm is not None and reduce:
        bound, upper = float(lp.objective.value() or 0.0), float(cost[warm].sum())
        reduced = np.array([x[j].dj or 0.0 for j in cols])
        keep = bound + reduced <= upper + 1e-6 * max(1.0, abs(upper))
        keep[warm] = True
        cols = np.flatnonzero(keep)
    prob, y = _model(pulp, keys, cols, cost, A, b, integer=True)
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
        raise MosaicError(f"HiGHS found no assignment within {time_limit_s} s ({status}); raise --time-limit")
    info["objective"] = float(hinfo.objective_function_value)
    picked = {keys[j] for j in cols if (y[j].varValue or 0) > 0.5}
    return [[c for c in cs if (l, c) in picked] for l, cs in enumerate(p.allowed)], info


def reachability(p: Problem, time_limit_s=60) -> str:
    """One line: the largest speedup each constrained workload reaches alone (its minimum-latency assignment)."""
    parts, reach_all = [], True
    for w, target in p.targets.items():
        chosen, _ = run_mip(p, minimize=w, budgets=False, time_limit_s=time_limit_s)
        if chosen is None:
            break
        ms = p.profile.fixed_ms[w] + sum(p.lat[l, cs[0]][w] for l, cs in enumerate(chosen))
        best = p.profile.teacher_ms(w) / ms if ms > 0 else math.inf
        reach_all &= best >= target
        parts.append(f"{w} {best:.3f}x (target {target:.3f}x)")
    if not parts:
        return ("no buildable assignment (at least one attention layer) satisfies the ops, pins, operator counts "
                "and cache bound, even with no latency target")
    note = " (each is reachable alone, not all together with the other constraints)" if reach_all else ""
    return f"speedup target not reachable; largest reachable speedup, each workload alone: {', '.join(parts)}{note}"


# ---- verify, don't trust -------------------------------------------------------------------------

def verify(p: Problem, chosen, claimed=None) -> dict:
    """Recompute latency, cache, counts and objective from the input artifacts; refuse any broken rule."""
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
    # Read the artifacts again rather than the solver's tables, so a bug in building them shows up here.
    entries = {(e.layer, e.candidate, e.workload): e for e in p.profile.entries}
    scored = {(e.layer, e.candidate): getattr(e, p.metric) for e in p.scores.entries}
    predicted = {}
    for w in (w.name for w in p.workloads):
        base = p.profile.teacher_ms(w)  # the same additive model as `ms` (see LatencyProfile.teacher_ms)
        if w not in p.profile.fixed_ms or not base:
            continue
        ms = p.profile.fixed_ms[w]
        for l, c in enumerate(layers):
            e = entries.get((l, c, w))
            if e is None or e.status != "ok" or e.latency_ms is None:
                fail(f"layer {l}: {c} has no ok latency for {w}")
            ms += e.latency_ms
        predicted[w] = {"latency_ms": ms, "baseline_ms": base, "measured_baseline_ms": p.profile.baseline_ms.get(w),
                        "speedup": base / ms if ms > 0 else None}
        if w in p.targets:
            limit = base / p.targets[w]
            if ms > limit + _TOL * max(1.0, limit):
                fail(f"{w} takes {ms:.6g} ms, over its budget of {limit:.6g} ms")
    if any((l, c) not in scored for l, c in enumerate(layers)):
        fail("a chosen candidate has no score")
    if why := unbuildable(layers):
        fail(why)
    objective = float(sum(scored[l, c] for l, c in enumerate(layers)))
    if claimed is not None and abs(claimed - objective) > _TOL * max(1.0, abs(objective)):
        fail(f"the solver's objective {claimed:.6g} differs from the recomputed {objective:.6g}")
    cache = None
    if p.cache_limit is not None:
        ref, batch = p.given["cache_workload"], p.given["cache_batch"]
        cache = sum(batch * entries[l, c, ref].cache_bytes for l, c in enumerate(layers))
    if cache is not None and cache > p.cache_limit * (1 + _TOL):
        fail(f"cache {cache} bytes is over the bound of {p.cache_limit:.0f}")
    for spec, n in p.min_count:
        if sum(matches(spec, c) for c in layers) < n:
            fail(f"fewer than {n} layers of {spec}")
    for spec, n in p.max_count:
        if sum(matches(spec, c) for c in layers) > n:
            fail(f"more than {n} layers of {spec}")
    per_layer = []
    teacher = p.profile.teacher_layers()  # "latency saved" is measured from the teacher's own operator in the layer
    for l, c in enumerate(layers):
        saved = {}
        for w in predicted:
            t = entries.get((l, teacher[l], w))
            ok = t is not None and t.status == "ok" and t.latency_ms is not None
            saved[w] = t.latency_ms - entries[l, c, w].latency_ms if ok else None
        per_layer.append({"layer": l, "candidate": str(c), "loss": float(scored[l, c]), "saved_ms": saved})
    return {"layers": layers, "predicted": predicted, "objective": objective, "cache_bytes": cache,
            "per_layer": per_layer}


def _plan(p: Problem, check: dict, info: dict) -> LayerPlan:
    header = Header.new(p.profile.header.model, env=p.profile.header.env, inputs=p.inputs)
    solver = {**info, "cache_bytes": check["cache_bytes"], "per_layer": check["per_layer"]}
    return LayerPlan(header=header, layers=tuple(check["layers"]), predicted=check["predicted"],
                     objective=check["objective"], constraints=dict(p.given), solver=solver)


def plan_path(model_id: str, out=None, rank: int = 1, plans_dir="layer_plans", name="plan.json") -> Path:
    """Where a plan is written: `out`, or layer_plans/<model>/plan.json; the k-th of several gets '-k'."""
    from .models import slug

    path = files.output_path(out, Path(plans_dir) / slug(model_id) / name)
    return path.with_name(f"{path.stem}-{rank}{path.suffix}") if rank > 1 else path


def _assign(p: Problem, strategy: str, time_limit_s, mip_gap):
    if strategy == "mip":
        chosen, info = run_mip(p, time_limit_s=time_limit_s, mip_gap=mip_gap)
        if chosen is None:
            raise InfeasibleError(reachability(p, time_limit_s))
        return chosen, info
    from . import baselines

    if strategy == "greedy":
        return baselines.greedy(p)
    if strategy.startswith("pattern:"):
        return baselines.pattern(p, strategy.partition(":")[2])
    raise UsageError(f'unknown strategy "{strategy}"{did_you_mean(strategy, ("mip", "greedy"))}; known: {STRATEGIES}')


def _needs_target(p: Problem, strategy: str) -> None:
    if not strategy.startswith("pattern:") and not (p.targets or p.cache_limit or p.min_count or p.max_count):
        raise UsageError("nothing to trade quality for: give --speedup, --ttft-speedup, --tpot-speedup or "
                         "--max-cache-bytes")


def solve(profile=None, scores=None, speedup=None, workloads=None, ttft_speedup=None, tpot_speedup=None,
          max_cache_bytes=None, cache_batch=1, cache_context=None, ops=None, pins=None, min_count=None,
          max_count=None, strategy="mip", time_limit_s=60, mip_gap=1e-4, metric="kl", allow_stale=False,
          device=None, target_env=None, out=None, write=True, overwrite=False, profiles_dir="profiles",
          plans_dir="layer_plans") -> LayerPlan:
    """The least-loss plan meeting every target (or a greedy / fixed-pattern baseline), verified and saved.

    An existing plan at the output is replaced only with `overwrite` (as `build` replaces a model directory)."""
    p = prepare(profile, scores, speedup, workloads, ttft_speedup, tpot_speedup, max_cache_bytes, cache_batch,
                cache_context, ops, pins, min_count, max_count, metric, allow_stale, device, target_env,
                profiles_dir, plans_dir)
    _needs_target(p, strategy)
    _positive("--time-limit", time_limit_s)
    path = plan_path(p.profile.header.model.id, out, plans_dir=plans_dir)
    if write:
        files.check_output(path, overwrite=overwrite)
    chosen, info = _assign(p, strategy, time_limit_s, mip_gap)
    plan = _plan(p, verify(p, chosen, info.get("objective")), {"strategy": strategy, **info})
    if write:
        schema.save(plan, path)
    return plan


def solve_many(solutions=3, min_distance=1, *, time_limit_s=60, mip_gap=1e-4, out=None, write=True,
               overwrite=False, **inputs) -> list[LayerPlan]:
    """Up to `solutions` least-loss plans, each differing from every other in >= `min_distance` layers.

    Other keywords are those of `prepare` (as in `solve`). Fewer plans come back when no more exist.
    """
    p = prepare(**inputs)
    _needs_target(p, "mip")
    solutions = _positive("--solutions", solutions, integer=True)
    if isinstance(min_distance, bool) or not isinstance(min_distance, int) or not 1 <= min_distance <= p.num_layers:
        raise UsageError(f"--min-distance must be within 1..{p.num_layers} (the model's layers), got {min_distance}")
    _positive("--time-limit", time_limit_s)
    paths = [plan_path(p.profile.header.model.id, out, rank, inputs.get("plans_dir", "layer_plans"))
             for rank in range(1, solutions + 1)]
    for path in paths if write else ():
        files.check_output(path, overwrite=overwrite)
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
            schema.save(plan, path)
    return plans


# ---- the Pareto frontier -------------------------------------------------------------------------

def parse_sweep(text) -> list[float]:
    """'1.1:3.0:0.1' (start:stop:step, stop included) or a list of speedups."""
    if not isinstance(text, str):
        return [_positive("--sweep speedup", v) for v in text]
    try:
        start, stop, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise UsageError(f'--sweep "{text}": expected START:STOP:STEP, e.g. 1.1:3.0:0.1') from None
    if not (start > 0 and step > 0 and stop >= start) or not all(map(math.isfinite, (start, stop, step))):
        raise UsageError(f'--sweep "{text}": need 0 < START <= STOP and STEP > 0')
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > 1000:
        raise UsageError(f'--sweep "{text}": {count} points; at most 1000')
    return [round(start + i * step, 9) for i in range(count)]


def plot_frontier(points: list, title: str, path: str, num_layers: int, measured: dict | None = None) -> None:
    """The frontier's predicted loss per target and each plan's layers, as a PNG at `path`; `measured`
    ({label: [(target speedup, measured KL), ...]}) adds models measured after building or distilling."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    ok = [pt for pt in points if pt["feasible"]]
    xs = [pt["target_speedup"] for pt in ok]
    fig, (front, plans) = plt.subplots(2, 1, figsize=(7, 3 + 0.12 * num_layers), sharex=True,
                                       gridspec_kw={"height_ratios": [2, 1 + 0.06 * num_layers]})
    front.plot(xs, [pt["objective"] for pt in ok], "o-", color="black")  # black: no operator's colour
    for (label, pts), marker in zip((measured or {}).items(), "xs^v"):
        front.plot([x for x, _ in pts], [y for _, y in pts], marker, linestyle="none", color="black", label=label)
    if measured:
        front.legend(fontsize=7, loc="upper left")
    front.set_ylabel("predicted loss (sum of scores)" + ("; measured KL" if measured else ""))
    front.set_title(title)
    front.grid(alpha=0.3)
    # Each plan as a column of its layers, in the colours every mosaic plot gives these operators.
    width = 0.8 * min((b - a for a, b in zip(xs, xs[1:])), default=0.1)
    ops = [[Candidate.parse(c).op for c in pt["layers"]] for pt in ok]
    for x, layer_ops in zip(xs, ops):
        plans.bar([x] * len(layer_ops), 1, bottom=range(len(layer_ops)), width=width,
                  color=[plot_color(op) for op in layer_ops])
    plans.set_ylim(num_layers, 0)
    plans.yaxis.set_major_locator(MaxNLocator(integer=True))
    plans.set_ylabel("layer")
    plans.set_xlabel("target speedup (every constrained workload)")
    used = [op for op in REGISTRY if any(op in layer_ops for layer_ops in ops)]
    if used:
        plans.legend(handles=[Patch(color=plot_color(op), label=op) for op in used], fontsize=7,
                     loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def sweep(speedups="1.1:3.0:0.1", *, plot=False, time_limit_s=60, mip_gap=1e-4, out=None, write=True,
          overwrite=False, **inputs) -> dict:
    """The Pareto frontier: the least predicted loss at each speedup target, saved as JSON + CSV (+ PNG).

    Other keywords are those of `prepare`, except the speedups, which the sweep sets.
    """
    for key in ("speedup", "ttft_speedup", "tpot_speedup"):
        if inputs.get(key) is not None:
            raise UsageError(f"--sweep sets the speedup itself; drop --{key.replace('_', '-')} and narrow with "
                             "--workload instead")
    values = parse_sweep(speedups)
    _positive("--time-limit", time_limit_s)
    p = prepare(**inputs)
    model = p.profile.header.model
    path = plan_path(model.id, out, plans_dir=inputs.get("plans_dir", "layer_plans"), name="pareto.json")
    csv_path, png_path = path.with_suffix(".csv"), path.with_suffix(".png")
    for target in [path, csv_path] + ([png_path] if plot else []) if write else ():
        files.check_output(target, overwrite=overwrite)
    points, start = [], None
    # Tightest first: each plan is feasible for the next, looser target and warm-starts it, so the
    # frontier's loss never rises as the target loosens, whatever the MIP gap.
    for s in sorted(values, reverse=True):
        set_targets(p, speedup=s)
        chosen, info = run_mip(p, time_limit_s=time_limit_s, mip_gap=mip_gap, start=start)
        if chosen is None:
            points.append({"target_speedup": s, "feasible": False})
            continue
        check = verify(p, chosen, info["objective"])
        start = check["layers"]
        points.append({"target_speedup": s, "feasible": True, "objective": check["objective"],
                       "pattern": "".join(REGISTRY[c.op].symbol for c in check["layers"]),
                       "layers": [str(c) for c in check["layers"]], "predicted": check["predicted"],
                       "seconds": info["seconds"], "mip_gap": info["mip_gap"]})
    points.sort(key=lambda pt: pt["target_speedup"])
    given = {k: v for k, v in p.given.items() if k not in ("speedup", "ttft_speedup", "tpot_speedup", "targets")}
    result = {"kind": schema.PARETO_KIND, "schema_version": schema.SCHEMA_VERSION,
              "created_by": schema.package_version(), "created_at": schema.utc_now(),
              "model": {"id": model.id, "config_sha256": model.config_sha256,
                        "num_hidden_layers": model.num_hidden_layers},
              "env": p.profile.header.env, "inputs": p.inputs, "constraints": given, "speedups": values,
              "points": points, "files": []}
    if write:
        result["files"] = [str(path), str(csv_path)] + ([str(png_path)] if plot else [])
        frames.write_table(result, csv_path)
        if plot:
            with files.atomic_path(png_path) as tmp:
                plot_frontier(points, f"{model.id}: predicted loss vs speedup", str(tmp), model.num_hidden_layers)
        files.write_json(path, result)
    return result
