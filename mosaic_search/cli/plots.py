"""Every plot mosaic draws, as PNG files written atomically: the Pareto frontier with each plan per layer, the
sensitivity heat map, the latency each plan saves per layer. matplotlib is imported only here, and only when a plot
is drawn; each operator has one colour in every plot (`operators.plot_color`)."""

from __future__ import annotations

import itertools
from pathlib import Path

from ..artifacts.files import atomic_path
from ..operators import REGISTRY, Candidate, plot_color


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path, dpi: int, **savefig) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, **savefig)
    finally:
        plt.close(fig)
    return Path(path)


def _legend(ops) -> list:
    from matplotlib.patches import Patch

    return [Patch(color=plot_color(op), label=op) for op in REGISTRY if op in ops]


def plot_frontier(front, path, measured: dict | None = None, title: str | None = None) -> Path:
    """The frontier of a `Pareto` record (`solver.sweep`): predicted loss per target speedup above, each plan's
    layers below; `measured` ({label: [(target speedup, measured KL), ...]}) adds models measured after building or
    distilling. Written atomically as a PNG at `path` (returned)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    num_layers = front.header.model.num_hidden_layers
    ok = [pt for pt in front.points if pt["feasible"]]
    xs = [pt["target_speedup"] for pt in ok]
    fig, (top, plans) = plt.subplots(2, 1, figsize=(7, 3 + 0.12 * num_layers), sharex=True,
                                     gridspec_kw={"height_ratios": [2, 1 + 0.06 * num_layers]})
    top.plot(xs, [pt["objective"] for pt in ok], "o-", color="black")  # black: no operator's colour
    for (label, pts), marker in zip((measured or {}).items(), itertools.cycle("xs^vD+*")):  # "o": the line's
        top.plot([x for x, _ in pts], [y for _, y in pts], marker, linestyle="none", color="black", label=label)
    if measured:
        top.legend(fontsize=7, loc="upper left")
    # on two short lines: one long line overran the short top panel into the lower one, and off the figure
    top.set_ylabel("predicted loss\n(sum of scores)" + ("\nand measured KL" if measured else ""), fontsize=9)
    top.set_title(title or f"{front.header.model.id}: predicted loss vs speedup")
    top.grid(alpha=0.3)
    # Each plan as a column of its layers, in the colours every mosaic plot gives these operators.
    width = 0.8 * min((b - a for a, b in zip(xs, xs[1:])), default=0.1)
    ops = [[Candidate.parse(c).op for c in pt["layers"]] for pt in ok]
    for x, layer_ops in zip(xs, ops):
        plans.bar([x] * len(layer_ops), 1, bottom=range(len(layer_ops)), width=width,
                  color=[plot_color(op) for op in layer_ops])
    plans.set_ylim(num_layers, 0)
    plans.yaxis.set_major_locator(MaxNLocator(integer=True))
    plans.set_ylabel("layer")
    plans.set_xlabel("target speedup (every constrained workload)")
    used = {op for layer_ops in ops for op in layer_ops}
    if used:
        plans.legend(handles=_legend(used), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(plt, fig, path, dpi=120, bbox_inches="tight")  # the legend right of the panels too


def plot_sensitivity(table, path) -> Path:
    """A `SensitivityTable` as a heat map of log10 KL, layer by candidate (labels in each operator's colour),
    written atomically as a PNG at `path` (returned)."""
    plt = _pyplot()
    import numpy as np

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
    return _save(plt, fig, path, dpi=110)


def plot_savings(plans: dict, workload: str, path, label: str = "TPOT") -> Path:
    """The latency each plan ({target speedup: LayerPlan}) saves per layer on `workload` (ms, from its solver's
    per-layer rows), one panel per plan, written atomically as a PNG at `path` (returned)."""
    plt = _pyplot()

    fig, axes = plt.subplots(len(plans), 1, figsize=(8, 2.4 * len(plans)), squeeze=False)
    for ax, (target, plan) in zip(axes[:, 0], plans.items()):
        n = len(plan.layers)
        saved = [row["saved_ms"].get(workload, 0.0) for row in plan.solver["per_layer"]]
        ops = [c.op for c in plan.layers]
        ax.bar(range(n), saved, color=[plot_color(op) for op in ops])
        ax.set_title(f"{target}x {label} plan {plan.pattern}: latency saved per layer on {workload} (ms)")
        ax.set_xticks(range(n))
        legend = _legend(set(ops))
        ax.legend(handles=legend, fontsize=7, ncol=len(legend))
    fig.tight_layout()
    return _save(plt, fig, path, dpi=110)
