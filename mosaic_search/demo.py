"""`mosaic demo`: the whole pipeline on an embedded teacher (`tiny`, or `tiny-vl` to see what a plan keeps of what a
VLM reads) on CPU, written up as a report folder.

profile -> score -> solve (two TPOT targets, and the Pareto frontier) -> build -> distill -> bench, then
`report.md` with the tables and three plots: the sensitivity heat map, the frontier (with each model's measured KL
before and after recovery), and each plan per layer.
"""

from __future__ import annotations

from pathlib import Path

from .artifacts.files import atomic_dir, atomic_path, check_output, write_text
from .errors import UsageError, check

MARKER = ".mosaic-demo"
WORKLOADS = ("prefill:512", "decode:1k", "decode:256:b4")
TARGETS = (1.25, 1.5)  # TPOT speedups over the teacher, every decode workload
GENERATE_TOKENS = 16  # new tokens per timed generate call
SWEEP = "1.05:2.0:0.05"
# Recovery steps per distillation stage: fewer than `mosaic distill`'s default so that the whole demo, both
# distillations included, stays within 8 minutes on 2 cores; BENCHMARKS.md "Recovery" measures the default budget.
DISTILL_STEPS = 30


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
    import time

    from . import builder
    from .latency.bench import bench, bench_generate
    from .latency.profiler import profile
    from .quality import scorer
    from .quality.evaluation import evaluate
    from .quality.library import library_path
    from .recovery.distill import distill, load_record
    from .search import solver

    steps = ["profile", "score", "solve", "build", "distill", "bench", "report"]
    clock = {}

    def stage(i, name):
        progress(i, len(steps), name)
        clock[name] = time.perf_counter()

    stage(0, "profile")
    prof = profile(teacher, device="cpu", workloads=list(WORKLOADS), out=d / "profile.json", seed=seed)
    stage(1, "score")
    table = scorer.score(teacher, out=d / "sensitivity.json", seed=seed)
    stage(2, "solve")
    decode = [w.name for w in prof.workloads if w.phase == "decode"]
    inputs = dict(profile=str(d / "profile.json"), scores=str(d / "sensitivity.json"))
    plans = {t: solver.solve(tpot_speedup=t, workloads=decode, out=str(d / f"plan-tpot-{t}x.json"), **inputs)
             for t in TARGETS}
    frontier = solver.sweep(SWEEP, plot=True, workloads=decode, out=str(d / "pareto.json"),
                            **inputs)
    stage(3, "build")
    built = {t: builder.build(d / f"plan-tpot-{t}x.json", library=library_path(d / "sensitivity.json"),
                              out=d / "models" / f"{teacher}-tpot-{t}x", seed=seed) for t in TARGETS}
    stage(4, "distill")
    distilled = {t: distill(str(built[t]), out=d / "models" / f"{teacher}-tpot-{t}x-distilled", steps=DISTILL_STEPS,
                            seed=seed) for t in TARGETS}
    quality = {t: load_record(distilled[t])["quality"] for t in TARGETS}
    reference = evaluate(teacher, teacher=teacher)
    stage(5, "bench")
    measured = {t: bench(str(built[t])) for t in TARGETS}
    contexts = [w.seq_len for w in prof.workloads if w.phase == "decode" and w.batch_size == 1]
    generated = {t: bench_generate(built[t], contexts=contexts, new_tokens=GENERATE_TOKENS, seed=seed)
                 for t in TARGETS}
    stage(6, "report")
    _plots(d, table, prof, plans)
    with atomic_path(d / "pareto.png") as tmp:
        solver.plot_frontier(frontier["points"], f"{teacher}: predicted loss vs TPOT target", str(tmp),
                             table.header.model.num_hidden_layers,
                             measured={f"measured KL, {name}": [(t, quality[t][when]["kl"]) for t in TARGETS]
                                       for when, name in (("before", "built"), ("after", "distilled"))})
    seconds = {name: clock[nxt] - clock[name] for name, nxt in zip(steps, steps[1:])}
    write_text(d / "report.md", _report(prof, table, plans, frontier, built, measured, generated, seconds, d,
                                        quality, reference, distilled, teacher))
    progress(len(steps), len(steps), "done")


