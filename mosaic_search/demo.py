"""`mosaic demo`: the whole pipeline on an embedded teacher (`tiny`, or `tiny-vl` to see what a plan keeps of what a
VLM reads) on CPU, written up as a report folder.

profile -> score -> solve (two TPOT targets, and the Pareto frontier) -> refine (each target's plan checked against
its true KL and searched around) -> build -> distill -> bench, then `report.md` with the tables and three plots: the
sensitivity heat map, the frontier (with the MIP's and the refined plan's predicted and measured KL, and each built
model's measured KL before and after recovery), and each plan per layer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from .artifacts.files import atomic_dir, check_output, write_text
from .errors import UsageError, check

MARKER = ".mosaic-demo"
WORKLOADS = ("prefill:512", "decode:1k", "decode:256:b4")
TARGETS = (1.25, 1.5)  # TPOT speedups over the teacher, every decode workload
GENERATE_TOKENS = 16  # new tokens per timed generate call
SWEEP = "1.05:2.0:0.05"
# Recovery steps per distillation stage: fewer than `mosaic distill`'s default so that the whole demo, both
# distillations included, stays within 8 minutes on 2 cores; BENCHMARKS.md "Recovery" measures the default budget.
DISTILL_STEPS = 30
# Plans refine measures per target (its default is refine.DEFAULT_EVALUATIONS): the MIP's diverse plans, greedy's and
# a few moves, within the demo's 8 minutes; a real search runs `mosaic refine` with its default budget.
REFINE_EVALUATIONS = 16
HEARTBEAT_S = 30.0  # a silent stage still says it runs at least this often
FAR_FROM_PREDICTION = 0.25  # a measured speedup off its prediction by more than this share is flagged with a cause
NOISY = "⚠"  # marks a figure the timing noise affects


def demo(out="demo_report", seed: int = 0, progress=None, teacher: str = "tiny") -> Path:
    """Run every stage on the embedded `teacher` and write the report folder `out` (replacing an earlier demo report
    there)."""
    from .assets import EMBEDDED, embedded_dir

    check(teacher in EMBEDDED, "teacher", f"must be an embedded teacher ({', '.join(EMBEDDED)}), got {teacher!r}")
    embedded_dir(teacher)  # an untrained one stops here, naming its training command, before any work
    out = check_output(out, folder=True)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UsageError(f"{out} exists and is not a mosaic demo report; choose another `out` or remove it")
    with atomic_dir(out) as tmp:
        _run(tmp, seed, progress or (lambda *a: None), teacher)
        write_text(tmp / MARKER, "written by mosaic demo\n")
    return out


def _run(d: Path, seed: int, progress, teacher: str = "tiny") -> None:
    from . import builder
    from .artifacts.distill_record import load_distill_record
    from .cli import plots
    from .latency import timing
    from .latency.bench import bench, bench_generate
    from .latency.profiler import profile
    from .quality import scorer
    from .quality.evaluation import evaluate
    from .quality.library import library_path
    from .quality.refine import refine
    from .recovery.distill import distill
    from .search import solver

    steps = ["profile", "score", "solve", "refine", "build", "distill", "bench", "report"]
    clock = {}
    report = _Stages(progress, len(steps))

    def stage(i, name):
        report.start(i, name)
        clock[name] = time.perf_counter()

    try:
        stage(0, "profile")
        prof = profile(teacher, device="cpu", workloads=list(WORKLOADS), out=d / "profile.json", seed=seed,
                       progress=report.tick)
        busy = [timing.busy_machine("cpu")]
        stage(1, "score")
        table = scorer.score(teacher, out=d / "sensitivity.json", seed=seed, progress=report.tick)
        stage(2, "solve")
        decode = [w.name for w in prof.workloads if w.phase == "decode"]
        inputs = dict(profile=str(d / "profile.json"), scores=str(d / "sensitivity.json"))
        plans = {t: solver.solve(tpot_speedup=t, workloads=decode, out=str(d / f"plan-tpot-{t}x.json"), **inputs)
                 for t in TARGETS}
        frontier = solver.sweep(SWEEP, reserve=(".png",), workloads=decode, out=str(d / "pareto.json"), **inputs)
        stage(3, "refine")  # what is built is the refined plan: the MIP's own, unless a measured plan beat it
        refined = {t: refine(plan=str(d / f"plan-tpot-{t}x.json"), evaluations=REFINE_EVALUATIONS, seed=seed,
                             out=str(d / f"plan-tpot-{t}x-refined.json"), progress=report.under(f"{t}x"), **inputs)
                   for t in TARGETS}
        stage(4, "build")
        built = {}
        for k, t in enumerate(TARGETS):
            report.tick(k, len(TARGETS), f"{teacher}-tpot-{t}x")
            built[t] = builder.build(d / f"plan-tpot-{t}x-refined.json", library=library_path(d / "sensitivity.json"),
                                     out=d / "models" / f"{teacher}-tpot-{t}x", seed=seed)
        stage(5, "distill")
        distilled = {t: distill(str(built[t]), out=d / "models" / f"{teacher}-tpot-{t}x-distilled", steps=DISTILL_STEPS,
                                seed=seed, progress=report.under(f"{teacher}-tpot-{t}x")) for t in TARGETS}
        quality = {t: load_distill_record(distilled[t]).quality for t in TARGETS}
        report.tick(0, 1, "the teacher's own quality")
        reference = evaluate(teacher, teacher=teacher)
        stage(6, "bench")
        measured = {t: bench(str(built[t]), progress=report.under(f"{teacher}-tpot-{t}x")) for t in TARGETS}
        busy.append(timing.busy_machine("cpu"))
        contexts = [w.seq_len for w in prof.workloads if w.phase == "decode" and w.batch_size == 1]
        generated = {t: bench_generate(built[t], contexts=contexts, new_tokens=GENERATE_TOKENS, seed=seed,
                                       progress=report.under(f"generate {teacher}-tpot-{t}x")) for t in TARGETS}
    finally:
        report.stop()
    stage(7, "report")
    plots.plot_sensitivity(table, d / "sensitivity.png")
    plots.plot_savings(refined, next(w.name for w in prof.workloads if w.phase == "decode"), d / "plans.png")
    checked = {t: _checked(plans[t], refined[t]) for t in TARGETS}
    plots.plot_frontier(frontier, d / "pareto.png", title=f"{teacher}: predicted loss vs TPOT target", measured={
        **{label: [(t, checked[t][key]) for t in TARGETS] for label, key in CHECKED_MARKERS},
        **{f"held-out KL, {name}": [(t, quality[t][when]["kl"]) for t in TARGETS]
           for when, name in (("before", "built"), ("after", "distilled"))}})
    seconds = {name: clock[nxt] - clock[name] for name, nxt in zip(steps, steps[1:])}
    write_text(d / "report.md", _report(prof, table, refined, checked, frontier, built, measured, generated, seconds,
                                        d, quality, reference, distilled, teacher, _noise(prof, busy)))
    progress(len(steps), len(steps), "done")


class _Stages:
    """The demo's progress: `progress(stage, stages, what)` when each stage starts (a stage index that changes, which
    the CLI always prints), each stage's own progress forwarded under it, and at least one line per HEARTBEAT_S while
    a stage is silent (sampling, loading, one long item), from a background thread."""

    def __init__(self, progress, stages: int):
        self.progress, self.stages = progress, stages
        self.index, self.name, self.what, self.last = 0, "", "", time.monotonic()
        self.lock, self.done = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _say(self, what: str) -> None:
        with self.lock:
            self.last = time.monotonic()
            self.progress(self.index, self.stages, what)

    def start(self, index: int, name: str) -> None:
        """Stage `index` (0-based) called `name` begins."""
        self.index, self.name, self.what, self.began = index, name, "", time.monotonic()
        self._say(name)

    def tick(self, done: int, total: int, what: str) -> None:
        """The running stage's own progress callback."""
        self.what = f"{done}/{total} {what}" if total else f"{done} {what}"
        self._say(f"{self.name}: {self.what}")

    def under(self, prefix: str):
        """A progress callback for one part of the stage, its lines prefixed with `prefix`."""
        return lambda done, total, what: self.tick(done, total, f"{prefix}: {what}")

    def _beat(self) -> None:
        while not self.done.wait(HEARTBEAT_S / 4):
            if time.monotonic() - self.last >= HEARTBEAT_S and self.name:
                elapsed = time.monotonic() - self.began
                self._say(f"{self.name}: {self.what + ', ' if self.what else ''}still running ({elapsed:.0f} s)")

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


