"""`mosaic/layer-plan` (stage 3): one candidate per decoder layer, what it is predicted to cost and save."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from ..operators import Candidate, pattern_string
from .header import Header, Reader, load, renumbered

PLAN_FILE = "mosaic_plan.json"  # the plan a built model directory carries beside its config


@dataclass(frozen=True)
class LayerPlan:
    """Stage 3 output: one candidate per decoder layer, with what it is predicted to cost and save."""

    header: Header
    layers: tuple[Candidate, ...]
    predicted: dict
    objective: float
    constraints: dict
    solver: dict
    kind: ClassVar[str] = "mosaic/layer-plan"
    # 2: a layer may carry an MLP (`mlp`), which a version-1 reader would drop; version-1 files read as they are
    version: ClassVar[int] = 2
    migrations: ClassVar[dict] = {1: renumbered(2)}

    @property
    def pattern(self) -> str:
        """The compact one-symbol-per-layer string, e.g. 'GGSDGK'."""
        return pattern_string(self.layers)

    def body(self) -> dict:
        """The plan's own JSON fields (`pattern` written for readers; it is derived from `layers`)."""
        return {"layers": [c.to_json() for c in self.layers], "predicted": self.predicted,
                "objective": self.objective, "constraints": self.constraints, "solver": self.solver,
                "pattern": self.pattern}

    @classmethod
    def read(cls, r: Reader, obj: dict, header: Header) -> "LayerPlan":
        """The validating inverse of `body`: one candidate per layer of the model."""
        layers = tuple(r.candidate(c, f"layers[{i}]") for i, c in enumerate(r.get(obj, "layers", list)))
        r.per_layer("layers", len(layers), header)
        r.pattern("pattern", obj.get("pattern"), layers)
        return cls(header=header, layers=layers, predicted=r.get(obj, "predicted", dict, optional=True, default={}),
                   objective=r.get(obj, "objective", float, optional=True, default=0.0),
                   constraints=r.get(obj, "constraints", dict, optional=True, default={}),
                   solver=r.get(obj, "solver", dict, optional=True, default={}))


def load_plan(path: str | os.PathLike, num_layers: int | None = None) -> LayerPlan:
    """Load and validate a `mosaic/layer-plan`; with `num_layers`, also check it fits that model (UsageError)."""
    plan = load(LayerPlan, path)
    if num_layers is not None and len(plan.layers) != num_layers:
        Reader(str(path)).fail("layers", f"has {len(plan.layers)} entries but the target model has {num_layers} "
                                         "layers")
    return plan
