"""Every artifact kind mosaic writes, in one table: kind -> its record class (with its current version and reader)."""

from __future__ import annotations

import os

from .distill_record import DistillRecord
from .header import Reader, load, read_json
from .library import CandidateLibrary
from .pareto import Pareto
from .plan import LayerPlan
from .profile import LatencyProfile
from .search_record import SearchRecord
from .sensitivity import SensitivityTable

KINDS = {record.kind: record for record in (LatencyProfile, SensitivityTable, CandidateLibrary, LayerPlan, Pareto,
                                             SearchRecord, DistillRecord)}


def load_any(path: str | os.PathLike):
    """Load and validate an artifact of whichever kind the file says; UsageError (exit 2) for an unknown kind."""
    obj, src = read_json(path)
    kind = Reader(src).get(obj, "kind", str)
    if kind not in KINDS:
        Reader(src).fail("kind", f'"{kind}" is not an artifact kind this mosaic reads ({", ".join(KINDS)})')
    return load(KINDS[kind], path)
