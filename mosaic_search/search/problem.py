"""Stage 3's problem: a profile and a sensitivity table as typed per-layer choices under budgets, with the one
predicted latency and the one constraint check that the solver, its baselines and its re-check share.

`prepare` builds the complete, immutable Problem in steps: the inputs read (`inputs.load_inputs`), the workloads in
scope, the cache bound, the candidates each layer allows (`options`, `choices.layer_choices`), the pins, the counts,
the speedup targets, the memory bound (`memory.memory_bound`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from ..artifacts.files import PLANS_DIR, PROFILES_DIR
from ..artifacts.profile import LatencyProfile, Workload
from ..artifacts.sensitivity import SensitivityTable
from ..errors import UsageError, check, did_you_mean, flags, invalid, listed
from ..operators import Candidate, unbuildable
from .choices import Choice, layer_choices
from .inputs import load_inputs
from .memory import MemoryBound, memory_bound
from .specs import counts, matches, pairs, parse_parts, parse_spec, positive

METRICS = ("kl", "delta_loss")


@dataclass(frozen=True)
class Speedups:
    """The speedup targets over the teacher as given (each None when not) and, `per_workload`, what they ask of each
    workload in scope: `ttft_speedup` of prefill workloads, `tpot_speedup` of decode ones, `speedup` of the rest."""

    speedup: float | None = None
    ttft_speedup: float | None = None
    tpot_speedup: float | None = None
    per_workload: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """As a plan's `constraints` records them (`targets`: per workload)."""
        return {"speedup": self.speedup, "ttft_speedup": self.ttft_speedup, "tpot_speedup": self.tpot_speedup,
                "targets": dict(self.per_workload)}


@dataclass(frozen=True)
class CacheBound:
    """At most `limit_bytes` of cache for `batch` sequences at the context of `workload` (whose recorded
    per-sequence cache_bytes it reads)."""

    limit_bytes: float
    workload: str
    batch: int


@dataclass(frozen=True)
class Row:
    """One budget as a linear row over choices: the sum of `usage(choice)` over the layers is at most `limit`;
    `scale` makes rows commensurable for the heuristics (a budget's excess is measured as a fraction of it)."""

    usage: Callable[[Choice], float]
    limit: float
    scale: float = 1.0


