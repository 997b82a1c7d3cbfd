"""Stage 3's problem: a profile and a sensitivity table as typed per-layer choices under budgets, with the one
predicted latency and the one constraint check that the solver, its baselines and its re-check share."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..artifacts import schema
from ..artifacts.files import PLANS_DIR, PROFILES_DIR
from ..artifacts.schema import LatencyProfile, SensitivityTable, Workload
from ..errors import StaleInputError, UsageError, did_you_mean, invalid
from ..operators import REGISTRY, Candidate, unbuildable
from .choices import Choice, layer_choices, matches
from .memory import set_memory

METRICS = ("kl", "delta_loss")


@dataclass
class Problem:
    """The solver's view of a profile and a sensitivity table: the choices at each layer, and the budgets.

    `choices[layer]`: the allowed candidates there, in Candidate order; `targets`: {workload: speedup};
    `cache_limit`: bytes for `cache_batch` sequences at `cache_workload`'s context; `min_count` / `max_count`:
    [(op name or Candidate, layers)]; `given`: the constraints as given, which a plan records.
    """

    profile: LatencyProfile
    scores: SensitivityTable
    inputs: dict
    workloads: tuple[Workload, ...]
    choices: tuple[tuple[Choice, ...], ...]
    metric: str
    cache_limit: float | None = None
    cache_workload: str | None = None
    cache_batch: int = 1
    min_count: list = field(default_factory=list)
    max_count: list = field(default_factory=list)
    targets: dict = field(default_factory=dict)
    given: dict = field(default_factory=dict)
    memory_limit: float | None = None  # bytes for the layers' weights + cache (`memory.set_memory`), fixed part out
    memory: dict = field(default_factory=dict)  # {(layer, candidate): its weights + batch x cache bytes}

    @property
    def num_layers(self) -> int:
        """Decoder layers in the model."""
        return len(self.choices)

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

    def budget(self, w: str) -> float:
        """What the layers of workload `w` may take (ms): the whole-model budget minus the fixed part."""
        return self.profile.teacher_ms(w) / self.targets[w] - self.profile.fixed_ms[w]


# ---- KEY=VALUE and operator specs, as the CLI gives them -----------------------------------------

def parse_spec(text, param: str | None = None, given: str = "") -> str | Candidate:
    """'swa' (any window) or 'swa:window=1024' (that one); unknown ops fail with a suggestion, naming library
    parameter `param` (and the `given` text of it, e.g. a pin's '0=gqa') when there is one."""
    if isinstance(text, Candidate):
        return text
    text = str(text).strip()
    try:
        if ":" in text or "+" in text:
            return Candidate.parse(text)
        if text not in REGISTRY:
            raise UsageError(f'unknown operator "{text}"{did_you_mean(text, REGISTRY)}; known: {", ".join(REGISTRY)}')
    except UsageError as e:
        raise (invalid(param, f"{given}: {e}") if param else UsageError(str(e))) from None
    return text


def pairs(items, what: str) -> list[tuple[str, str]]:
    """A mapping, or 'KEY=VALUE' strings as the CLI gives them, as (key, value) pairs; `what` names the library
    parameter in the UsageError raised for a string without '=' or with an empty side."""
    if not items:
        return []
    if isinstance(items, dict):
        return [(str(k), v) for k, v in items.items()]
    out = []
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise invalid(what, f': cannot parse "{item}", expected KEY=VALUE')
        out.append((key.strip(), value.strip()))
    return out


def _counts(items, what: str, layers: int) -> list:
    out = []
    for key, value in pairs(items, what):
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise invalid(what, f"{key}: count must be an integer, got {value!r}") from None
        if n < 0 or (what == "min_count" and n > layers):  # a max_count above the layers is merely no bound
            raise invalid(what, f"{key}={value}: a count of layers must be within 0..{layers}")
        out.append((parse_spec(key, what, f"{key}={value}"), n))
    return out


def positive(name: str, value, integer: bool = False):
    """`value` as a positive float (or int), None for None; UsageError naming the parameter `name` otherwise."""
    if value is None:
        return None
    try:
        v = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise invalid(name, f"must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0 or (integer and v != value):
        raise invalid(name, f"must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return v


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
    return (thing, None) if thing is None or isinstance(thing, (LatencyProfile, SensitivityTable)) else (
        loader(thing), Path(thing))


def _fingerprint(artifact, path) -> str:
    return schema.sha256_file(path) if path else schema.sha256_json(schema.to_json(artifact))


def _env_has(env: dict, key: str, value) -> bool:
    """Whether a profile's env matches: a device by name fragment ('h100' in 'NVIDIA H100 80GB HBM3'), else exactly."""
    if key == "device":
        return any(str(value).lower() in str(env.get(k, "")).lower() for k in ("device_name", "device"))
    return str(env.get(key, "")) == str(value)


def load_inputs(profile=None, scores=None, *, allow_stale=False, device=None, target_env=None,
                profiles_dir=PROFILES_DIR, plans_dir=PLANS_DIR) -> tuple[LatencyProfile, SensitivityTable, dict]:
    """The profile and the sensitivity table (records, paths, or None for the newest matching ones under
    `profiles_dir` / `plans_dir`) and {"profile", "scores": sha256}; they are checked to belong together.

    Raises UsageError (exit 2) when none is found or the layer counts differ, StaleInputError (exit 4) for
    another model, or a profile whose env lacks `device` / `target_env` ("KEY=VALUE"), unless `allow_stale`.
    """
    profile, ppath = _load(profile, schema.load_profile)
    scores, spath = _load(scores, schema.load_sensitivity)
    if profile is None and scores is not None:
        ppath = next(iter(_ranked(profiles_dir, schema.PROFILE_KIND, scores.header.model)), None)
        if ppath is None:
            raise UsageError(f"no latency profile for {scores.header.model.id} under {profiles_dir}/; "
                             "run `mosaic profile` or pass `profile`")
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
                             f"{plans_dir}/; run `mosaic profile` and `mosaic score`, or pass `profile`/`scores`")
    if scores is None:
        spath = next(iter(_ranked(plans_dir, schema.SENSITIVITY_KIND, profile.header.model)), None)
        if spath is None:
            raise UsageError(f"no sensitivity table for {profile.header.model.id} under {plans_dir}/; "
                             "run `mosaic score` or pass `scores`")
        scores = schema.load_sensitivity(spath)
    pm, sm = profile.header.model, scores.header.model
    if pm.num_hidden_layers != sm.num_hidden_layers:
        raise UsageError(f"the profile has {pm.num_hidden_layers} layers ({pm.id}) but the sensitivity table has "
                         f"{sm.num_hidden_layers} ({sm.id}); they cannot describe the same model")
    schema.check_same_model(pm, sm, "sensitivity table", allow_stale)
    want = dict(pairs(target_env, "target_env"))
    if device:
        want["device"] = device
    env = profile.header.env
    for key, value in want.items():
        if not allow_stale and not _env_has(env, key, value):
            have = env.get("device_name", env.get("device")) if key == "device" else env.get(key)
            raise StaleInputError(f'the profile was measured with {key}="{have}", not "{value}"; '
                                  "profile on the target or pass `allow_stale`")
    inputs = {"profile": _fingerprint(profile, ppath), "scores": _fingerprint(scores, spath)}
    return profile, scores, inputs


# ---- the problem ---------------------------------------------------------------------------------

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


def set_targets(p: Problem, speedup=None, ttft_speedup=None, tpot_speedup=None) -> Problem:
    """Per-workload speedup targets: ttft_speedup for prefill, tpot_speedup for decode, speedup for the rest."""
    speedup = positive("speedup", speedup)
    by_phase = {"prefill": positive("ttft_speedup", ttft_speedup),
                "decode": positive("tpot_speedup", tpot_speedup)}
    for phase, name in (("prefill", "ttft_speedup"), ("decode", "tpot_speedup")):
        if by_phase[phase] is not None and not any(w.phase == phase for w in p.workloads):
            raise invalid(name, f"{by_phase[phase]}: no {phase} workload in scope")
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


def _scope(profile: LatencyProfile, workloads) -> tuple[Workload, ...]:
    by_name = {w.name: w for w in profile.workloads}
    names = [workloads] if isinstance(workloads, str) else list(workloads or by_name)
    for name in names:
        if name not in by_name:
            raise UsageError(f'unknown workload "{name}"{did_you_mean(name, by_name)}; the profile has: '
                             f'{", ".join(by_name) or "none"}')
    scope = tuple(by_name[n] for n in dict.fromkeys(names))
    if not scope:
        raise UsageError("the profile declares no workloads")
    return scope


def _pin(allowed: list, layer_text: str, spec_text: str):
    """Layer and spec of one of `pins`, checked against what that layer allows."""
    try:
        layer = int(layer_text)
    except ValueError:
        raise invalid("pins", f'"{layer_text}={spec_text}": the layer must be an integer') from None
    if not 0 <= layer < len(allowed):
        raise invalid("pins", f"{layer}={spec_text}: layer {layer} is outside 0..{len(allowed) - 1}")
    spec = parse_spec(spec_text, "pins", f"{layer}={spec_text}")
    if not any(matches(spec, c) for c in allowed[layer]):
        raise invalid("pins", f"{layer}={spec}: not an allowed candidate at layer {layer} (allowed: "
                         f"{', '.join(map(str, allowed[layer])) or 'none'})")
    return layer, spec


def prepare(profile=None, scores=None, *, speedup=None, workloads=None, ttft_speedup=None, tpot_speedup=None,
            max_cache_bytes=None, cache_batch=1, cache_context=None, max_memory=None, ops=None, pins=None,
            min_count=None, max_count=None, metric="kl", allow_stale=False, device=None, target_env=None,
            profiles_dir=PROFILES_DIR, plans_dir=PLANS_DIR) -> Problem:
    """Check every input and turn the profile and the sensitivity table into one Problem.

    `profile` / `scores`: records, paths, or None (see `load_inputs`); `workloads`: names in scope (default:
    all); speedups are targets over the teacher (`set_targets`); `max_cache_bytes` bounds the cache of
    `cache_batch` sequences at context `cache_context` (default: the longest profiled), `max_memory` the weights
    and that cache together (`memory.set_memory`); `ops`: "gqa,swa" or a
    list, the candidates allowed; `pins`, `min_count`, `max_count`: "LAYER=OP" / "OP=N" strings or mappings.
    Raises UsageError (exit 2) for any bad value, StaleInputError (exit 4) as `load_inputs` does.
    """
    if metric not in METRICS:
        raise UsageError(f'unknown metric "{metric}"{did_you_mean(metric, METRICS)}; known: {", ".join(METRICS)}')
    profile, scores, inputs = load_inputs(profile, scores, allow_stale=allow_stale, device=device,
                                          target_env=target_env, profiles_dir=profiles_dir, plans_dir=plans_dir)
    scope = _scope(profile, workloads)
    names = {w.name for w in scope}
    lat, failed = {}, set()
    for e in profile.entries:
        if e.workload in names:
            if e.status == "ok" and e.latency_ms is not None:
                lat.setdefault((e.layer, e.candidate), {})[e.workload] = e.latency_ms
            else:
                failed.add((e.layer, e.candidate))
    loss = {(e.layer, e.candidate): float(getattr(e, metric)) for e in scores.entries}
    cache, cache_limit, ref = {}, positive("max_cache_bytes", max_cache_bytes), None
    batch = positive("cache_batch", cache_batch, integer=True)
    if cache_limit is None and max_memory is None and (cache_context is not None or batch != 1):
        raise UsageError("`cache_context` and `cache_batch` describe the `max_cache_bytes` bound; give it too (or "
                         "`max_memory`)")
    if cache_limit is not None:
        ref = _cache_workload(profile, cache_context)
        cache = {(e.layer, e.candidate): batch * e.cache_bytes for e in profile.entries if e.workload == ref.name}
    items = (ops.split(",") if isinstance(ops, str) else ops) if ops is not None else []
    keep = [parse_spec(t, "ops") for t in items if str(t).strip()]
    if ops is not None and not keep:
        raise invalid("ops", ": empty operator list")
    held = {c for _, c in lat} & {c for _, c in loss}
    for spec in keep:
        if not any(matches(spec, c) for c in held):
            raise invalid("ops", f"{spec}: not in both the profile and the sensitivity table (they hold: "
                             f"{', '.join(c.label for c in sorted(held))})")
    ok = [key for key in sorted(lat) if len(lat[key]) == len(scope) and key not in failed and key in loss
          and (cache_limit is None or key in cache)]
    choices = layer_choices(profile, ok, lat, loss, cache, keep)
    given_pins = {}
    for layer_text, spec_text in pairs(pins, "pins"):
        layer, spec = _pin([[ch.candidate for ch in cs] for cs in choices], layer_text, spec_text)
        choices[layer], given_pins[str(layer)] = [ch for ch in choices[layer] if matches(spec, ch.candidate)], str(spec)
    for layer, cs in enumerate(choices):
        if not cs:
            raise UsageError(f"layer {layer} has no allowed candidate: none is profiled ok on every workload in "
                             "scope, scored, and in `ops`")
    mins, maxs = _counts(min_count, "min_count", len(choices)), _counts(max_count, "max_count", len(choices))
    given = {"workloads": [w.name for w in scope], "metric": metric, "max_cache_bytes": cache_limit,
             "cache_batch": cache_batch if ref else None, "cache_workload": ref.name if ref else None,
             "ops": [str(s) for s in keep] or None, "pins": given_pins or None,
             "min_count": {str(s): n for s, n in mins} or None, "max_count": {str(s): n for s, n in maxs} or None}
    p = Problem(profile=profile, scores=scores, inputs=inputs, workloads=scope,
                choices=tuple(map(tuple, choices)), metric=metric, cache_limit=cache_limit,
                cache_workload=ref.name if ref else None, cache_batch=batch, min_count=mins, max_count=maxs,
                given=given)
    if (memory := positive("max_memory", max_memory)) is not None:
        set_memory(p, memory, batch, _cache_workload(profile, cache_context))
    return set_targets(p, speedup, ttft_speedup, tpot_speedup)


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
    if p.cache_limit is None:
        return None
    return sum(p.cache_batch * p.profile.cache_bytes(l, c, p.cache_workload) for l, c in enumerate(layers))


def violations(p: Problem, layers, tol: float) -> list[str]:
    """Every rule that one allowed candidate per layer breaks, one line each; empty when it meets them all.

    The rules: an ok latency for each workload in scope, each speedup target, the cache bound, the operator
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
    if cache is not None and cache > p.cache_limit * (1 + tol):
        out.append(f"cache {cache} bytes over the bound of {p.cache_limit:.0f}")
    if p.memory_limit is not None and (mem := sum(p.memory[l, c] for l, c in enumerate(layers))) > p.memory_limit * (
            1 + tol):
        out.append(f"layers' weights + cache {mem} bytes over the memory left them, {p.memory_limit:.0f}")
    for specs, sense in ((p.min_count, 1), (p.max_count, -1)):
        for spec, n in specs:
            count = sum(matches(spec, c) for c in layers)
            if (count - n) * sense < 0:
                out.append(f"{count} layers of {spec} ({'min' if sense > 0 else 'max'} {n})")
    if why := unbuildable(layers):
        out.append(why)
    return out
