"""`mosaic/sensitivity` (stage 2): the quality cost of every (layer, candidate) swap, scored against the teacher."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from ..operators import Candidate
from .header import Header, Reader, load

_FIELDS = {"layer", "op", "params", "mlp", "kl", "delta_loss", "align_steps"}  # the other keys: `extra`


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
    kind: ClassVar[str] = "mosaic/sensitivity"
    version: ClassVar[int] = 1
    migrations: ClassVar[dict] = {}

    def body(self) -> dict:
        """The table's own JSON fields."""
        return {"metric": self.metric, "data": dict(self.data),
                "entries": [{"layer": e.layer, **e.candidate.to_json(), "kl": e.kl, "delta_loss": e.delta_loss,
                             "align_steps": e.align_steps, **e.extra} for e in self.entries]}

    @classmethod
    def read(cls, r: Reader, obj: dict, header: Header) -> "SensitivityTable":
        """The validating inverse of `body`: every kl a non-negative number."""
        entries = []
        for i, e in enumerate(r.get(obj, "entries", list)):
            where = f"entries[{i}]"
            kl = r.get(e, "kl", float, where)
            if kl != kl or kl < -1e-6:
                r.fail(f"{where}.kl", f"must be a non-negative number, got {kl}")
            entries.append(SensitivityEntry(
                layer=r.layer(e, where, header.model.num_hidden_layers), candidate=r.candidate(e, where), kl=kl,
                delta_loss=r.get(e, "delta_loss", float, where), align_steps=r.get(e, "align_steps", int, where),
                extra={k: v for k, v in e.items() if k not in _FIELDS}))
        return cls(header=header, metric=r.get(obj, "metric", str),
                   data=r.get(obj, "data", dict, optional=True, default={}), entries=tuple(entries))


def load_sensitivity(path: str | os.PathLike) -> SensitivityTable:
    """Load and validate a `mosaic/sensitivity` table."""
    return load(SensitivityTable, path)
