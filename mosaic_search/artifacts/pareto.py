"""`mosaic/pareto`: `solver.sweep`'s frontier, the least predicted loss at each speedup target."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from ..errors import UsageError
from ..operators import Candidate
from .header import Header, Reader, load


@dataclass(frozen=True)
class Pareto:
    """The least predicted loss at each speedup target (the Pareto frontier).

    `points`: one per target, ascending: {target_speedup, feasible} and, when feasible, {objective, pattern,
    layers (candidate strings), predicted (as a plan's), seconds, mip_gap}; `constraints`: as a plan's, less
    the speedups the sweep sets; `files`: what the sweep wrote (JSON, CSV, PNG).
    """

    header: Header
    constraints: dict
    speedups: tuple[float, ...]
    points: tuple[dict, ...]
    files: tuple[str, ...] = ()
    kind: ClassVar[str] = "mosaic/pareto"
    version: ClassVar[int] = 1
    migrations: ClassVar[dict] = {}

    def body(self) -> dict:
        """The frontier's own JSON fields."""
        return {"constraints": self.constraints, "speedups": list(self.speedups),
                "points": [dict(pt) for pt in self.points], "files": list(self.files)}

    @classmethod
    def read(cls, r: Reader, obj: dict, header: Header) -> "Pareto":
        """The validating inverse of `body`: numbers for speedups, a whole plan at every feasible point."""
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
            r.per_layer(f"{where}.layers", len(layers), header)
            parsed = []
            for j, text in enumerate(layers):
                try:
                    parsed.append(Candidate.parse(str(text)))
                except UsageError as e:
                    r.fail(f"{where}.layers[{j}]", str(e))
            r.pattern(f"{where}.pattern", pt.get("pattern"), parsed)
        return cls(header=header, constraints=r.get(obj, "constraints", dict), speedups=tuple(speedups),
                   points=tuple(points), files=tuple(r.get(obj, "files", list, optional=True, default=[])))


def load_pareto(path: str | os.PathLike) -> Pareto:
    """Load and validate a `mosaic/pareto` frontier (also one written before this record, without `command`)."""
    return load(Pareto, path)