@dataclass(frozen=True)
class Problem:
    """The solver's view of a profile and a sensitivity table: the choices at each layer, and the budgets.

    Complete when built (`prepare`) and immutable; each constraint is held once, as given: `speedups`, `cache`
    and `memory` (None: no bound), `min_count` / `max_count` ((op name or Candidate, layers), ...), `ops` (the
    operator specs allowed; empty: all) and `pins` ((layer, spec), ...). `options[layer]`: the candidates the inputs
    allow there, in Candidate order, before pins; `choices`: after them. `constraints` is the record a plan keeps of
    them.
    """

    profile: LatencyProfile
    scores: SensitivityTable
    inputs: dict
    workloads: tuple[Workload, ...]
    metric: str
    options: tuple[tuple[Choice, ...], ...]
    ops: tuple = ()
    pins: tuple = ()
    speedups: Speedups = Speedups()
    cache: CacheBound | None = None
    min_count: tuple = ()
    max_count: tuple = ()
    memory: MemoryBound | None = None
    sources: dict = field(default_factory=dict)  # what was read: `load_inputs`' sources, named in the plan

    @property
    def num_layers(self) -> int:
        """Decoder layers in the model."""
        return len(self.options)

    @property
    def bounded(self) -> bool:
        """Whether anything asks the plan to trade quality: a speedup target, a cache or memory bound, a count."""
        return bool(self.targets or self.cache or self.memory or self.min_count or self.max_count)

    @cached_property
    def choices(self) -> tuple[tuple[Choice, ...], ...]:
        """The choices at each layer: its options, less those its pins exclude."""
        return pinned(self.options, self.pins)

    @cached_property
    def allowed(self) -> list[list[Candidate]]:
        """The candidates allowed at each layer (those of `choices`)."""
        return [[ch.candidate for ch in layer] for layer in self.choices]

    @cached_property
    def _index(self) -> dict:
        return {(ch.layer, ch.candidate): ch for layer in self.choices for ch in layer}

    def choice(self, layer: int, candidate: Candidate) -> Choice:
        """The choice of `candidate` at `layer`; KeyError when it is not allowed there."""
        return self._index[layer, candidate]

    @property
    def targets(self) -> dict:
        """{workload: speedup target} of the constrained workloads."""
        return self.speedups.per_workload

    def budget(self, w: str) -> float:
        """What the layers of workload `w` may take (ms): the whole-model budget minus the fixed part."""
        return self.profile.teacher_ms(w) / self.targets[w] - self.profile.fixed_ms[w]

    def rows(self, latency: bool = True) -> list[Row]:
        """Every budget but one-candidate-per-layer as a linear row, in the order the MIP states them: each speedup
        target (unless not `latency`), the cache bound, the memory bound, the operator counts (a min count as
        -count <= -n) and `operators.unbuildable` (at least one attention layer, as -count <= -1)."""
        out = [Row(lambda ch, w=w: ch.latency_ms[w], self.budget(w),
                   self.profile.teacher_ms(w) / self.targets[w]) for w in self.targets if latency]
        if self.cache is not None:
            out.append(Row(lambda ch: ch.cache_bytes, self.cache.limit_bytes, self.cache.limit_bytes))
        if (m := self.memory) is not None:
            out.append(Row(lambda ch: m.per_choice[ch.layer, ch.candidate], m.layer_limit, m.layer_limit))
        out += [Row(lambda ch, s=spec: -float(matches(s, ch.candidate)), -float(n))
                for spec, n in self.min_count]
        out += [Row(lambda ch, s=spec: float(matches(s, ch.candidate)), float(n))
                for spec, n in self.max_count]
        out.append(Row(lambda ch: -float(ch.candidate.spec.counts_tokens), -1.0))
        return out

    @property
    def constraints(self) -> dict:
        """The constraints as given, which a plan records (`constraints`)."""
        c = self.cache
        return {"workloads": [w.name for w in self.workloads], "metric": self.metric,
                "max_cache_bytes": c.limit_bytes if c else None, "cache_batch": c.batch if c else None,
                "cache_workload": c.workload if c else None, "ops": [str(s) for s in self.ops] or None,
                "pins": {str(layer): str(spec) for layer, spec in self.pins} or None,
                "min_count": {str(s): n for s, n in self.min_count} or None,
                "max_count": {str(s): n for s, n in self.max_count} or None, **self.speedups.to_json(),
                **(self.memory.to_json() if self.memory else {})}

    def with_speedups(self, speedup=None, ttft_speedup=None, tpot_speedup=None, floor: float = 1.0) -> "Problem":
        """The same problem under other speedup targets (as `prepare` takes them; `floor`: as `speedup_targets`)."""
        return dataclasses.replace(self, speedups=speedup_targets(self.profile, self.workloads, speedup,
                                                                   ttft_speedup, tpot_speedup, floor))

    def with_pins(self, pins) -> "Problem":
        """The same problem with more layers pinned: `pins` as `prepare` takes them ({layer: Candidate or op} or
        "LAYER=OP" strings), each checked against what its layer still allows (UsageError)."""
        return dataclasses.replace(self, pins=self.pins + check_pins(self.options, pins, self.pins))


# ---- the problem, step by step ------------------------------------------------------------------
# Each step checks its own arguments, in the order `prepare` takes them, so the first bad one is the one reported.

def _scope(profile: LatencyProfile, workloads) -> tuple[Workload, ...]:
    """The workloads in scope (names; default: all the profile declares)."""
    by_name = {w.name: w for w in profile.workloads}
    names = listed("workloads", workloads) or list(by_name)
    for name in names:
        if name not in by_name:
            raise UsageError(f'unknown workload "{name}"{did_you_mean(name, by_name)}; the profile has: '
                             f'{", ".join(by_name) or "none"}')
    scope = tuple(by_name[n] for n in dict.fromkeys(names))
    if not scope:
        raise UsageError("the profile declares no workloads")
    return scope


def _cache_workload(profile: LatencyProfile, context):
    """The workload whose recorded cache_bytes (per sequence, docs/design.md §2) the cache bound reads."""
    if not profile.workloads:
        raise UsageError("the profile declares no workloads")
    if context is None:
        return max(profile.workloads, key=lambda w: (w.seq_len, w.phase == "decode"))
    fits = [w for w in profile.workloads if w.seq_len == context]
    if not fits:
        have = ", ".join(sorted({str(w.seq_len) for w in profile.workloads}))
        raise invalid("cache_context", f"{context}: the profile has no workload at that context (has: {have})")
    return max(fits, key=lambda w: w.phase == "decode")


