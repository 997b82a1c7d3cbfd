"""Artifacts as pandas DataFrames, one row per entry with units in the column names, and as CSV or parquet files.

`to_frame` is the one place that flattens an artifact into rows: notebooks call it, `--table` writes it, and
`solve --sweep` writes its Pareto CSV through it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import invalid
from ..operators import REGISTRY
from . import files
from .pareto import Pareto
from .plan import LayerPlan
from .profile import LatencyProfile
from .search_record import SearchRecord
from .sensitivity import SensitivityTable

SUFFIXES = (".csv", ".parquet")
# One nullable integer column per param any operator takes, so a frame's columns do not depend on which
# candidates it happens to hold.
PARAMS = tuple(dict.fromkeys(p for spec in REGISTRY.values() for p in spec.params))


def to_frame(artifact):
    """The rows of an artifact as a pandas DataFrame with typed columns whose names carry units.

    One row per entry of a LatencyProfile (layer x candidate x workload: `latency_ms`, `p20_ms`, `p80_ms`,
    `cache_bytes`, ...), SensitivityTable (layer x candidate: `kl_nats`, `delta_loss_nats`), LayerPlan (layer:
    its candidate, `<metric>_nats` and `saved_ms_<workload>`), SearchRecord (evaluated plan at one fidelity:
    `pattern`, `origin`, `fidelity`, `tokens`, `predicted_kl_nats`, `measured_kl_nats`, `speedup_<workload>`,
    `chosen`) or Pareto (target speedup: `<metric>_nats`, `speedup_<workload>`, `latency_ms_<workload>`). Every
    frame has `candidate` (as in the artifact, e.g. swa:window=1024), `op`, `mlp` (the layer's MLP candidate, e.g.
    mlp:width=256; empty: the teacher's) and one integer column per operator param (`window`, `rank`, `width`; empty
    where the candidate has none), except the sweep's, whose rows are whole plans. A path is read as its file's kind
    says (`kinds.load_any`); anything else is a UsageError naming `artifact`.
    """
    if isinstance(artifact, (str, os.PathLike)):
        from .kinds import load_any

        artifact = load_any(artifact)
    if isinstance(artifact, LatencyProfile):
        return _profile(artifact)
    if isinstance(artifact, SensitivityTable):
        return _sensitivity(artifact)
    if isinstance(artifact, LayerPlan):
        return _plan(artifact)
    if isinstance(artifact, Pareto):
        return _pareto(artifact)
    if isinstance(artifact, SearchRecord):
        return _search(artifact)
    raise invalid("artifact", f"must be a profile, sensitivity table, plan, sweep or search record (or its file's "
                              f"path), got {type(artifact).__name__}")


def check_table(path: str | os.PathLike, param: str = "path") -> Path:
    """Refuse, before any work, a table path `write_table` cannot write; return it as a Path.

    Raises UsageError (exit 2) for a suffix other than .csv or .parquet, for .parquet without pyarrow
    installed, and for a location `files.check_output` refuses.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise invalid(param, f"{path}: expected a file name ending in {' or '.join(SUFFIXES)}")
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise invalid(param, f"{path}: writing .parquet needs pyarrow (pip install pyarrow)")
    return files.check_output(path, param)


def write_table(artifact, path: str | os.PathLike) -> Path:
    """Write `to_frame(artifact)` atomically as CSV or parquet, chosen by the suffix of `path`; return the path.

    Raises UsageError as `check_table` does, OSError from the file system.
    """
    path = check_table(path)
    frame = to_frame(artifact)
    if path.suffix.lower() == ".csv":
        return files.write_text(path, frame.to_csv(index=False))
    with files.atomic_path(path) as tmp:
        frame.to_parquet(tmp, engine="pyarrow", index=False)
    return path


def _frame(columns: dict):
    """A DataFrame from {name: (dtype, values)}: typed even when it has no rows."""
    import pandas as pd

    return pd.DataFrame({name: pd.Series(values, dtype=dtype) for name, (dtype, values) in columns.items()})