def _plots(d: Path, table, prof, plans) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    from .operators import REGISTRY, plot_color

    cands = list(dict.fromkeys(e.candidate for e in table.entries))
    n = table.header.model.num_hidden_layers
    kl = np.full((n, len(cands)), np.nan)
    for e in table.entries:
        kl[e.layer, cands.index(e.candidate)] = e.kl
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(cands), 1.0 + 0.45 * n))
    im = ax.imshow(np.log10(np.maximum(kl, 1e-6)), aspect="auto", cmap="magma_r")
    ax.set_xticks(range(len(cands)), [c.label for c in cands], rotation=45, ha="right")
    for tick, c in zip(ax.get_xticklabels(), cands):
        tick.set_color(plot_color(c.op))
    ax.set_yticks(range(n), [f"layer {i}" for i in range(n)])
    ax.set_title("sensitivity: log10 KL(teacher || swapped)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(d / "sensitivity.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    w = next(w.name for w in prof.workloads if w.phase == "decode")
    fig, axes = plt.subplots(len(plans), 1, figsize=(8, 2.4 * len(plans)), squeeze=False)
    for ax, (target, plan) in zip(axes[:, 0], plans.items()):
        saved = [row["saved_ms"].get(w, 0.0) for row in plan.solver["per_layer"]]
        ops = [c.op for c in plan.layers]
        ax.bar(range(n), saved, color=[plot_color(op) for op in ops])
        ax.set_title(f"{target}x TPOT plan {plan.pattern}: latency saved per layer on {w} (ms)")
        ax.set_xticks(range(n))
        used = [op for op in REGISTRY if op in ops]
        ax.legend(handles=[Patch(color=plot_color(op), label=op) for op in used], fontsize=7, ncol=len(used))
    fig.tight_layout()
    with atomic_path(d / "plans.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _report(prof, table, plans, frontier, built, measured, generated, seconds, d: Path, quality, teacher,
            distilled, name: str = "tiny") -> str:
    env = prof.header.env
    lines = ["# mosaic demo report", "",
             f"Teacher: embedded `{name}` ({table.header.model.num_hidden_layers} layers); device: CPU "
             f"({env.get('device_name')}, torch {env.get('torch')}); mosaic {prof.header.created_by}.", "",
             "Stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()), "",
             "## Latency per decoder layer (ms, median)", ""]
    names = [w.name for w in prof.workloads]
    lines += ["| candidate | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    layer0 = {(e.candidate, e.workload): e for e in prof.entries if e.layer == 0}
    for c in dict.fromkeys(c for c, _ in layer0):
        lines.append(f"| {c.label} | " + " | ".join(
            f"{layer0[(c, w)].latency_ms:.3f}" if layer0[(c, w)].status == "ok" else layer0[(c, w)].status
            for w in names) + " |")
    lines += ["| whole teacher | " + " | ".join(f"{prof.baseline_ms[w]:.3f}" for w in names) + " |", "",
              "## Sensitivity (KL to the teacher when one layer is swapped)", "",
              *_data_table(table.data), "", "![sensitivity](sensitivity.png)", ""]
    cands = list(dict.fromkeys(e.candidate for e in table.entries))
    by = {(e.layer, e.candidate): e.kl for e in table.entries}
    lines += ["| layer | " + " | ".join(c.label for c in cands) + " |", "|---" * (len(cands) + 1) + "|"]
    for layer in range(table.header.model.num_hidden_layers):
        lines.append(f"| {layer} | " + " | ".join(f"{by.get((layer, c), float('nan')):.4f}" for c in cands) + " |")
    lines += ["", "## Plans", ""]
    for t, plan in plans.items():
        lines += [f"### {t}x TPOT: `{plan.pattern}`", "",
                  f"Predicted loss (sum of single-swap KL): {plan.objective:.4f}. Model: `{built[t].relative_to(d)}`.",
                  "", "| workload | predicted speedup | measured speedup | error |", "|---|---|---|---|"]
        for r in measured[t]:
            lines.append(f"| {r['workload']} | {r['predicted_speedup']:.3f}x | {r['measured_speedup']:.3f}x | "
                         f"{r['error_pct']:+.1f}% |")
        lines += ["", f"Through `model.generate` (the directory loaded with `trust_remote_code=True`, greedy, batch 1, "
                      f"{GENERATE_TOKENS} new tokens, its default static cache), against the teacher built with every "
                      "layer gqa and the stock teacher class:", "",
                  "| context | TTFT ms | TPOT ms | all-gqa TPOT ms | stock TPOT ms | TPOT speedup vs all-gqa | "
                  "vs stock | predicted |", "|---|---|---|---|---|---|---|---|"]
        for r in generated[t]:
            pred = "-" if r["predicted_tpot_speedup"] is None else f"{r['predicted_tpot_speedup']:.3f}x"
            ratios = " | ".join("-" if r[f"tpot_speedup_vs_{ref}"] is None else f"{r[f'tpot_speedup_vs_{ref}']:.3f}x"
                                for ref in ("all-gqa", "stock"))
            lines.append(f"| {r['context']} | {r['model_ttft_ms']:.1f} | {r['model_tpot_ms']:.2f} | "
                         f"{r['all-gqa_tpot_ms']:.2f} | {r['stock_tpot_ms']:.2f} | {ratios} | {pred} |")
        lines.append("")
    lines += _quality_section(plans, quality, teacher, distilled, d)
    lines += ["![plans](plans.png)", "", "## Pareto frontier (predicted loss vs TPOT target)", "",
              "Black markers: each plan's model measured (KL to the teacher) as built and after distillation.", "",
              "![frontier](pareto.png)", "", "| target | predicted loss | pattern |", "|---|---|---|"]
    for pt in frontier["points"]:
        loss = f"{pt['objective']:.4f}" if pt["feasible"] else "infeasible"
        lines.append(f"| {pt['target_speedup']:.2f}x | {loss} | `{pt.get('pattern', '')}` |")
    return "\n".join(lines) + "\n"


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
