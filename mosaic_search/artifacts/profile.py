"""`mosaic/latency-profile` (stage 1): workloads, per-layer per-candidate latency, and the additive latency model.

Version 3 may hold MLP candidates (`mlp:width=W`, `nomlp`) and mixers with fewer KV heads (`gqa:kv_heads=K`), and
records the bytes of the layers' weights (`weight_bytes`, `fixed_weight_bytes`); version 2 files, which have none of
these, read as they are. Version 2 always records the teacher's own operator per layer (`teacher`); version 1 did
not, and its teachers were all gqa (`_from_v1`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from ..errors import UsageError
from ..operators import Candidate, compose
from .header import Header, Reader, load, renumbered

PHASES = ("prefill", "decode")
STATUSES = ("ok", "oom", "unsupported")
KIB = 1024
_WORKLOAD_SPEC = re.compile(r"^(prefill|decode):(\d+)(k?)(?::b(\d+))?$")


@dataclass(frozen=True)
class Workload:
    """One operating point: prefill (TTFT) of `seq_len` tokens, or one decode step (TPOT) at context `seq_len`."""

    name: str
    phase: str
    batch_size: int
    seq_len: int


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

    def to_json(self) -> dict:
        """The entry as the profile's JSON lists it."""
        return {"layer": self.layer, **self.candidate.to_json(), "workload": self.workload,
                "latency_ms": self.latency_ms, "p20_ms": self.p20_ms, "p80_ms": self.p80_ms, "status": self.status,
                "cache_bytes": self.cache_bytes, **({"reason": self.reason} if self.reason else {})}

    @classmethod
    def read(cls, r: Reader, e: dict, where: str, num_layers: int, workloads: set) -> "ProfileEntry":
        """One entry of `entries`, its workload among `workloads`, an ok entry with a latency."""
        workload = r.get(e, "workload", str, where)
        if workload not in workloads:
            r.fail(f"{where}.workload", f'"{workload}" is not a declared workload')
        status = r.get(e, "status", str, where)
        if status not in STATUSES:
            r.fail(f"{where}.status", f'"{status}" is not one of {", ".join(STATUSES)}')
        latency = r.number(e, "latency_ms", where)
        if status == "ok" and (latency is None or latency < 0):
            r.fail(f"{where}.latency_ms", "an ok entry needs a non-negative latency")
        return cls(layer=r.layer(e, where, num_layers), candidate=r.candidate(e, where), workload=workload,
                   latency_ms=latency, p20_ms=r.number(e, "p20_ms", where), p80_ms=r.number(e, "p80_ms", where),
                   status=status, cache_bytes=r.get(e, "cache_bytes", int, where),
                   reason=r.get(e, "reason", str, where, True, ""))


def _from_v1(r: Reader, obj: dict) -> dict:
    """A version-1 profile as version 2: it did not record the teacher's operators, and its teachers were all gqa."""
    layers = r.get(r.get(obj, "model", dict), "num_hidden_layers", int, "model")
    return {**obj, "schema_version": 2, "teacher": [Candidate.teacher().to_json()] * max(layers, 0)}


