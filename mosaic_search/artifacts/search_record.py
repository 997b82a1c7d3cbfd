"""The `mosaic/search-record` artifact: every plan refine evaluated, with its predicted and measured cost.

`evaluations`: one row per measurement, in order: {index, origin ("mip-1", "greedy", "teacher", "move"), pattern,
layers (candidate strings), pins ({layer: candidate} the MIP completed), fidelity ("low" | "high"), tokens,
predicted_kl (the additive sum of single-swap scores), measured_kl (true KL(teacher || plan) per token, nats),
predicted ({workload: {latency_ms, speedup}}), seconds}; `best`: the index of the chosen plan's high-fidelity row;
`settings`: the search's (seed, budget, fidelities, data); `constraints`: as the plan's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UsageError
from ..operators import Candidate
from . import files
from .schema import Header, _header, _read_json, _Reader

SEARCH_KIND = "mosaic/search-record"
FIDELITIES = ("low", "high")


@dataclass(frozen=True)
class SearchRecord:
    """refine's record of every evaluated plan (see the module docstring for the fields)."""

    header: Header
    constraints: dict
    settings: dict
    evaluations: tuple[dict, ...]
    best: int
    kind = SEARCH_KIND

    def body(self) -> dict:
        """The fields after the header, as JSON (`schema.to_json` puts the header first)."""
        return {"constraints": self.constraints, "settings": self.settings,
                "evaluations": [dict(e) for e in self.evaluations], "best": self.best}


def load_search_record(path: str | os.PathLike) -> SearchRecord:
    """Load and validate a `mosaic/search-record`."""
    obj, src = _read_json(path)
    r = _Reader(src)
    header = _header(r, obj, SEARCH_KIND)
    rows = r.get(obj, "evaluations", list)
    for i, e in enumerate(rows):
        where = f"evaluations[{i}]"
        layers = r.get(e, "layers", list, where)
        if len(layers) != header.model.num_hidden_layers:
            r.fail(f"{where}.layers", f"has {len(layers)} entries but the model has {header.model.num_hidden_layers}")
        for j, text in enumerate(layers):
            try:
                Candidate.parse(str(text))
            except UsageError as err:
                r.fail(f"{where}.layers[{j}]", str(err))
        if r.get(e, "fidelity", str, where) not in FIDELITIES:
            r.fail(f"{where}.fidelity", f'expected one of {", ".join(FIDELITIES)}')
        for key in ("predicted_kl", "measured_kl"):
            r.get(e, key, float, where)
        r.get(e, "tokens", int, where)
    best = r.get(obj, "best", int)
    if not 0 <= best < len(rows):
        r.fail("best", f"{best} is not the index of an evaluation (0..{len(rows) - 1})")
    return SearchRecord(header=header, constraints=r.get(obj, "constraints", dict),
                        settings=r.get(obj, "settings", dict), evaluations=tuple(rows), best=best)


def save_search_record(record: SearchRecord, path: str | os.PathLike):
    """Write the record atomically (`schema.to_json` then `files.write_json`); return the path."""
    from .schema import to_json

    return files.write_json(path, to_json(record))