def cache_bound(profile: LatencyProfile, max_cache_bytes=None, cache_batch=1, cache_context=None,
                max_memory=None) -> CacheBound | None:
    """The cache bound: `max_cache_bytes` for `cache_batch` sequences at context `cache_context` (default: the
    longest profiled); None without `max_cache_bytes`. `max_memory` may take the batch and context instead."""
    limit = positive("max_cache_bytes", max_cache_bytes)
    batch = positive("cache_batch", cache_batch, integer=True)
    if limit is None and max_memory is None and (cache_context is not None or batch != 1):
        raise UsageError("`cache_context` and `cache_batch` describe the `max_cache_bytes` bound; give it too (or "
                         "`max_memory`)")
    return None if limit is None else CacheBound(limit, _cache_workload(profile, cache_context).name, batch)


def _measured(profile: LatencyProfile, scores: SensitivityTable, scope, metric: str) -> tuple[dict, set, dict]:
    """What the inputs say of each (layer, candidate): {key: {workload in scope: ms}} of its ok entries, the keys with
    an entry not ok in scope, and {key: loss under `metric`}."""
    names = {w.name for w in scope}
    lat, failed = {}, set()
    for e in profile.entries:
        if e.workload in names:
            if e.status == "ok" and e.latency_ms is not None:
                lat.setdefault((e.layer, e.candidate), {})[e.workload] = e.latency_ms
            else:
                failed.add((e.layer, e.candidate))
    return lat, failed, {(e.layer, e.candidate): float(getattr(e, metric)) for e in scores.entries}


def _ops(ops, held: set) -> tuple:
    """The operator specs of `ops` ("gqa,swa" or a list; None: every one), each held by both inputs; a mixer with an
    MLP (`gqa+mlp:width=256`) stands for its two parts, as in every stage's --ops (`surgery.candidates`)."""
    keep = tuple(dict.fromkeys(p for t in listed("ops", ops) or [] if str(t).strip() for p in parse_parts(t, "ops")))
    if ops is not None and not keep:
        raise invalid("ops", ": empty operator list")
    for spec in keep:
        if not any(matches(spec, c) for c in held):
            raise invalid("ops", f"{spec}: not in both the profile and the sensitivity table (they hold: "
                             f"{', '.join(c.label for c in sorted(held))})")
    return keep


def allowed_choices(profile: LatencyProfile, scores: SensitivityTable, scope, metric: str, ops=(),
                    cache=None) -> tuple:
    """The choices the inputs allow at each layer, in Candidate order: a candidate that ran ok on every workload in
    `scope`, was scored, has a cache entry under the `cache` bound and is one of `ops` (empty: any); and each such
    mixer with each such MLP candidate, costed from both axes' entries."""
    lat, failed, loss = _measured(profile, scores, scope, metric)
    kept = {}
    if cache is not None:
        kept = {(e.layer, e.candidate): cache.batch * e.cache_bytes for e in profile.entries
                if e.workload == cache.workload}
    ok = [key for key in sorted(lat) if len(lat[key]) == len(scope) and key not in failed and key in loss
          and (cache is None or key in kept)]
    return layer_choices(profile, ok, lat, loss, kept, ops)


def pinned(options: tuple, pins) -> tuple:
    """`options` (choices per layer) with each pinned layer ((layer, spec), ...) kept to those matching its spec."""
    out = list(options)
    for layer, spec in pins:
        out[layer] = tuple(ch for ch in out[layer] if matches(spec, ch.candidate))
    return tuple(out)


def check_pins(options: tuple, pins, earlier=()) -> tuple:
    """`pins` ("LAYER=OP" strings or {layer: spec}) as ((layer, spec), ...), each checked against what its layer
    allows after the `earlier` pins and those before it; UsageError for a bad one or a layer left with nothing."""
    out = list(earlier)
    for layer_text, spec_text in pairs(pins, "pins"):
        out.append(_pin([[ch.candidate for ch in cs] for cs in pinned(options, out)], str(layer_text), spec_text,
                        out))
    for layer, cs in enumerate(pinned(options, out)):
        if not cs:
            raise UsageError(f"layer {layer} has no allowed candidate: none is profiled ok on every workload in "
                             "scope, scored, and in `ops`")
    return tuple(out[len(earlier):])


def _pin(allowed: list, layer_text: str, spec_text: str, earlier=()):
    """Layer and spec of one of `pins`, checked against what that layer allows after the `earlier` pins."""
    try:
        layer = int(layer_text)
    except ValueError:
        raise invalid("pins", f'"{layer_text}={spec_text}": the layer must be an integer') from None
    if not 0 <= layer < len(allowed):
        raise invalid("pins", f"{layer}={spec_text}: layer {layer} is outside 0..{len(allowed) - 1}")
    spec = parse_spec(spec_text, "pins", f"{layer}={spec_text}")
    if not any(matches(spec, c) for c in allowed[layer]):
        before = [f"{layer}={s}" for at, s in earlier if at == layer]
        raise invalid("pins", f"{layer}={spec}: not an allowed candidate at layer {layer} ("
                      + (f"after {', '.join(before)}: " if before else "")
                      + f"allowed: {', '.join(map(str, allowed[layer])) or 'none'})")
    return layer, spec