@dataclass(frozen=True)
class LatencyProfile:
    """Stage 1 output: per-layer, per-candidate latency on one device for each workload.

    `teacher`: the teacher's own operator per layer (`surgery.teacher_ops`); `validation`: additivity measured
    in the same passes (`profile(validate=True)`): [{assignment, pattern, workload, predicted_ms, measured_ms,
    error_pct}], predicted = fixed + sum of layers, measured = whole model. `weight_bytes`: ((candidate, bytes of
    one decoder layer's weights with it), ...), every layer alike, and `fixed_weight_bytes` those of the rest of the
    model (embeddings, head, norms, a vision tower): what serving holds besides the cache; empty / None when not
    recorded.
    """

    header: Header
    workloads: tuple[Workload, ...]
    baseline_ms: dict
    fixed_ms: dict
    entries: tuple[ProfileEntry, ...]
    teacher: tuple[Candidate, ...]
    validation: tuple[dict, ...] = ()
    weight_bytes: tuple[tuple[Candidate, int], ...] = ()
    fixed_weight_bytes: int | None = None
    kind: ClassVar[str] = "mosaic/latency-profile"
    version: ClassVar[int] = 3
    migrations: ClassVar[dict] = {1: _from_v1, 2: renumbered(3)}

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

        return compose(own, candidate, self.teacher[layer])

    def cache_bytes(self, layer: int, candidate: Candidate, workload: str) -> int | None:
        """The cache (bytes per sequence) of one layer with one candidate at `workload`'s context (composed as
        `layer_ms`; an MLP changes no cache); None without its entries."""
        def own(c):
            e = self._by_key.get((layer, c, workload))
            return None if e is None else e.cache_bytes

        return compose(own, candidate, self.teacher[layer])

    def layer_weight_bytes(self, layer: int, candidate: Candidate) -> int | None:
        """The bytes of one layer's weights with one candidate (composed as `layer_ms`); None when not recorded."""
        return compose(dict(self.weight_bytes).get, candidate, self.teacher[layer])

    def predicted_ms(self, workload: str, layers) -> float | None:
        """The additive latency model (docs/design.md §3), in ms, of one candidate per layer: the fixed part plus
        each layer's latency. None when the fixed part or a layer's ok entry is missing."""
        fixed = self.fixed_ms.get(workload)
        own = [self.layer_ms(layer, c, workload) for layer, c in enumerate(layers)]
        if fixed is None or any(v is None for v in own):
            return None
        return fixed + sum(own)

    def teacher_ms(self, workload: str) -> float | None:
        """The teacher's latency under the same additive model as a plan's: fixed part + its own layers' operators.

        Speedups are predicted as this over the plan's fixed + sum of layers, so a bias the additive model
        has (a few percent on the profiles in BENCHMARKS.md) cancels in the ratio. Falls back to the measured
        whole-model `baseline_ms` when the teacher's operators were not all profiled.
        """
        ms = self.predicted_ms(workload, self.teacher)
        return self.baseline_ms.get(workload) if ms is None else ms

    def body(self) -> dict:
        """The profile's own JSON fields."""
        return {"workloads": [dataclasses.asdict(w) for w in self.workloads], "baseline_ms": dict(self.baseline_ms),
                "fixed_ms": dict(self.fixed_ms), "entries": [e.to_json() for e in self.entries],
                "validation": [dict(v) for v in self.validation], "teacher": [c.to_json() for c in self.teacher],
                **({"weight_bytes": [{**c.to_json(), "weight_bytes": n} for c, n in self.weight_bytes],
                    "fixed_weight_bytes": self.fixed_weight_bytes} if self.weight_bytes else {})}

    @classmethod
    def read(cls, r: Reader, obj: dict, header: Header) -> "LatencyProfile":
        """The validating inverse of `body` (a current-version object)."""
        layers = header.model.num_hidden_layers
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
        ms = {}
        for label in ("baseline_ms", "fixed_ms"):
            table = r.get(obj, label, dict)
            for name in names:
                r.number(table, name, label)
            ms[label] = {k: r.number(table, k, label) for k in table}
        entries = [ProfileEntry.read(r, e, f"entries[{i}]", layers, names)
                   for i, e in enumerate(r.get(obj, "entries", list))]
        validation = []
        for i, v in enumerate(r.get(obj, "validation", list, optional=True, default=[])):
            where = f"validation[{i}]"
            row = {k: r.get(v, k, str, where) for k in ("assignment", "pattern", "workload")}
            if row["workload"] not in names:
                r.fail(f"{where}.workload", f'"{row["workload"]}" is not a declared workload')
            validation.append({**row, **{k: r.get(v, k, float, where)
                                         for k in ("predicted_ms", "measured_ms", "error_pct")}})
        teacher = [r.candidate(c, f"teacher[{i}]") for i, c in enumerate(r.get(obj, "teacher", list))]
        r.per_layer("teacher", len(teacher), header)
        weights = tuple((r.candidate(w, f"weight_bytes[{i}]"), r.get(w, "weight_bytes", int, f"weight_bytes[{i}]"))
                        for i, w in enumerate(r.get(obj, "weight_bytes", list, optional=True, default=[])))
        fixed_weights = r.get(obj, "fixed_weight_bytes", int, optional=True)
        if weights and fixed_weights is None:
            r.fail("fixed_weight_bytes", "missing field (the profile records weight_bytes)")
        return cls(header=header, workloads=tuple(workloads), baseline_ms=ms["baseline_ms"], fixed_ms=ms["fixed_ms"],
                   entries=tuple(entries), teacher=tuple(teacher), validation=tuple(validation), weight_bytes=weights,
                   fixed_weight_bytes=fixed_weights)


def load_profile(path: str | os.PathLike) -> LatencyProfile:
    """Load and validate a `mosaic/latency-profile` (a version-1 or -2 file too)."""
    return load(LatencyProfile, path)