def _candidates(cands) -> dict:
    mlps = [c.mlp_candidate for c in cands]
    columns = {"candidate": ("string", [str(c) for c in cands]), "op": ("string", [c.op for c in cands]),
               "mlp": ("string", [None if m is None else str(m) for m in mlps])}
    params = [{**c.kwargs, **(m.kwargs if m is not None else {})} for c, m in zip(cands, mlps)]
    for param in PARAMS:
        columns[param] = ("Int64", [p.get(param) for p in params])
    return columns


def _profile(prof: LatencyProfile):
    es, wl = prof.entries, {w.name: w for w in prof.workloads}
    return _frame({
        "layer": ("int64", [e.layer for e in es]), **_candidates([e.candidate for e in es]),
        "workload": ("string", [e.workload for e in es]), "phase": ("string", [wl[e.workload].phase for e in es]),
        "batch_size": ("int64", [wl[e.workload].batch_size for e in es]),
        "seq_len": ("int64", [wl[e.workload].seq_len for e in es]),
        "status": ("string", [e.status for e in es]), "latency_ms": ("float64", [e.latency_ms for e in es]),
        "p20_ms": ("float64", [e.p20_ms for e in es]), "p80_ms": ("float64", [e.p80_ms for e in es]),
        "cache_bytes": ("int64", [e.cache_bytes for e in es]), "reason": ("string", [e.reason for e in es])})


def _sensitivity(table: SensitivityTable):
    es = table.entries
    return _frame({
        "layer": ("int64", [e.layer for e in es]), **_candidates([e.candidate for e in es]),
        "kl_nats": ("float64", [e.kl for e in es]), "delta_loss_nats": ("float64", [e.delta_loss for e in es]),
        "align_steps": ("int64", [e.align_steps for e in es])})


def _plan(plan: LayerPlan):
    # per_layer (solver.verify) holds the score and the latency saved of each layer; a plan written by hand may lack it
    rows = {row["layer"]: row for row in plan.solver.get("per_layer", [])}
    per = [rows.get(layer, {}) for layer in range(len(plan.layers))]
    metric = plan.constraints.get("metric", "kl")
    return _frame({
        "layer": ("int64", list(range(len(plan.layers)))), **_candidates(plan.layers),
        "symbol": ("string", [c.spec.symbol for c in plan.layers]),
        "layer_type": ("string", [c.spec.layer_type for c in plan.layers]),
        f"{metric}_nats": ("float64", [row.get("loss") for row in per]),
        **{f"saved_ms_{w}": ("float64", [row.get("saved_ms", {}).get(w) for row in per]) for w in plan.predicted}})


def _pareto(front: Pareto):
    points, workloads = front.points, front.constraints["workloads"]
    metric = front.constraints.get("metric", "kl")

    def predicted(key, w):
        return [pt.get("predicted", {}).get(w, {}).get(key) for pt in points]

    return _frame({
        "target_speedup": ("float64", [pt["target_speedup"] for pt in points]),
        "feasible": ("bool", [pt["feasible"] for pt in points]),
        "pattern": ("string", [pt.get("pattern") for pt in points]),
        f"{metric}_nats": ("float64", [pt.get("objective") for pt in points]),
        **{f"speedup_{w}": ("float64", predicted("speedup", w)) for w in workloads},
        **{f"latency_ms_{w}": ("float64", predicted("latency_ms", w)) for w in workloads}})


def _search(record: SearchRecord):
    rows = record.evaluations
    workloads = list(dict.fromkeys(w for e in rows for w in e.get("predicted", {})))
    return _frame({
        "index": ("int64", [e["index"] for e in rows]), "origin": ("string", [e.get("origin") for e in rows]),
        "pattern": ("string", [e.get("pattern") for e in rows]), "fidelity": ("string", [e["fidelity"] for e in rows]),
        "tokens": ("int64", [e["tokens"] for e in rows]),
        "swapped_layers": ("Int64", [e.get("swapped_layers") for e in rows]),
        "predicted_kl_nats": ("float64", [e["predicted_kl"] for e in rows]),
        "measured_kl_nats": ("float64", [e["measured_kl"] for e in rows]),
        **{f"speedup_{w}": ("float64", [e.get("predicted", {}).get(w, {}).get("speedup") for e in rows])
           for w in workloads},
        "seconds": ("float64", [e.get("seconds") for e in rows]),
        "chosen": ("bool", [e["index"] == record.best for e in rows])})