# the frontier plot's markers of each target's plans: (legend label, key of `_checked`)
CHECKED_MARKERS = (("MIP plan, measured KL (calibration)", "mip_measured"),
                   ("refined plan, predicted loss", "refined_predicted"),
                   ("refined plan, measured KL (calibration)", "refined_measured"))


def _checked(mip, refined) -> dict:
    """What refine measured of a target's MIP plan and of the plan it hands over: patterns, the additive prediction
    (sum of single-swap scores) and the true KL on its calibration windows (the MIP's own plan is refine's first
    seed, `mip-1`)."""
    info = refined.solver
    return {"mip_pattern": mip.pattern, "mip_predicted": mip.objective, "mip_measured": info["seeds"]["mip-1"],
            "refined_pattern": refined.pattern, "refined_predicted": refined.objective,
            "refined_measured": info["measured"]["kl"], "origin": info["origin"], "tokens": info["measured"]["tokens"]}


def _report(prof, table, plans, checked, frontier, built, measured, generated, seconds, d: Path, quality, teacher,
            distilled, name: str, noise: dict) -> str:
    from .operators import pattern_legend

    env = prof.header.env
    lines = ["# mosaic demo report", "", *_noise_notice(noise),
             f"Teacher: embedded `{name}` ({table.header.model.num_hidden_layers} layers); device: CPU "
             f"({env.get('device_name')}, torch {env.get('torch')}); mosaic {prof.header.created_by}.", "",
             "Stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()), "",
             "## Latency per decoder layer (ms, median)", ""]
    names = [w.name for w in prof.workloads]
    lines += ["| candidate | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    layer0 = {(e.candidate, e.workload): e for e in prof.entries if e.layer == 0}
    for c in dict.fromkeys(c for c, _ in layer0):
        lines.append(f"| {c.label} | " + " | ".join(
            (f"{layer0[(c, w)].latency_ms:.3f}" + (f" {NOISY}" if (c, w) in noise["entries"] else ""))
            if layer0[(c, w)].status == "ok" else layer0[(c, w)].status for w in names) + " |")
    lines += ["| whole teacher | " + " | ".join(f"{prof.baseline_ms[w]:.3f}" for w in names) + " |", "",
              "## Sensitivity (KL to the teacher when one layer is swapped)", "",
              *_data_table(table.data), "", "![sensitivity](sensitivity.png)", ""]
    cands = list(dict.fromkeys(e.candidate for e in table.entries))
    by = {(e.layer, e.candidate): e.kl for e in table.entries}
    lines += ["| layer | " + " | ".join(c.label for c in cands) + " |", "|---" * (len(cands) + 1) + "|"]
    for layer in range(table.header.model.num_hidden_layers):
        lines.append(f"| {layer} | " + " | ".join(f"{by.get((layer, c), float('nan')):.4f}" for c in cands) + " |")
    lines += ["", "## Plans", "",
              f"Each target's plan is solved by the MIP (least sum of single-swap scores), then checked and searched "
              f"around by `mosaic refine` ({REFINE_EVALUATIONS} plans measured, every one within the budgets): the "
              "true KL of whole plans on the calibration windows, which the sum of scores does not predict. The plan "
              "built is refine's: the MIP's own unless a measured plan beat it. Where refine's plan came from: "
              "`mip-K`, the MIP's K-th most diverse plan; `greedy`, the greedy plan; `move`, a plan reached by "
              "changing layers and solving the others again.", "",
              f"Patterns: one letter per layer, its token mixer ({pattern_legend()}); lower case where the layer's MLP "
              "is narrower or removed (the plan files say which). Two plans can share a pattern.", ""]
    for t, plan in plans.items():
        c = checked[t]
        lines += [f"### {t}x TPOT: `{plan.pattern}`", "",
                  "| plan | pattern | predicted loss (sum of scores) | measured KL (calibration) |",
                  "|---|---|---|---|",
                  f"| MIP | `{c['mip_pattern']}` | {c['mip_predicted']:.4f} | {c['mip_measured']:.4f} |",
                  f"| refined (from {c['origin']}; built) | `{c['refined_pattern']}` | {c['refined_predicted']:.4f} | "
                  f"{c['refined_measured']:.4f} |", "",
                  f"Measured on {c['tokens']} calibration tokens. Model: `{built[t].relative_to(d)}`.",
                  "", "| workload | predicted speedup | measured speedup | error | note |", "|---|---|---|---|---|"]
        for r in measured[t]:
            lines.append(f"| {r['workload']} | {r['predicted_speedup']:.3f}x | {r['measured_speedup']:.3f}x | "
                         f"{r['error_pct']:+.1f}% | {_far(r['measured_speedup'], r['predicted_speedup'], noise)} |")
        lines += ["", f"Through `model.generate` (the directory loaded with `trust_remote_code=True`, greedy, batch 1, "
                      f"{GENERATE_TOKENS} new tokens, its default static cache), against the teacher built with every "
                      "layer gqa and the stock teacher class:", "",
                  "| context | TTFT ms | TPOT ms | all-gqa TPOT ms | stock TPOT ms | TPOT speedup vs all-gqa | "
                  "vs stock | predicted | note |", "|---|---|---|---|---|---|---|---|---|"]
        for r in generated[t]:
            pred = "-" if r["predicted_tpot_speedup"] is None else f"{r['predicted_tpot_speedup']:.3f}x"
            ratios = " | ".join("-" if r[f"tpot_speedup_vs_{ref}"] is None else f"{r[f'tpot_speedup_vs_{ref}']:.3f}x"
                                for ref in ("all-gqa", "stock"))
            lines.append(f"| {r['context']} | {r['model_ttft_ms']:.1f} | {r['model_tpot_ms']:.2f} | "
                         f"{r['all-gqa_tpot_ms']:.2f} | {r['stock_tpot_ms']:.2f} | {ratios} | {pred} | "
                         f"{_far(r['tpot_speedup_vs_all-gqa'], r['predicted_tpot_speedup'], noise)} |")
        lines.append("")
    lines += _quality_section(plans, quality, teacher, distilled, d)
    lines += ["![plans](plans.png)", "", "## Pareto frontier (predicted loss vs TPOT target)", "",
              "Black markers: each target's MIP plan and refined plan as refine measured them (KL to the teacher on "
              "the calibration windows), and the built model measured on held-out text as built and after "
              "distillation.", "",
              "![frontier](pareto.png)", "", "| target | predicted loss | pattern |", "|---|---|---|"]
    for pt in frontier.points:
        loss = f"{pt['objective']:.4f}" if pt["feasible"] else "infeasible"
        lines.append(f"| {pt['target_speedup']:.2f}x | {loss} | `{pt.get('pattern', '')}` |")
    return "\n".join(lines) + "\n"


def _noise(prof, busy: list) -> dict:
    """How far the demo's timings can be trusted: the profile's spread (`profiler.spread`), the busy-machine
    warnings taken after profiling and after benchmarking, and the (candidate, workload) entries of the profile whose
    own p80/p20 exceeds `profiler.NOISY_SPREAD`."""
    from .latency.profiler import NOISY_SPREAD, spread

    sp, busy = spread(prof), [b for b in busy if b]
    entries = {(e.candidate, e.workload) for e in prof.entries
               if e.status == "ok" and e.p20_ms and e.p80_ms is not None and e.p80_ms / e.p20_ms > NOISY_SPREAD}
    return {"spread": sp, "busy": busy, "entries": entries, "limit": NOISY_SPREAD,
            "noisy": bool(busy) or (sp is not None and sp["median"] > NOISY_SPREAD)}


def _noise_notice(noise: dict) -> list[str]:
    """The report's opening warning when its timings were noisy (nothing when they were not)."""
    if not noise["noisy"]:
        return []
    why = [b.removeprefix("warning: ").split(":")[0] for b in noise["busy"]]  # "the machine was busy (load ...)"
    sp = noise["spread"]
    if sp is not None and sp["median"] > noise["limit"]:
        why.append(f"the typical profile entry's p80/p20 is {sp['median']:.2f}x, above {noise['limit']}x (worst: "
                   f"{sp['worst']}, {sp['max']:.2f}x)")
    return [f"> **{NOISY} Timings were noisy**: {'; '.join(why)}. Latencies, speedups and their errors below are "
            f"not to be trusted, those marked {NOISY} least; candidates closer than the spread cannot be ranked. "
            "Re-run on a quiet machine (nothing else running; on CPU pin the threads, e.g. taskset with "
            "OMP_NUM_THREADS).", ""]


def _far(measured, predicted, noise: dict) -> str:
    """A note for a measured speedup far from its prediction, naming the likely cause; '' when close."""
    if measured is None or predicted is None or abs(measured - predicted) <= FAR_FROM_PREDICTION * predicted:
        return ""
    if noise["noisy"]:
        cause = "noisy timings (see the warning at the top)"
    elif measured < predicted:
        cause = ("time outside the decoder layers that the profile's fixed part does not capture (per-call "
                 "overhead weighs most on a model this small)")
    else:
        cause = "the replaced layers cost less inside the whole model than timed alone in the profile"
    return f"{NOISY} {abs(measured / predicted - 1):.0%} off the prediction; likely cause: {cause}"


def _quality_section(plans, quality, teacher, distilled, d: Path) -> list[str]:
    """Predicted loss next to measured quality, as built and after `mosaic distill` (`evaluate.measure`)."""
    ev = teacher["eval"]
    buckets = list(teacher.get("recall", {}))
    asked = "questions" in teacher  # a VLM teacher's image questions: greedy answers, exact match
    lines = ["## Quality: predicted, measured as built, measured after recovery", "",
             f"Measured with `mosaic eval` on {ev['windows']} held-out windows of {ev['seq_len']} tokens of "
             f"`{ev['source']}` and its {ev['probes']} recall probes (split at distance {ev['recall_split']}, the "
             f"smallest SWA window)"
             + (f" and its {ev['questions']} held-out image questions (exact match of the greedy answer)" if asked
                else "") + f"; distilled with `mosaic distill` (both stages, {DISTILL_STEPS} steps each). Gap "
             "recovered: the share of the held-out loss gap to the teacher that distillation closed.", "",
             "| model | predicted loss | KL | held-out loss | " + " | ".join(f"recall {b}" for b in buckets)
             + (" | image questions" if asked else "") + " | gap recovered |",
             "|---" * (5 + len(buckets) + asked) + "|",
             f"| teacher | 0 | 0 | {teacher['heldout_loss']:.4f} | "
             + " | ".join(f"{teacher['recall'][b]:.0%}" for b in buckets)
             + (f" | {teacher['questions']['accuracy']:.1%}" if asked else "") + " | - |"]
    for t, plan in plans.items():
        before, after = quality[t]["before"], quality[t]["after"]
        gap = before["heldout_loss"] - teacher["heldout_loss"]
        recovered = f"{(before['heldout_loss'] - after['heldout_loss']) / gap:.0%}" if gap > 0 else "-"
        for name, q, pred, rec in ((f"{t}x built", before, f"{plan.objective:.4f}", "-"),
                                   (f"{t}x distilled (`{distilled[t].relative_to(d)}`)", after, "-", recovered)):
            lines.append(f"| {name} | {pred} | {q['kl']:.4f} | {q['heldout_loss']:.4f} | "
                         + " | ".join(f"{q['recall'][b]:.0%}" for b in buckets)
                         + (f" | {q['questions']['accuracy']:.1%}" if asked else "") + f" | {rec} |")
    return lines + [""]


def _data_table(data: dict) -> list[str]:
    """The calibration data the table was scored on, as markdown rows."""
    from .hf.data import SELF, display_name

    name = display_name(data["source"]) if data["source"] == SELF else f"`{display_name(data['source'])}`"
    return ["| calibration data | tokens scored | tokens per window | alignment windows | seed |",
            "|---|---|---|---|---|", f"| {name} | {data['tokens']} | {data['seq_len']} | "
            f"{data.get('align_windows', '-')} | {data['seed']} |"]