def speedup_targets(profile: LatencyProfile, scope, speedup=None, ttft_speedup=None, tpot_speedup=None,
                    floor: float = 1.0) -> Speedups:
    """Per-workload speedup targets: ttft_speedup for prefill, tpot_speedup for decode, speedup for the rest; each at
    least `floor` (the serving solve lowers it: at a larger batch than the teacher's, a slower TPOT may still pay)."""
    speedup = positive("speedup", speedup)
    by_phase = {"prefill": positive("ttft_speedup", ttft_speedup),
                "decode": positive("tpot_speedup", tpot_speedup)}
    for param, value in (("speedup", speedup), ("ttft_speedup", by_phase["prefill"]),
                         ("tpot_speedup", by_phase["decode"])):
        check(value is None or value >= floor, param, f"must be at least 1 (a speedup over the teacher), got {value}: "
                                                  "below 1 it would allow a model slower than the teacher")
    for phase, name in (("prefill", "ttft_speedup"), ("decode", "tpot_speedup")):
        if by_phase[phase] is not None and not any(w.phase == phase for w in scope):
            raise invalid(name, f"{by_phase[phase]}: no {phase} workload in scope")
    targets = {}
    for w in scope:
        s = by_phase[w.phase] if by_phase[w.phase] is not None else speedup
        if s is None:
            continue
        base, fixed = profile.teacher_ms(w.name), profile.fixed_ms.get(w.name)
        if base is None or base <= 0 or fixed is None:
            raise UsageError(f"workload {w.name}: the profile has no baseline_ms/fixed_ms for it")
        targets[w.name] = s
    return Speedups(speedup, by_phase["prefill"], by_phase["decode"], targets)


def prepare(profile=None, scores=None, *, speedup=None, workloads=None, ttft_speedup=None, tpot_speedup=None,
            max_cache_bytes=None, cache_batch=1, cache_context=None, max_memory=None, ops=None, pins=None,
            min_count=None, max_count=None, metric="kl", allow_stale=False, device=None, target_env=None,
            profiles_dir=PROFILES_DIR, plans_dir=PLANS_DIR) -> Problem:
    """Check every input and turn the profile and the sensitivity table into one Problem.

    `profile` / `scores`: records, paths, or None (see `load_inputs`); `workloads`: names in scope (default:
    all); speedups are targets over the teacher (`speedup_targets`); `max_cache_bytes` bounds the cache of
    `cache_batch` sequences at context `cache_context` (default: the longest profiled), `max_memory` the weights
    and that cache together (bytes, or at most 1: a fraction of the teacher's, `memory.memory_bound`); `ops`:
    "gqa,swa" or a list, the candidates allowed; `pins`, `min_count`, `max_count`: "LAYER=OP" / "OP=N" strings or
    mappings.
    Raises UsageError (exit 2) for any bad value, StaleInputError (exit 4) as `load_inputs` does.
    """
    flags(allow_stale=allow_stale)
    if metric not in METRICS:
        raise UsageError(f'unknown metric "{metric}"{did_you_mean(str(metric), METRICS)}; known: {", ".join(METRICS)}')
    profile, scores, inputs, sources = load_inputs(profile, scores, allow_stale=allow_stale, device=device,
                                                   target_env=target_env, profiles_dir=profiles_dir,
                                                   plans_dir=plans_dir)
    scope = _scope(profile, workloads)
    cache = cache_bound(profile, max_cache_bytes, cache_batch, cache_context, max_memory)
    lat, _, loss = _measured(profile, scores, scope, metric)
    keep = _ops(ops, {c for _, c in lat} & {c for _, c in loss})
    allowed = allowed_choices(profile, scores, scope, metric, keep, cache)
    layers = len(allowed)
    return Problem(profile=profile, scores=scores, inputs=inputs, workloads=scope, metric=metric, options=allowed,
                   ops=keep, pins=check_pins(allowed, pins), min_count=tuple(counts(min_count, "min_count", layers)),
                   max_count=tuple(counts(max_count, "max_count", layers)),
                   speedups=speedup_targets(profile, scope, speedup, ttft_speedup, tpot_speedup), cache=cache,
                   memory=_memory(profile, allowed, max_memory, cache_batch, cache_context), sources=sources)


