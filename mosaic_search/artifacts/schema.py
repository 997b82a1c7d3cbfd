"""The versioned JSON artifacts that chain the stages: frozen records, atomic save, validating load.

Longer than the house's ~450 lines: each artifact's record sits beside its validating loader, and every loader
shares one reader (`_Reader`) and one set of version rules; split apart, a format and its checks would drift.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import StaleInputError, UsageError
from ..operators import Candidate, compose
from . import files

# 2: a layer's candidate may carry an MLP ("mlp": {op, params}) and take fewer KV heads (params.kv_heads); version 1
# artifacts, which have neither, load as they are
SCHEMA_VERSION = 2
PROFILE_KIND = "mosaic/latency-profile"
SENSITIVITY_KIND = "mosaic/sensitivity"
LIBRARY_KIND = "mosaic/candidate-library"  # the JSON sidecar of the scorer's aligned weights (library.py)
PLAN_KIND = "mosaic/layer-plan"
PLAN_FILE = "mosaic_plan.json"  # the plan a built model directory carries beside its config
PARETO_KIND = "mosaic/pareto"
PHASES = ("prefill", "decode")
STATUSES = ("ok", "oom", "unsupported")


def package_version() -> str:
    """The installed mosaic version (falls back to the source tree's)."""
    from .. import __version__

    return __version__


def utc_now() -> str:
    """Current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a JSON value in canonical form (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class ModelRef:
    """Which model an artifact describes: its id, a fingerprint of its config, and its depth."""

    id: str
    config_sha256: str
    num_hidden_layers: int


@dataclass(frozen=True)
class Header:
    """Provenance every artifact carries."""

    model: ModelRef
    env: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    command: tuple = ()
    created_by: str = ""
    created_at: str = ""

    @classmethod
    def new(cls, model: ModelRef, env: dict | None = None, inputs: dict | None = None) -> "Header":
        """A header stamped with this package's version, the time and the command line."""
        return cls(model=model, env=dict(env or {}), inputs=dict(inputs or {}), command=tuple(sys.argv),
                   created_by=package_version(), created_at=utc_now())


@dataclass(frozen=True)
class Workload:
    """One operating point: prefill (TTFT) of `seq_len` tokens, or one decode step (TPOT) at context `seq_len`."""

    name: str
    phase: str
    batch_size: int
    seq_len: int


KIB = 1024
_WORKLOAD_SPEC = re.compile(r"^(prefill|decode):(\d+)(k?)(?::b(\d+))?$")


def parse_workload(text: str) -> Workload:
    """Parse 'prefill:32k', 'decode:96k' or 'decode:16k:b8' (phase:tokens[k][:b<batch>], k = 1024 tokens); a spec
    that does not parse, or zero tokens or batch, raises UsageError (exit 2)."""
    m = _WORKLOAD_SPEC.match(text.strip().lower())
    if not m:
        raise UsageError(f'cannot parse workload "{text}": expected phase:tokens[:bN], e.g. prefill:32k or '
                         "decode:16k:b8")
    phase, n, k, b = m.groups()
    seq = int(n) * (KIB if k else 1)
    batch = int(b or 1)
    if seq <= 0 or batch <= 0:
        raise UsageError(f'workload "{text}": tokens and batch must be positive')
    return Workload(name=workload_name(phase, batch, seq), phase=phase, batch_size=batch, seq_len=seq)


def workload_from_name(name: str) -> Workload:
    """Invert `workload_name`: 'decode-b1-c96k' -> Workload(decode, batch 1, 98304); UsageError if not such a name."""
    m = re.match(r"^(prefill|decode)-b(\d+)-[pc](\d+)(k?)$", name)
    if not m:
        raise UsageError(f'"{name}" is not a workload name like decode-b1-c96k or prefill-b8-p4k')
    phase, b, n, k = m.groups()
    return parse_workload(f"{phase}:{n}{k}:b{b}")


def workload_name(phase: str, batch: int, seq: int) -> str:
    """Canonical workload name, e.g. decode-b1-c96k / prefill-b8-p4k (p: prompt tokens, c: context tokens)."""
    size = f"{seq // KIB}k" if seq % KIB == 0 else str(seq)
    return f"{phase}-b{batch}-{'p' if phase == 'prefill' else 'c'}{size}"


@dataclass(frozen=True)
class ProfileEntry:
    """Latency of one whole decoder layer with one candidate mixer, for one workload."""

    layer: int
    candidate: Candidate
    workload: str
    latency_ms: float | None
    p20_ms: float | None
    p80_ms: float | None
    status: str
    cache_bytes: int
    reason: str = ""


@dataclass(frozen=True)
class LatencyProfile:
    """Stage 1 output: per-layer, per-candidate latency on one device for each workload."""

    header: Header
    workloads: tuple[Workload, ...]
    baseline_ms: dict
    fixed_ms: dict
    entries: tuple[ProfileEntry, ...]
    # additivity measured in the same passes (`profile(validate=True)`): [{assignment, pattern, workload,
    # predicted_ms, measured_ms, error_pct}], predicted = fixed + sum of layers, measured = whole model
    validation: tuple[dict, ...] = ()
    # the teacher's own operator per layer (`surgery.teacher_ops`); empty in profiles of older versions, whose
    # teachers were all gqa
    teacher: tuple[Candidate, ...] = ()
    # the bytes of one decoder layer's weights with each candidate (every layer alike), and of the rest of the model
    # (embeddings, head, norms, a vision tower): what serving holds in memory besides the cache; empty / None in
    # profiles of older versions
    weight_bytes: tuple[tuple[Candidate, int], ...] = ()
    fixed_weight_bytes: int | None = None
    kind = PROFILE_KIND

    def teacher_layers(self) -> tuple[Candidate, ...]:
        """The teacher's own operator in each layer (gqa everywhere for a profile that does not record it)."""
        return self.teacher or (Candidate.teacher(),) * self.header.model.num_hidden_layers

    @cached_property
    def _by_key(self) -> dict:
        return {(e.layer, e.candidate, e.workload): e for e in self.entries}

    def entry(self, layer: int, candidate: Candidate, workload: str) -> ProfileEntry | None:
        """The entry of one layer with one candidate for one workload, or None when the profile has none."""
        return self._by_key.get((layer, candidate, workload))

    def layer_ms(self, layer: int, candidate: Candidate, workload: str) -> float | None:
        """The latency (ms) of one layer with one candidate for one workload (a mixer with an MLP: composed from
        both axes' entries, `operators.compose`); None unless its entries are ok."""
        def own(c):
            e = self._by_key.get((layer, c, workload))
            return e.latency_ms if e is not None and e.status == "ok" else None

        return compose(own, candidate, self.teacher_layers()[layer])

    def cache_bytes(self, layer: int, candidate: Candidate, workload: str) -> int | None:
        """The cache (bytes per sequence) of one layer with one candidate at `workload`'s context (composed as
        `layer_ms`; an MLP changes no cache); None without its entries."""
        def own(c):
            e = self._by_key.get((layer, c, workload))
            return None if e is None else e.cache_bytes

        return compose(own, candidate, self.teacher_layers()[layer])

    def predicted_ms(self, workload: str, layers) -> float | None:
        """The additive latency model (docs/design.md §3), in ms, of one candidate per layer: the fixed part plus
        each layer's latency. None when the fixed part or a layer's ok entry is missing."""
        fixed = self.fixed_ms.get(workload)
        own = [self.layer_ms(layer, c, workload) for layer, c in enumerate(layers)]
        if fixed is None or any(v is None for v in own):
            return None
        return fixed + sum(own)

    def layer_weight_bytes(self, layer: int, candidate: Candidate) -> int | None:
        """The bytes of one layer's weights with one candidate (composed as `layer_ms`); None when not recorded."""
        table = dict(self.weight_bytes)
        return compose(table.get, candidate, self.teacher_layers()[layer])

    def teacher_ms(self, workload: str) -> float | None:
        """The teacher's latency under the same additive model as a plan's: fixed part + its own layers' operators.

        Speedups are predicted as this over the plan's fixed + sum of layers, so a bias the additive model
        has (a few percent on the profiles in BENCHMARKS.md) cancels in the ratio. Falls back to the measured
        whole-model `baseline_ms` when the teacher's operators were not all profiled.
        """
        ms = self.predicted_ms(workload, self.teacher_layers())
        return self.baseline_ms.get(workload) if ms is None else ms


@dataclass(frozen=True)
class SensitivityEntry:
    """Quality cost of replacing one layer's mixer with one candidate."""

    layer: int
    candidate: Candidate
    kl: float
    delta_loss: float
    align_steps: int
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SensitivityTable:
    """Stage 2 output: every (layer, candidate) swap scored against the teacher."""

    header: Header
    metric: str
    data: dict
    entries: tuple[SensitivityEntry, ...]
    kind = SENSITIVITY_KIND


@dataclass(frozen=True)
class LibraryEntry:
    """One aligned item of a candidate library: where, which candidate, its item fingerprint, alignment's report."""

    layer: int
    candidate: Candidate
    align_steps: int
    fingerprint: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CandidateLibrary:
    """The JSON sidecar of a candidate library (library.py): the model its weights fit, the sha256 of the
    sensitivity table file written with it ("" when not recorded) and one entry per aligned item."""

    header: Header
    scores_sha256: str
    entries: tuple[LibraryEntry, ...]
    kind = LIBRARY_KIND


@dataclass(frozen=True)
class LayerPlan:
    """Stage 3 output: one candidate per decoder layer, with what it is predicted to cost and save."""

    header: Header
    layers: tuple[Candidate, ...]
    predicted: dict
    objective: float
    constraints: dict
    solver: dict
    kind = PLAN_KIND

    @property
    def pattern(self) -> str:
        """The compact one-symbol-per-layer string, e.g. 'GGSDGK'."""
        from ..operators import pattern_string

        return pattern_string(self.layers)


@dataclass(frozen=True)
class Pareto:
    """`solver.sweep`'s result: the least predicted loss at each speedup target (the Pareto frontier).

    `points`: one per target, ascending: {target_speedup, feasible} and, when feasible, {objective, pattern,
    layers (candidate strings), predicted (as a plan's), seconds, mip_gap}; `constraints`: as a plan's, less
    the speedups the sweep sets; `files`: what the sweep wrote (JSON, CSV, PNG).
    """

    header: Header
    constraints: dict
    speedups: tuple[float, ...]
    points: tuple[dict, ...]
    files: tuple[str, ...] = ()
    kind = PARETO_KIND


# ---- serialisation -------------------------------------------------------------------------------

def _header_json(h: Header) -> dict:
    return {"created_by": h.created_by, "created_at": h.created_at, "model": dataclasses.asdict(h.model),
            "env": h.env, "inputs": h.inputs, "command": list(h.command)}


def to_json(artifact) -> dict:
    """The artifact as the JSON object docs/design.md §3 describes."""
    out = {"kind": artifact.kind, "schema_version": SCHEMA_VERSION, **_header_json(artifact.header)}
    if isinstance(artifact, LatencyProfile):
        out["workloads"] = [dataclasses.asdict(w) for w in artifact.workloads]
        out["baseline_ms"] = dict(artifact.baseline_ms)
        out["fixed_ms"] = dict(artifact.fixed_ms)
        out["entries"] = [{"layer": e.layer, **e.candidate.to_json(), "workload": e.workload,
                           "latency_ms": e.latency_ms, "p20_ms": e.p20_ms, "p80_ms": e.p80_ms,
                           "status": e.status, "cache_bytes": e.cache_bytes,
                           **({"reason": e.reason} if e.reason else {})} for e in artifact.entries]
        out["validation"] = [dict(v) for v in artifact.validation]
        if artifact.teacher:
            out["teacher"] = [c.to_json() for c in artifact.teacher]
        if artifact.weight_bytes:
            out["weight_bytes"] = [{**c.to_json(), "weight_bytes": n} for c, n in artifact.weight_bytes]
            out["fixed_weight_bytes"] = artifact.fixed_weight_bytes
    elif isinstance(artifact, SensitivityTable):
        out["metric"] = artifact.metric
        out["data"] = dict(artifact.data)
        out["entries"] = [{"layer": e.layer, **e.candidate.to_json(), "kl": e.kl, "delta_loss": e.delta_loss,
                           "align_steps": e.align_steps, **e.extra} for e in artifact.entries]
    elif isinstance(artifact, CandidateLibrary):
        out["scores_sha256"] = artifact.scores_sha256
        out["entries"] = [{"layer": e.layer, **e.candidate.to_json(), "align_steps": e.align_steps,
                           "fingerprint": e.fingerprint, **e.extra} for e in artifact.entries]
    elif isinstance(artifact, LayerPlan):
        out["layers"] = [c.to_json() for c in artifact.layers]
        out["predicted"] = artifact.predicted
        out["objective"] = artifact.objective
        out["constraints"] = artifact.constraints
        out["solver"] = artifact.solver
        out["pattern"] = artifact.pattern
    elif isinstance(artifact, Pareto):
        out["constraints"] = artifact.constraints
        out["speedups"] = list(artifact.speedups)
        out["points"] = [dict(pt) for pt in artifact.points]
        out["files"] = list(artifact.files)
    elif hasattr(artifact, "body"):  # a record kept in its own module (search_record.py)
        out.update(artifact.body())
    else:
        raise TypeError(f"not an artifact: {type(artifact).__name__}")
    return out


def save(artifact, path: str | os.PathLike) -> Path:
    """Write an artifact atomically with the user's umask (`files.write_json`); return the path."""
    return files.write_json(path, to_json(artifact))


# ---- validating load -----------------------------------------------------------------------------

class _Reader:
    """Pulls typed fields out of a JSON object, naming the file and field in every complaint."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, what: str):
        raise UsageError(f"{self.source}: {where}: {what}")

    def get(self, obj: dict, key: str, types, where: str = "", optional: bool = False, default=None):
        name = f"{where}.{key}" if where else key
        if not isinstance(obj, dict):
            self.fail(where or "top level", "expected a JSON object")
        if key not in obj:
            if optional:
                return default
            self.fail(name, "missing field")
        value = obj[key]
        if types is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool) and types in (int, float):
            self.fail(name, f"expected a number, got {value!r}")
        if not isinstance(value, types):
            want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
            self.fail(name, f"expected {want}, got {type(value).__name__}")
        return value

    def candidate(self, obj: dict, where: str) -> Candidate:
        op = self.get(obj, "op", str, where)
        params = self.get(obj, "params", dict, where, optional=True, default={})
        mlp = self.get(obj, "mlp", dict, where, optional=True)
        try:
            return Candidate.of(op, params, None if mlp is None else self.candidate(mlp, f"{where}.mlp"))
        except UsageError as e:
            self.fail(where, str(e))


def _read_json(path: str | os.PathLike) -> tuple[dict, str]:
    path = Path(path)
    text = files.read_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                         "the file may be truncated") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: expected a JSON object at the top level")
    return obj, str(path)


def _header(r: _Reader, obj: dict, kind: str) -> Header:
    got_kind = r.get(obj, "kind", str)
    if got_kind != kind:
        r.fail("kind", f'expected "{kind}", got "{got_kind}"')
    version = r.get(obj, "schema_version", int)
    if version > SCHEMA_VERSION:
        r.fail("schema_version", f"{kind} version {version} is newer than this mosaic reads ({SCHEMA_VERSION}); "
                                 "upgrade mosaic")
    m = r.get(obj, "model", dict)
    model = ModelRef(id=r.get(m, "id", str, "model"), config_sha256=r.get(m, "config_sha256", str, "model"),
                     num_hidden_layers=r.get(m, "num_hidden_layers", int, "model"))
    if model.num_hidden_layers <= 0:
        r.fail("model.num_hidden_layers", f"must be positive, got {model.num_hidden_layers}")
    return Header(model=model, env=r.get(obj, "env", dict, optional=True, default={}),
                  inputs=r.get(obj, "inputs", dict, optional=True, default={}),
                  command=tuple(r.get(obj, "command", list, optional=True, default=[])),
                  created_by=r.get(obj, "created_by", str, optional=True, default=""),
                  created_at=r.get(obj, "created_at", str, optional=True, default=""))


def _layer_index(r: _Reader, e: dict, where: str, num_layers: int) -> int:
    layer = r.get(e, "layer", int, where)
    if not 0 <= layer < num_layers:
        r.fail(f"{where}.layer", f"{layer} is outside 0..{num_layers - 1}")
    return layer


def _opt_float(r: _Reader, e: dict, key: str, where: str):
    value = r.get(e, key, (int, float, type(None)), where)
    return None if value is None else float(value)


def load_profile(path: str | os.PathLike) -> LatencyProfile:
    """Load and validate a `mosaic/latency-profile`."""
    obj, src = _read_json(path)
    r = _Reader(src)
    header = _header(r, obj, PROFILE_KIND)
    workloads = []
    for i, w in enumerate(r.get(obj, "workloads", list)):
        where = f"workloads[{i}]"
        phase = r.get(w, "phase", str, where)
        if phase not in PHASES:
            r.fail(f"{where}.phase", f'"{phase}" is not one of {", ".join(PHASES)}')
        wl = Workload(name=r.get(w, "name", str, where), phase=phase,
                      batch_size=r.get(w, "batch_size", int, where), seq_len=r.get(w, "seq_len", int, where))
        if wl.batch_size <= 0 or wl.seq_len <= 0:
            r.fail(where, "batch_size and seq_len must be positive")
        workloads.append(wl)
    names = {w.name for w in workloads}
    baseline = r.get(obj, "baseline_ms", dict)
    fixed = r.get(obj, "fixed_ms", dict)
    for table, label in ((baseline, "baseline_ms"), (fixed, "fixed_ms")):
        for name in names:
            _opt_float(r, table, name, label)
    entries = []
    for i, e in enumerate(r.get(obj, "entries", list)):
        where = f"entries[{i}]"
        workload = r.get(e, "workload", str, where)
        if workload not in names:
            r.fail(f"{where}.workload", f'"{workload}" is not a declared workload')
        status = r.get(e, "status", str, where)
        if status not in STATUSES:
            r.fail(f"{where}.status", f'"{status}" is not one of {", ".join(STATUSES)}')
        latency = _opt_float(r, e, "latency_ms", where)
        if status == "ok" and (latency is None or latency < 0):
            r.fail(f"{where}.latency_ms", "an ok entry needs a non-negative latency")
        entries.append(ProfileEntry(
            layer=_layer_index(r, e, where, header.model.num_hidden_layers), candidate=r.candidate(e, where),
            workload=workload, latency_ms=latency, p20_ms=_opt_float(r, e, "p20_ms", where),
            p80_ms=_opt_float(r, e, "p80_ms", where), status=status,
            cache_bytes=r.get(e, "cache_bytes", int, where), reason=r.get(e, "reason", str, where, True, "")))
    validation = []
    for i, v in enumerate(r.get(obj, "validation", list, optional=True, default=[])):
        where = f"validation[{i}]"
        row = {k: r.get(v, k, str, where) for k in ("assignment", "pattern", "workload")}
        if row["workload"] not in names:
            r.fail(f"{where}.workload", f'"{row["workload"]}" is not a declared workload')
        validation.append({**row, **{k: r.get(v, k, float, where)
                                     for k in ("predicted_ms", "measured_ms", "error_pct")}})
    teacher = [r.candidate(c, f"teacher[{i}]") for i, c in enumerate(r.get(obj, "teacher", list, optional=True,
                                                                              default=[]))]
    if teacher and len(teacher) != header.model.num_hidden_layers:
        r.fail("teacher", f"lists {len(teacher)} layers, the model has {header.model.num_hidden_layers}")
    weights = tuple((r.candidate(w, f"weight_bytes[{i}]"), r.get(w, "weight_bytes", int, f"weight_bytes[{i}]"))
                    for i, w in enumerate(r.get(obj, "weight_bytes", list, optional=True, default=[])))
    return LatencyProfile(header=header, workloads=tuple(workloads),
                          baseline_ms={k: None if v is None else float(v) for k, v in baseline.items()},
                          fixed_ms={k: None if v is None else float(v) for k, v in fixed.items()},
                          entries=tuple(entries), validation=tuple(validation), teacher=tuple(teacher),
                          weight_bytes=weights, fixed_weight_bytes=r.get(obj, "fixed_weight_bytes", int,
                                                                         optional=True))


def load_sensitivity(path: str | os.PathLike) -> SensitivityTable:
    """Load and validate a `mosaic/sensitivity` table."""
    obj, src = _read_json(path)
    r = _Reader(src)
    header = _header(r, obj, SENSITIVITY_KIND)
    known = {"layer", "op", "params", "kl", "delta_loss", "align_steps"}
    entries = []
    for i, e in enumerate(r.get(obj, "entries", list)):
        where = f"entries[{i}]"
        kl = r.get(e, "kl", float, where)
        if kl != kl or kl < -1e-6:
            r.fail(f"{where}.kl", f"must be a non-negative number, got {kl}")
        entries.append(SensitivityEntry(
            layer=_layer_index(r, e, where, header.model.num_hidden_layers), candidate=r.candidate(e, where),
            kl=kl, delta_loss=r.get(e, "delta_loss", float, where),
            align_steps=r.get(e, "align_steps", int, where),
            extra={k: v for k, v in e.items() if k not in known}))
    return SensitivityTable(header=header, metric=r.get(obj, "metric", str),
                            data=r.get(obj, "data", dict, optional=True, default={}), entries=tuple(entries))


def load_library_sidecar(path: str | os.PathLike) -> CandidateLibrary:
    """Load and validate a `mosaic/candidate-library` sidecar (the JSON file beside the library's safetensors)."""
    obj, src = _read_json(path)
    r = _Reader(src)
    header = _header(r, obj, LIBRARY_KIND)
    known = {"layer", "op", "params", "align_steps", "fingerprint"}
    entries = []
    for i, e in enumerate(r.get(obj, "entries", list)):
        where = f"entries[{i}]"
        entries.append(LibraryEntry(
            layer=_layer_index(r, e, where, header.model.num_hidden_layers), candidate=r.candidate(e, where),
            align_steps=r.get(e, "align_steps", int, where), fingerprint=r.get(e, "fingerprint", str, where),
            extra={k: v for k, v in e.items() if k not in known}))
    return CandidateLibrary(header=header, scores_sha256=r.get(obj, "scores_sha256", str, optional=True, default=""),
                            entries=tuple(entries))


def load_plan(path: str | os.PathLike, num_layers: int | None = None) -> LayerPlan:
    """Load and validate a `mosaic/layer-plan`; with `num_layers`, also check it fits that model."""
    obj, src = _read_json(path)
    r = _Reader(src)
    header = _header(r, obj, PLAN_KIND)
    raw = r.get(obj, "layers", list)
    layers = tuple(r.candidate(c, f"layers[{i}]") for i, c in enumerate(raw))
    if len(layers) != header.model.num_hidden_layers:
        r.fail("layers", f"has {len(layers)} entries but the model has {header.model.num_hidden_layers} layers")
    if num_layers is not None and len(layers) != num_layers:
        r.fail("layers", f"has {len(layers)} entries but the target model has {num_layers} layers")
    return LayerPlan(header=header, layers=layers, predicted=r.get(obj, "predicted", dict, optional=True, default={}),
                     objective=r.get(obj, "objective", float, optional=True, default=0.0),
                     constraints=r.get(obj, "constraints", dict, optional=True, default={}),
                     solver=r.get(obj, "solver", dict, optional=True, default={}))


def load_pareto(path: str | os.PathLike) -> Pareto:
    """Load and validate a `mosaic/pareto` frontier (also one written before this record, without `command`)."""
    obj, src = _read_json(path)
    r = _Reader(src)
    header = _header(r, obj, PARETO_KIND)
    speedups = []
    for i, v in enumerate(r.get(obj, "speedups", list)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            r.fail(f"speedups[{i}]", f"expected a number, got {v!r}")
        speedups.append(float(v))
    points = r.get(obj, "points", list)
    for i, pt in enumerate(points):
        where = f"points[{i}]"
        r.get(pt, "target_speedup", float, where)
        if not r.get(pt, "feasible", bool, where):
            continue
        r.get(pt, "objective", float, where)
        layers = r.get(pt, "layers", list, where)
        if len(layers) != header.model.num_hidden_layers:
            r.fail(f"{where}.layers", f"has {len(layers)} entries but the model has {header.model.num_hidden_layers}")
        for j, text in enumerate(layers):
            try:
                Candidate.parse(str(text))
            except UsageError as e:
                r.fail(f"{where}.layers[{j}]", str(e))
    return Pareto(header=header, constraints=r.get(obj, "constraints", dict), speedups=tuple(speedups),
                  points=tuple(points), files=tuple(r.get(obj, "files", list, optional=True, default=[])))


def check_same_model(a: ModelRef, b: ModelRef, what: str, allow_stale: bool = False) -> None:
    """Refuse (exit 4) to combine artifacts made for different models, unless `allow_stale`."""
    if allow_stale:
        return
    if a.num_hidden_layers != b.num_hidden_layers or a.config_sha256 != b.config_sha256:
        raise StaleInputError(
            f"{what}: made for {b.id} ({b.num_hidden_layers} layers, config {b.config_sha256[:12]}) but this is "
            f"{a.id} ({a.num_hidden_layers} layers, config {a.config_sha256[:12]}); pass `allow_stale` to use it anyway")
