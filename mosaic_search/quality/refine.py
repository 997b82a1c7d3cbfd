"""`mosaic refine`: plans chosen by their measured quality, a true-KL search around the MIP that keeps every budget.

The MIP minimises the sum of single-swap scores, which is not what a plan costs: interactions between swapped layers
dominate a plan's real loss. Refine starts from the MIP's diverse pool, greedy's plan and the teacher (where they meet
the budgets), and searches the space of pins (search/repair.py): a move re-pins 1-3 layers and the MIP completes the
rest under the same latency, cache and count rows, so every plan evaluated meets every budget as the solver's
re-check verifies. Fitness is the true KL(teacher || plan) on calibration windows (fitness.py). Multi-fidelity
(after EvoPress's multi-step selection): each generation's offspring are screened on the first `low_windows`
windows, the best `survivors` measured on all `high_windows`; the answer is the plan with the least high-fidelity KL,
so it is never worse on the calibration windows than any seed. Deterministic for a seed under an evaluation budget;
every measurement is one durable line of a progress file, and `resume` replays them, so an interrupted run finishes
with the same answer. Optionally (`rerank_steps`) the best few plans and the MIP's own plan are distilled briefly and
ranked again by their KL after it (rerank.py).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from ..artifacts.files import PLANS_DIR, append_line, check_not_input, check_output
from ..artifacts.header import Header, check_same_model, save, sha256_json
from ..artifacts.plan import LayerPlan, load_plan
from ..artifacts.search_record import SearchRecord, save_search_record
from ..errors import Interrupted, StaleInputError, UsageError, check, flags, integer, invalid, number, path_arg
from ..operators import pattern_string, seen_as_full
from ..search import repair
from ..search.problem import check_keywords, predicted, prepare, read_paths
from . import rerank as rerank_mod

logger = logging.getLogger(__name__)

DEFAULT_EVALUATIONS = 60  # measurements, screening and full together: 48 s for tiny on 2 idle cores (BENCHMARKS)
DEFAULT_SOLUTIONS = 4  # the MIP's pool of seeds
DEFAULT_MIN_DISTANCE = 2
DEFAULT_LOW_WINDOWS = 2
DEFAULT_HIGH_WINDOWS = 8
DEFAULT_OFFSPRING = 6  # plans screened per generation
DEFAULT_SURVIVORS = 2  # of them, measured on every window
DEFAULT_ELITE = 3  # parents: the best plans measured so far
MAX_CHANGED = 3
PROGRESS_VERSION = 1


class _Spent(Exception):
    """The evaluation or time budget is used up."""


def refine_paths(model_id: str, out=None, plans_dir=PLANS_DIR) -> tuple[Path, Path, Path]:
    """(plan, search record, progress file): `out` or layer_plans/<model>/plan-refined.json, and its siblings
    `<stem>.search.json` and `<stem>.progress.jsonl`."""
    from ..search.solver import plan_path

    path = plan_path(model_id, out, plans_dir=plans_dir, name="plan-refined.json")
    return path, path.with_name(path.stem + ".search.json"), path.with_name(path.stem + ".progress.jsonl")


def _from_plan(plan, inputs: dict) -> dict:
    """The targets and constraints a solve plan was solved under, as `problem.prepare` keywords; a keyword given with
    a value other than `prepare`'s default wins (the command line passes every default, which must not undo the
    plan's own bounds). UsageError for a serving plan (`solve --throughput-speedup`), whose per-batch targets refine
    does not search."""
    import inspect

    from ..artifacts.profile import workload_from_name

    c = load_plan(plan).constraints if not isinstance(plan, LayerPlan) else plan.constraints
    if c.get("serving"):
        raise invalid("plan", "was solved for a throughput target (`solve --throughput-speedup`), which refine does "
                              "not search; refine under its batch's bounds instead (`max_memory`, `cache_batch`, "
                              "`cache_context` and a `tpot_speedup`)")
    got = {"workloads": c.get("workloads"), "speedup": c.get("speedup"), "ttft_speedup": c.get("ttft_speedup"),
           "tpot_speedup": c.get("tpot_speedup"), "max_cache_bytes": c.get("max_cache_bytes"),
           "cache_batch": c.get("cache_batch") or 1, "ops": c.get("ops"), "pins": c.get("pins"),
           "min_count": c.get("min_count"), "max_count": c.get("max_count"), "metric": c.get("metric", "kl"),
           "max_memory": c.get("max_memory")}
    # the cache bound and the memory bound share one batch and context (`problem.prepare`)
    if c.get("cache_workload") or c.get("memory_workload"):
        got["cache_context"] = workload_from_name(c.get("cache_workload") or c["memory_workload"]).seq_len
    if c.get("memory_batch"):
        got["cache_batch"] = c["memory_batch"]
    defaults = {k: q.default for k, q in inspect.signature(prepare).parameters.items()}
    given = {k: v for k, v in inputs.items() if v is not None and (k not in got or v != defaults.get(k))}
    return {**{k: v for k, v in got.items() if v is not None}, **given}


def refine(profile=None, scores=None, *, plan=None, teacher=None, library=None, data=None, seq_len=None,
           evaluations=DEFAULT_EVALUATIONS, seconds=None, solutions=DEFAULT_SOLUTIONS,
           min_distance=DEFAULT_MIN_DISTANCE, low_windows=DEFAULT_LOW_WINDOWS, high_windows=DEFAULT_HIGH_WINDOWS,
           offspring=DEFAULT_OFFSPRING, survivors=DEFAULT_SURVIVORS, rerank_steps=0,
           rerank_finalists=rerank_mod.DEFAULT_FINALISTS, seed=0, resume=False, out=None, write=True,
           overwrite=False, allow_stale=False, device="cpu", time_limit_s=60, progress=None, **inputs) -> LayerPlan:
    """Search around the MIP's plans on the true KL and return (and write) the best plan found.

    `profile` / `scores` / `inputs`: as `solver.solve` takes them (targets, constraints); `plan`: a plan `solve`
    wrote, whose constraints are reused (and whose profile and table must be these, else StaleInputError, exit 4,
    unless `allow_stale`). `teacher`: default the table's model; `library`: the candidate library (default: the
    one written with the table); `data` / `seq_len`: calibration text and window (default: the table's). Budget:
    `evaluations` measurements and/or `seconds`. `rerank_steps` > 0: the `rerank_finalists` best plans, and the MIP's
    own plan when it is not among them, are built, distilled that many steps by `mosaic distill` and the one with the
    least KL after it is handed over (rerank.py; the plan records the ranking with and without it and which finalist
    was the MIP's plan, `solver.rerank.mip`). Writes the plan (`out`, default layer_plans/<model>/
    plan-refined.json), its search record and, while running, a progress file `resume` continues from. Raises
    UsageError (exit 2), StaleInputError (exit 4), InfeasibleError (exit 3, with the reachable speedups).
    """
    from ..hf import data as data_mod
    from ..hf.device import check_device
    from ..hf.models import load_config, model_ref
    from . import fitness
    from .library import find_library, library_path

    check(evaluations is None or (integer(evaluations) and evaluations >= 1), "evaluations",
          f"must be a positive integer, got {evaluations!r}")
    check(seconds is None or (number(seconds) and seconds > 0), "seconds",
          f"must be a positive number, got {seconds!r}")
    check(evaluations is not None or seconds is not None, "evaluations", "or seconds must be given: the budget")
    for name, value in (("solutions", solutions), ("low_windows", low_windows), ("high_windows", high_windows),
                        ("offspring", offspring), ("survivors", survivors), ("min_distance", min_distance),
                        ("rerank_finalists", rerank_finalists)):
        check(integer(value) and value >= 1, name, f"must be a positive integer, got {value!r}")
    check(low_windows <= high_windows, "low_windows",
          f"must be at most high_windows ({high_windows}), got {low_windows}")
    check(survivors <= offspring, "survivors", f"must be at most offspring ({offspring}), got {survivors}")
    check(integer(rerank_steps) and rerank_steps >= 0, "rerank_steps",
          f"must be 0 (off) or a positive integer, got {rerank_steps!r}")
    check(rerank_steps or rerank_finalists == rerank_mod.DEFAULT_FINALISTS, "rerank_finalists",
          "counts the plans re-ranked after distillation; with `rerank_steps` 0 (off) it would be ignored")
    check(integer(seed), "seed", f"must be an integer, got {seed!r}")
    check(number(time_limit_s) and time_limit_s > 0, "time_limit_s", f"must be a positive number, got {time_limit_s!r}")
    flags(resume=resume, overwrite=overwrite, write=write, allow_stale=allow_stale)
    for name, value in (("teacher", teacher), ("library", library), ("data", data)):
        path_arg(name, value, optional=True)
    if not isinstance(plan, LayerPlan):
        path_arg("plan", plan, optional=True, what="a plan file or a LayerPlan")
    device = check_device(device)
    check_keywords(refine, inputs)
    if plan is not None:
        plan_obj = plan if isinstance(plan, LayerPlan) else load_plan(plan)
        inputs = _from_plan(plan_obj, inputs)
    p = prepare(profile, scores, allow_stale=allow_stale, **inputs)
    if not p.bounded:
        raise UsageError("nothing to trade quality for: give `speedup`, `ttft_speedup`, `tpot_speedup`, "
                         "`max_cache_bytes`, `max_memory` or `plan`")
    if plan is not None and not allow_stale and {k: plan_obj.header.inputs.get(k) for k in p.inputs} != p.inputs:
        raise StaleInputError("the plan was solved on another profile or sensitivity table than these; pass the "
                              "ones it was solved on (`profile`, `scores`) or `allow_stale`")
    model = p.scores.header.model
    teacher = teacher or model.id
    check_same_model(model_ref(teacher, load_config(teacher)), model, "sensitivity table", allow_stale)
    plan_out, record_out, log = refine_paths(model.id, out, inputs.get("plans_dir", PLANS_DIR))
    if write:
        check_not_input((plan_out, record_out, log), {**read_paths(p), "plan": plan, "library": library, "data": data})
        for path in (plan_out, record_out):
            check_output(path, overwrite=overwrite)
    source = data or (p.scores.data.get("source") if Path(str(p.scores.data.get("source", ""))).is_file()
                      else data_mod.default_source(teacher))
    seq_len = seq_len or int(p.scores.data.get("seq_len") or 512)
    check(isinstance(seq_len, int) and seq_len >= 2, "seq_len", f"must be an integer >= 2, got {seq_len!r}")
    windows = fitness.calibration_windows(teacher, source, seq_len, high_windows)  # exit 2 before any evaluation
    if blind := seen_as_full([c for cs in p.allowed for c in cs], seq_len, p.profile.teacher):
        logger.warning(f"warning: windows of {seq_len} tokens cannot tell {', '.join(blind)} from full attention (a "
                       "window as long as the sequence sees all of it): refine measures each as gqa; give a longer "
                       "seq_len to measure them")
    if rerank_steps:
        rerank_mod.check_windows(windows)
    starts = repair.seeds(p, solutions, min_distance, time_limit_s)  # exit 3 when nothing meets the budgets
    first = repair.plan_record(p, starts[0][1], {"name": "seed"})
    if library is None:
        library = find_library(first, Path(scores) if isinstance(scores, (str, Path)) else None)
        if library is None and isinstance(scores, (str, Path)) and library_path(scores).is_file():
            library = library_path(scores)
    weights = fitness.library_weights(library, p.allowed, model, allow_stale, p.inputs.get("scores"))
    settings = {"seed": seed, "evaluations": evaluations, "seconds": seconds, "solutions": solutions,
                "min_distance": min_distance, "low_windows": low_windows, "high_windows": high_windows,
                "offspring": offspring, "survivors": survivors, "elite": DEFAULT_ELITE, "max_changed": MAX_CHANGED,
                "rerank": {"steps": rerank_steps, "finalists": rerank_finalists} if rerank_steps else None,
                "data": {"source": data_mod.display_name(source), "seq_len": seq_len,
                         "sha256": sha256_json(windows.ids.tolist())},
                "library": str(library) if library else None}
    fp = sha256_json({"version": PROGRESS_VERSION, "inputs": p.inputs, "constraints": p.constraints,
                             **{k: v for k, v in settings.items()
                                if k not in ("evaluations", "seconds", "library", "rerank")}})
    done = _replayed(log, fp) if resume else {}
    if not resume and write and log.exists():
        logger.info("note: starting afresh; %s of an unfinished run is discarded (--resume keeps it)", log)
        log.unlink()
    elif resume and not done and log.is_file() and log.stat().st_size:
        logger.info("note: %s holds no measurement of this search (other targets, constraints or settings); "
                    "starting afresh", log)
    fit = fitness.Fitness(teacher, windows, low_windows, weights, device, seed)
    search = _Search(p, fit, settings, fp, done, log if write else None, progress)
    try:
        search.run(starts)
        best = reranked = search.best()
        if rerank_steps:
            # starts[0] is the MIP's own plan ("mip-1"), always measured first: a re-ranked plan must beat it too
            finalists, mip = rerank_mod.finalists(search.high.values(), rerank_finalists, search.high[starts[0][1]])
            fit.assemble(fit.teacher_ops)  # the teacher again: the reference every finalist is measured against
            ranks = rerank_mod.rerank(p, finalists, teacher=teacher, reference=fit.model, library=library,
                                      windows=windows, steps=rerank_steps, seed=seed, folder=plan_out.parent,
                                      progress=progress)
    except KeyboardInterrupt:  # in the search or in re-ranking: the measurements are kept either way
        kept = len(log.read_bytes().splitlines()) if write and log.is_file() else 0
        raise Interrupted(f"interrupted after {len(search.rows)} measurements; " + (
            f"{kept} measured plans are kept in {log}; rerun with --resume to continue" if kept
            else "nothing was written")) from None
    if rerank_steps:
        chosen = min(ranks, key=lambda r: (r["distilled_kl"], r["measured_kl"], r["index"]))
        best = next(r for r in finalists if r["index"] == chosen["index"])
        reranked = {"steps": rerank_steps, "finalists": ranks, "mip": mip, "without": reranked["index"],
                    "with": best["index"]}
    measured = {"kl": best["measured_kl"], "tokens": best["tokens"], "data": settings["data"],
                "windows": high_windows}
    info = {"name": "refine", "strategy": "refine", "status": search.stopped, "mip_gap": None,
            "seconds": round(time.perf_counter() - search.began, 3), "measured": measured,
            "evaluations": len(search.rows), "origin": best["origin"],
            "seeds": {origin: search.high[layers]["measured_kl"] for origin, layers in starts if layers in search.high},
            "search_record": record_out.name, **({"rerank": reranked} if rerank_steps else {})}
    result = repair.plan_record(p, best["layers_c"], info)
    header = Header.new(model, env=p.profile.header.env, inputs={**p.inputs, "data": settings["data"]["sha256"]})
    record = SearchRecord(header=header, constraints=p.constraints, settings=settings,
                          evaluations=tuple({k: v for k, v in r.items() if k != "layers_c"} for r in search.rows),
                          best=best["index"])
    if write:  # the record first: a refined plan on disk always has its record
        save_search_record(record, record_out)
        save(result, plan_out)
        log.unlink(missing_ok=True)
    return result


def _replayed(log: Path, fp: str) -> dict:
    """{(layers, fidelity): row} of the measurements a progress file kept for the same search (`fp`)."""
    import json

    out = {}
    if not log.is_file():
        return out
    for line in log.read_bytes().decode(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(row, dict) and row.get("fingerprint") == fp:
            out[tuple(row["layers"]), row["fidelity"]] = row
    return out


class _Search:
    """One run of the search: the measurements so far, the budget, the population."""

    def __init__(self, p, fit, settings: dict, fp: str, done: dict, log: Path | None, progress):
        self.p, self.fit, self.s, self.fp, self.done, self.log = p, fit, settings, fp, done, log
        self.progress = progress or (lambda *a: None)
        self.rows, self.high, self.low = [], {}, {}
        self.spent_s, self.began, self.stopped = 0.0, time.perf_counter(), "budget spent"
        self.repaired: dict = {}

    def _measure(self, layers, pins: dict, origin: str, high: bool) -> float:
        s = self.s
        if s["evaluations"] is not None and len(self.rows) >= s["evaluations"]:
            raise _Spent
        if s["seconds"] is not None and self.spent_s >= s["seconds"]:
            raise _Spent
        fidelity = "high" if high else "low"
        text = [str(c) for c in layers]
        row = self.done.get((tuple(text), fidelity))
        if row is None:
            kl, tokens, secs = self.fit.measure(layers, high)
            teacher = self.p.profile.teacher
            row = {"index": len(self.rows), "origin": origin, "pattern": pattern_string(layers), "layers": text,
                   "pins": {str(k): str(v) for k, v in sorted(pins.items())}, "fidelity": fidelity, "tokens": tokens,
                   "swapped_layers": sum(c != t for c, t in zip(layers, teacher)),
                   "predicted_kl": repair.predicted_loss(self.p, layers), "measured_kl": kl,
                   "predicted": {w: {"latency_ms": r["latency_ms"], "speedup": r["speedup"]}
                                 for w, r in predicted(self.p, layers).items()}, "seconds": round(secs, 4)}
            if self.log is not None:
                import json

                append_line(self.log, json.dumps({"fingerprint": self.fp, **row}, sort_keys=True))
        row = {k: v for k, v in row.items() if k != "fingerprint"}
        row["index"] = len(self.rows)
        self.spent_s += row["seconds"]
        self.rows.append({**row, "layers_c": tuple(layers)})
        (self.high if high else self.low)[tuple(layers)] = self.rows[-1]
        best = min(r["measured_kl"] for r in self.high.values()) if self.high else float("nan")
        self.progress(len(self.rows), self.s["evaluations"], f"best KL {best:.4f}")
        return row["measured_kl"]

    def _repair(self, pins: dict):
        key = tuple(sorted((k, str(v)) for k, v in pins.items()))
        if key not in self.repaired:
            self.repaired[key] = repair.repair(self.p, pins)
        return self.repaired[key]

    def best(self) -> dict:
        """The high-fidelity row with the least measured KL (ties: least predicted, then first measured)."""
        return min(self.high.values(), key=lambda r: (r["measured_kl"], r["predicted_kl"], r["index"]))

    def run(self, starts) -> None:
        """Measure the seeds on every window, then generations of screened moves until the budget is spent."""
        rng = random.Random(self.s["seed"])
        pins_of = {}
        try:
            for origin, layers in starts:
                pins_of[layers] = {}
                self._measure(layers, {}, origin, high=True)
            while True:
                elite = sorted(self.high.values(), key=lambda r: (r["measured_kl"], r["index"]))[:DEFAULT_ELITE]
                children, tries = [], 0
                while len(children) < self.s["offspring"] and tries < 20 * self.s["offspring"]:
                    tries += 1
                    parent = rng.choice(elite)["layers_c"]
                    pins = repair.mutate(self.p, parent, pins_of.get(parent, {}), rng, self.s["max_changed"])
                    layers = self._repair(pins) if pins else None
                    if layers is None or layers in self.high or any(layers == c for c, _ in children):
                        continue  # infeasible moves are skipped, not penalised; a plan is measured once
                    pins_of.setdefault(layers, pins)
                    children.append((layers, pins))
                if not children:
                    self.stopped = "no new plan within reach"
                    return
                for layers, pins in children:
                    if layers not in self.low:
                        self._measure(layers, pins, "move", high=False)
                ranked = sorted(children, key=lambda c: (self.low[c[0]]["measured_kl"], self.low[c[0]]["index"]))
                for layers, pins in ranked[:self.s["survivors"]]:
                    self._measure(layers, pins, "move", high=True)
        except _Spent:
            return
