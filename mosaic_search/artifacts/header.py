"""What every artifact shares: its header (model, provenance), the one reader of JSON fields, the version rules.

An artifact kind is a frozen record class with `kind`, `version` (the schema version it writes), `migrations`
({old version: function turning such a JSON object into the next version's}), `body()` (its JSON fields beside
the header's) and `read(reader, obj, header)` (the validating inverse). `to_json`, `save` and `load` here do the
rest for every kind alike; `kinds.KINDS` lists them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StaleInputError, UsageError
from ..operators import Candidate, pattern_string
from . import files


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


class Reader:
    """Pulls typed fields out of a JSON object, naming the file and field in every complaint (UsageError, exit 2)."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, what: str):
        """Refuse the file: '<file>: <field>: <what>'."""
        raise UsageError(f"{self.source}: {where}: {what}")

    def get(self, obj: dict, key: str, types, where: str = "", optional: bool = False, default=None):
        """`obj[key]` checked to be of `types` (an int is accepted as a float; a bool is never a number)."""
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

    def number(self, obj: dict, key: str, where: str = "") -> float | None:
        """A number or null, as a float or None."""
        value = self.get(obj, key, (int, float, type(None)), where)
        if isinstance(value, bool):
            self.fail(f"{where}.{key}" if where else key, f"expected a number, got {value!r}")
        return None if value is None else float(value)

    def candidate(self, obj: dict, where: str) -> Candidate:
        """The structured candidate {op, params} of an entry, with its layer's MLP candidate {op, params} under `mlp`
        when it has one."""
        op = self.get(obj, "op", str, where)
        params = self.get(obj, "params", dict, where, optional=True, default={})
        mlp = self.get(obj, "mlp", dict, where, optional=True)
        try:
            return Candidate.of(op, params, None if mlp is None else self.candidate(mlp, f"{where}.mlp"))
        except UsageError as e:
            self.fail(where, str(e))

    def per_layer(self, where: str, count: int, header: "Header") -> None:
        """A per-layer list must have one entry per layer of the model the same file's header names."""
        if count != header.model.num_hidden_layers:
            self.fail(where, f"has {count} entries but model.num_hidden_layers in the same file says "
                             f"{header.model.num_hidden_layers} ({header.model.id}); one of the two was edited")

    def pattern(self, where: str, pattern, layers) -> None:
        """A `pattern` restates its layers' operators, one symbol each: it must say what they say."""
        if pattern is not None and pattern != pattern_string(layers):
            self.fail(where, f'"{pattern}" contradicts the layers in the same file, which spell '
                             f'"{pattern_string(layers)}"; one of the two was edited (the layers are what is built: '
                             "fix or remove the pattern)")

    def layer(self, obj: dict, where: str, num_layers: int) -> int:
        """An entry's `layer`, checked to be one of the model's."""
        layer = self.get(obj, "layer", int, where)
        if not 0 <= layer < num_layers:
            self.fail(f"{where}.layer", f"{layer} is outside 0..{num_layers - 1}")
        return layer


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

    def to_json(self) -> dict:
        """The header's fields of an artifact's JSON object."""
        return {"created_by": self.created_by, "created_at": self.created_at, "model": dataclasses.asdict(self.model),
                "env": self.env, "inputs": self.inputs, "command": list(self.command)}

    @classmethod
    def read(cls, r: Reader, obj: dict) -> "Header":
        """The header of an artifact's JSON object; only `model` is required."""
        m = r.get(obj, "model", dict)
        model = ModelRef(id=r.get(m, "id", str, "model"), config_sha256=r.get(m, "config_sha256", str, "model"),
                         num_hidden_layers=r.get(m, "num_hidden_layers", int, "model"))
        if model.num_hidden_layers <= 0:
            r.fail("model.num_hidden_layers", f"must be positive, got {model.num_hidden_layers}")
        return cls(model=model, env=r.get(obj, "env", dict, optional=True, default={}),
                   inputs=r.get(obj, "inputs", dict, optional=True, default={}),
                   command=tuple(r.get(obj, "command", list, optional=True, default=[])),
                   created_by=r.get(obj, "created_by", str, optional=True, default=""),
                   created_at=r.get(obj, "created_at", str, optional=True, default=""))


def renumbered(version: int):
    """A migration to `version` for a format whose older files read as they are: the newer one only added what they
    cannot hold (e.g. a candidate's MLP), and the version tells an older mosaic it cannot read the new files."""
    def migrate(r: Reader, obj: dict) -> dict:
        return {**obj, "schema_version": version}

    return migrate


def to_json(artifact) -> dict:
    """The artifact as the JSON object docs/design.md §3 describes: kind, version, header, then its own fields."""
    if not (dataclasses.is_dataclass(artifact) and hasattr(artifact, "body") and hasattr(artifact, "kind")):
        raise TypeError(f"not an artifact: {type(artifact).__name__}")
    return {"kind": artifact.kind, "schema_version": artifact.version, **artifact.header.to_json(), **artifact.body()}


def save(artifact, path: str | os.PathLike) -> Path:
    """Write an artifact atomically with the user's umask (`files.write_json`); return the path."""
    return files.write_json(path, to_json(artifact))


def read_json(path: str | os.PathLike, what: str = "") -> tuple[dict, str]:
    """The JSON object in a file and the file's name; UsageError (exit 2) for a missing, truncated or non-object
    file (`what` prefixes the message of a missing or unreadable one)."""
    path = Path(path)
    text = files.read_text(path, what)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                         "the file may be truncated") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: expected a JSON object at the top level")
    return obj, str(path)


def current(r: Reader, obj: dict, record) -> dict:
    """`obj` as the current version of `record`'s format: its kind checked, an older version migrated step by step
    (`record.migrations`); UsageError naming both kind and version for another kind or a version it cannot read."""
    got_kind = r.get(obj, "kind", str)
    if got_kind != record.kind:
        r.fail("kind", f'expected "{record.kind}", got "{got_kind}"')
    version = r.get(obj, "schema_version", int)
    if version > record.version:
        r.fail("schema_version", f"{record.kind} version {version} is newer than this mosaic reads "
                                 f"({record.version}); upgrade mosaic")
    for old in range(version, record.version):
        if old not in record.migrations:
            r.fail("schema_version", f"{record.kind} version {version} is not one this mosaic reads "
                                     f"(it reads {min(record.migrations, default=record.version)}..{record.version})")
        obj = record.migrations[old](r, obj)
    return obj


def load(record, path: str | os.PathLike, what: str = ""):
    """Load and validate an artifact file of `record`'s kind (a record class), older versions migrated."""
    obj, src = read_json(path, what)
    r = Reader(src)
    obj = current(r, obj, record)
    return record.read(r, obj, Header.read(r, obj))


def check_same_model(a: ModelRef, b: ModelRef, what: str, allow_stale: bool = False) -> None:
    """Refuse (exit 4) to combine artifacts made for different models, unless `allow_stale`."""
    if allow_stale:
        return
    if a.num_hidden_layers != b.num_hidden_layers or a.config_sha256 != b.config_sha256:
        raise StaleInputError(
            f"{what}: made for {b.id} ({b.num_hidden_layers} layers, config {b.config_sha256[:12]}) but this is "
            f"{a.id} ({a.num_hidden_layers} layers, config {a.config_sha256[:12]}); pass `allow_stale` to use it anyway")
