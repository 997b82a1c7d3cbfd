"""`mosaic/candidate-library`: the JSON sidecar of the scorer's aligned weights (`quality/library.py` owns the
safetensors beside it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from ..operators import Candidate
from .header import Header, Reader, load

_FIELDS = {"layer", "op", "params", "align_steps", "fingerprint"}  # an entry's other keys are its `extra`


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
    """The JSON sidecar of a candidate library: the model its weights fit, the sha256 of the sensitivity table file
    written with it ("" when not recorded) and one entry per aligned item."""

    header: Header
    scores_sha256: str
    entries: tuple[LibraryEntry, ...]
    kind: ClassVar[str] = "mosaic/candidate-library"
    version: ClassVar[int] = 1
    migrations: ClassVar[dict] = {}

    def body(self) -> dict:
        """The sidecar's own JSON fields."""
        return {"scores_sha256": self.scores_sha256,
                "entries": [{"layer": e.layer, **e.candidate.to_json(), "align_steps": e.align_steps,
                             "fingerprint": e.fingerprint, **e.extra} for e in self.entries]}

    @classmethod
    def read(cls, r: Reader, obj: dict, header: Header) -> "CandidateLibrary":
        """The validating inverse of `body`."""
        entries = []
        for i, e in enumerate(r.get(obj, "entries", list)):
            where = f"entries[{i}]"
            entries.append(LibraryEntry(
                layer=r.layer(e, where, header.model.num_hidden_layers), candidate=r.candidate(e, where),
                align_steps=r.get(e, "align_steps", int, where), fingerprint=r.get(e, "fingerprint", str, where),
                extra={k: v for k, v in e.items() if k not in _FIELDS}))
        return cls(header=header, scores_sha256=r.get(obj, "scores_sha256", str, optional=True, default=""),
                   entries=tuple(entries))


def load_library_sidecar(path: str | os.PathLike) -> CandidateLibrary:
    """Load and validate a `mosaic/candidate-library` sidecar (the JSON file beside the library's safetensors)."""
    return load(CandidateLibrary, path)
