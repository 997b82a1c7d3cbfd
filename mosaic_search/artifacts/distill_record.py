"""`mosaic/distill-record` (stage 5): how a model was distilled (settings, data), its loss per step, and its quality
before and after; written as `distill_record.json` in the distilled model's folder.

Version 2 carries the header every artifact has (`model`: the teacher's, as in the folder's plan) and nests the
run's settings under `settings`; version 1 had them at the top level and no `model` (`_from_v1`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .header import Header, Reader, load, read_json
from .plan import PLAN_FILE

RECORD_FILE = "distill_record.json"
_HEADER = {"kind", "schema_version", "created_by", "created_at", "model", "env", "inputs", "command"}
_OWN = {"trainable_parameters", "losses", "eval", "quality"}


def _from_v1(r: Reader, obj: dict) -> dict:
    """A version-1 record as version 2: its settings nested, `model` taken from the plan in the same folder."""
    plan, _ = read_json(Path(r.source).parent / PLAN_FILE, f"{r.source}: version 1 needs the plan beside it: ")
    return {**{k: v for k, v in obj.items() if k in _HEADER | _OWN}, "schema_version": 2, "model": plan.get("model"),
            "settings": {k: v for k, v in obj.items() if k not in _HEADER | _OWN}}


@dataclass(frozen=True)
class DistillRecord:
    """What `distill` did to a model: `settings` (the run's, as `--resume` fingerprints them, with the data),
    `trainable_parameters`, `losses` [{step, stage, loss}] and `quality` {before, after} (`evaluate.measure`'s
    result each, or None when not measured) on `eval` (the evaluation set, or None)."""

    header: Header
    settings: dict
    trainable_parameters: int
    losses: tuple[dict, ...]
    quality: dict
    eval: dict | None = None
    kind: ClassVar[str] = "mosaic/distill-record"
    version: ClassVar[int] = 2
    migrations: ClassVar[dict] = {1: _from_v1}

    def body(self) -> dict:
        """The record's own JSON fields."""
        return {"settings": dict(self.settings), "trainable_parameters": self.trainable_parameters,
                "losses": [dict(row) for row in self.losses], "eval": self.eval, "quality": dict(self.quality)}

    @classmethod
    def read(cls, r: Reader, obj: dict, header: Header) -> "DistillRecord":
        """The validating inverse of `body`: numbered losses, a quality before and after (each a result or null)."""
        losses = []
        for i, row in enumerate(r.get(obj, "losses", list)):
            where = f"losses[{i}]"
            if r.get(row, "step", int, where) < 1:
                r.fail(f"{where}.step", f"must be positive, got {row['step']}")
            r.get(row, "stage", str, where)
            r.get(row, "loss", float, where)
            losses.append(row)
        quality = r.get(obj, "quality", dict)
        for when in ("before", "after"):
            r.get(quality, when, (dict, type(None)), "quality")
        trainable = r.get(obj, "trainable_parameters", int, optional=True, default=0)
        if trainable < 0:
            r.fail("trainable_parameters", f"must be at least 0, got {trainable}")
        return cls(header=header, settings=r.get(obj, "settings", dict), trainable_parameters=trainable,
                   losses=tuple(losses), quality=quality, eval=r.get(obj, "eval", (dict, type(None)), optional=True))


def load_distill_record(model: str | os.PathLike) -> DistillRecord:
    """The distill record of a distilled model folder (`RECORD_FILE` in it), validated; a version-1 record too."""
    return load(DistillRecord, Path(model) / RECORD_FILE, f"{model}: not a model written by mosaic distill: ")
