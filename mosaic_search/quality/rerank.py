"""Refine's optional last step: its best few plans ranked again after a short distillation (`rerank_steps`).

A plan's KL as built need not rank plans as they will be after recovery: a plan whose layers distill well can overtake
one that was closer as built (NVIDIA Puzzletron's post-MIP pipeline re-ranks its pool again after a short
distillation for this reason). The finalists are refine's `rerank_finalists` best plans by measured KL and, when it is
not among them, the MIP's own plan (the plan `mosaic solve` hands over): the plan handed over is then never worse
after the short distillation than the MIP's, on the calibration windows. Each finalist is built as `mosaic build`
builds it (with the candidate library), distilled for `steps` steps by `mosaic distill` with its own loss and
defaults, and measured on refine's calibration windows (`evaluation.measure`: KL(teacher || model) per token,
teacher-forced) as built and after; the plan handed over is the finalist with the least KL after distillation. The
models are built and distilled in a temporary folder beside the refined plan and removed afterwards.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..errors import UsageError

logger = logging.getLogger(__name__)

DEFAULT_FINALISTS = 3  # the best plans by measured KL that are distilled and ranked again


def check_windows(windows) -> None:
    """UsageError (exit 2) when the calibration windows carry images: the distilled finalists are measured on token
    windows alone, which would leave their image rows out."""
    if getattr(windows, "images", None) is not None and any(x is not None for x in windows.images):
        raise UsageError("`rerank_steps`: the calibration windows hold image rows, which re-ranking after distillation "
                         "does not measure; re-rank without them (`data`: a text file) or leave it off")


def finalists(rows, k: int, mip: dict) -> tuple[list[dict], dict]:
    """(finalists, note): the `k` rows of least measured KL (ties: first measured) of `rows` (refine's full-fidelity
    search rows), then `mip`, the row of the MIP's own plan (the plan `mosaic solve` hands over), when it is not among
    them; `note`: {"index", "origin", "added", "reason"} for that row. The MIP's plan is the one a re-ranked plan must
    beat: left out, re-ranking could hand over a plan that distills worse than it."""
    best = sorted(rows, key=lambda r: (r["measured_kl"], r["index"]))
    out = best[:k]
    added = all(r is not mip for r in out)
    rank = f"the MIP's own plan (rank {best.index(mip) + 1} by measured KL)"
    reason = (f"{rank} is not among the {k} best: re-ranked too, so that the plan handed over distills no worse "
              "than it" if added else f"{rank} is among the {k} best")
    return out + [mip] * added, {"index": mip["index"], "origin": mip["origin"], "added": added, "reason": reason}


def rerank(p, finalists: list[dict], *, teacher: str, reference, library, windows, steps: int, seed: int,
           folder: Path, progress=None) -> list[dict]:
    """Build, distill `steps` steps and measure each of `finalists` (refine's search rows, with `layers_c`); return
    one record per finalist: {"index", "origin", "pattern", "measured_kl" (refine's, as built), "built_kl",
    "distilled_kl" (`evaluation.measure` on `windows` before and after distillation)}, in the order given.
    `reference`: the teacher `teacher` loaded (refine's fitness model with every layer restored), not loaded again."""
    from .. import builder
    from ..artifacts.header import save
    from ..hf.models import load_model
    from ..recovery.distill import distill
    from ..search import repair
    from .evaluation import EvalSet, measure

    progress = progress or (lambda *a: None)
    evals = EvalSet(windows=windows.ids, probes=(), split=windows.ids.shape[1], source="calibration")
    out = []
    with tempfile.TemporaryDirectory(prefix=".rerank-", dir=folder) as tmp:
        for k, row in enumerate(finalists):
            progress(k, len(finalists), f"re-ranking: distilling {row['pattern']}")
            here = Path(tmp) / str(k)
            here.mkdir()
            plan = save(repair.plan_record(p, row["layers_c"], {"name": "rerank"}), here / "plan.json")
            built = builder.build(plan, teacher=teacher, library=library if library else False, out=here / "built",
                                  seed=seed)
            before = measure(load_model(str(built)), reference, evals)["kl"]
            distilled = distill(str(built), teacher=teacher, steps=steps, seed=seed, quality=False,
                                out=here / "distilled")
            after = measure(load_model(str(distilled)), reference, evals)["kl"]
            out.append({"index": row["index"], "origin": row["origin"], "pattern": row["pattern"],
                        "measured_kl": row["measured_kl"], "built_kl": before, "distilled_kl": after})
            logger.info("note: re-ranking %s: KL %.4f as built, %.4f after %d distillation steps", row["pattern"],
                        before, after, steps)
    return out