def read_paths(p: Problem) -> dict:
    """{parameter: path} of the files a problem was read from (`prepare`'s `profile` and `scores`, given or
    discovered; None for a record passed in memory): what no output of the run may replace."""
    return {name: src["path"] for name, src in p.sources.items()}


def check_keywords(caller, inputs: dict) -> None:
    """Refuse a keyword that neither `caller` (a function that hands its other keywords to `prepare`) nor `prepare`
    takes: a UsageError (exit 2) naming `caller`, where Python's TypeError would name `prepare`, which the caller
    never called."""
    import inspect

    known = [name for fn in (caller, prepare) for name, p in inspect.signature(fn).parameters.items()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    for key in inputs:
        if key not in known:
            raise UsageError(f'{caller.__name__}() has no parameter "{key}"{did_you_mean(key, known)}')


def _memory(profile: LatencyProfile, options: tuple, max_memory, cache_batch, cache_context) -> MemoryBound | None:
    """The memory bound of `prepare` (None without `max_memory`), at the cache bound's batch and context."""
    if (value := positive("max_memory", max_memory)) is None:
        return None
    return memory_bound(profile, options, value, positive("cache_batch", cache_batch, integer=True),
                        _cache_workload(profile, cache_context))


# ---- what an assignment costs, and which rules it breaks -----------------------------------------
# Both read the profile itself, not the problem's choices, so that the solver's re-check (solver.verify)
# catches a bug in building them.

def predicted(p: Problem, layers) -> dict:
    """{workload: {latency_ms, baseline_ms, measured_baseline_ms, speedup}} of one candidate per layer.

    One row per workload in scope with a fixed part and a teacher latency; `latency_ms` is the profile's
    additive model (`LatencyProfile.predicted_ms`), None (and `speedup` None) when a layer has no ok entry;
    `baseline_ms` is the teacher's under the same model, `measured_baseline_ms` the whole teacher as timed.
    """
    out = {}
    for w in (w.name for w in p.workloads):
        base = p.profile.teacher_ms(w)  # the same additive model as the plan's (see LatencyProfile.teacher_ms)
        if p.profile.fixed_ms.get(w) is None or not base:
            continue
        ms = p.profile.predicted_ms(w, layers)
        out[w] = {"latency_ms": ms, "baseline_ms": base, "measured_baseline_ms": p.profile.baseline_ms.get(w),
                  "speedup": base / ms if ms is not None and ms > 0 else None}
    return out


def cache_bytes(p: Problem, layers) -> int | None:
    """What one allowed candidate per layer keeps for the cache bound's batch at its context (bytes); None
    when the problem has no cache bound."""
    if p.cache is None:
        return None
    return sum(p.cache.batch * p.profile.cache_bytes(l, c, p.cache.workload) for l, c in enumerate(layers))


def violations(p: Problem, layers, tol: float) -> list[str]:
    """Every rule that one allowed candidate per layer breaks, one line each; empty when it meets them all.

    The rules: an ok latency for each workload in scope, each speedup target, the cache and memory bounds, the operator
    counts, and `operators.unbuildable`. `tol` is the relative slack on a budget (the MIP solver's own
    feasibility tolerance, or less for a heuristic that must stay inside what the re-check accepts).
    """
    out = []
    rows = predicted(p, layers)
    for w, row in rows.items():
        if row["latency_ms"] is None:
            l, c = next((l, c) for l, c in enumerate(layers) if p.profile.layer_ms(l, c, w) is None)
            out.append(f"layer {l}: {c} has no ok latency for {w}")
    for w, target in p.targets.items():
        row = rows[w]
        ms, limit = row["latency_ms"], row["baseline_ms"] / target
        if ms is not None and ms > limit + tol * max(1.0, limit):
            out.append(f"{w} reaches {row['speedup']:.3f}x (target {target:.3f}x)")
    cache = cache_bytes(p, layers)
    if cache is not None and cache > p.cache.limit_bytes * (1 + tol):
        out.append(f"cache {cache} bytes over the bound of {p.cache.limit_bytes:.0f}")
    if p.memory is not None and (mem := sum(p.memory.per_choice[l, c] for l, c in enumerate(layers))) > (
            p.memory.layer_limit * (1 + tol)):
        out.append(f"layers' weights + cache {mem} bytes over the memory left them, {p.memory.layer_limit:.0f}")
    for specs, sense in ((p.min_count, 1), (p.max_count, -1)):
        for spec, n in specs:
            count = sum(matches(spec, c) for c in layers)
            if (count - n) * sense < 0:
                out.append(f"{count} layers of {spec} ({'min' if sense > 0 else 'max'} {n})")
    if why := unbuildable(layers):
        out.append(why)
    return out
