"""The `mosaic` command: a thin Typer shell over the library; the only module that imports rich."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from . import __version__
from . import distill as distill_defaults  # defaults shown in --help; the module imports no torch at top level
from . import evaluate as eval_defaults
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, Interrupted, MosaicError
from .operators import OPS_HELP

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Hardware-aware architecture search: profile -> score -> solve -> build -> distill.")
# markup off: every string printed is data (paths, model ids, "pip install 'mosaic-search[cuda]'"), and rich
# would take its [brackets] for style tags and drop them
console = Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False, markup=False)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, markup=False)  # progress

# Option types, declared once and shared by every command.
ModelOpt = Annotated[str, typer.Option("--model", "--teacher", "-m",
                                       help="Hub id, local directory, or 'tiny' (the embedded teacher).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in outputs).")]
OutOpt = Annotated[Optional[str], typer.Option("--out", "-o", help="Output path (default: under profiles/ or layer_plans/).")]
OpsOpt = Annotated[Optional[str], typer.Option("--ops", help=OPS_HELP + " Default: every operator.")]
ImageTokensOpt = Annotated[int, typer.Option(
    "--image-tokens", help="VLM only: TTFT also encodes one image of this many tokens per sequence (as profiled).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda.")]
TableOpt = Annotated[Optional[str], typer.Option(
    "--table", help="Also write the rows (to_frame) as PATH.csv or PATH.parquet (parquet needs pyarrow).")]


def _version(value: bool):
    if value:
        console.print(f"mosaic {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                           help="Print the version and exit.")] = None):
    """Hardware-aware architecture search: profile -> score -> solve -> build -> distill."""


def _emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _ms(value) -> str:
    """Milliseconds to four significant digits and no fewer integer ones (1636, 163.6, 0.123): narrow columns."""
    return "-" if value is None else f"{value:.{max(0, 4 - len(str(int(abs(value)))))}f}"


def _x(ratio) -> str:
    """A speedup to three significant digits and no fewer integer ones (1.52x, 61.2x, 4767x); '-' for None."""
    return "-" if ratio is None else f"{ratio:.{max(0, 3 - len(str(int(abs(ratio)))))}f}x"


# Column kinds: a label or a number stays whole on one line; text wraps, and folds a word longer than its column.
_KINDS = {"label": dict(no_wrap=True), "num": dict(justify="right", no_wrap=True), "text": dict(overflow="fold")}


def _print_table(title: str, columns, rows, lead: int = 1, caption: str | None = None) -> None:
    """Print `rows` under `columns` ((header, kind) pairs, kinds in _KINDS) without cutting any cell to '…'.

    When the terminal is too narrow for every label and number column side by side, the columns after the
    first `lead` (which tell the rows apart) go on into further tables that repeat those `lead` columns.
    """
    def build(keep, first=True, last=True):
        table = Table(title=title if first else None, caption=caption if last else None, box=box.SIMPLE_HEAD,
                      pad_edge=False, collapse_padding=True)
        for i in keep:
            table.add_column(columns[i][0], **_KINDS[columns[i][1]])
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        return table

    def fits(keep):
        with console.capture() as shown:
            console.print(build(keep))
        return "…" not in shown.get()

    head, parts, rest = list(range(lead)), [], list(range(lead, len(columns)))
    while rest:
        n = 1
        while n < len(rest) and fits(head + rest[:n + 1]):
            n += 1
        parts, rest = parts + [rest[:n]], rest[n:]
    parts = parts or [[]]
    for k, part in enumerate(parts):
        console.print(build(head + part, k == 0, k == len(parts) - 1))


PROGRESS_EVERY_S = 5.0  # plain progress lines at most this often (plus the last): logs stay short
NOTHING_WRITTEN = "nothing was written"  # what an interrupted command without its own note kept


@contextlib.contextmanager
def _progress(label: str):
    """Progress on stderr; yields the library's `progress(done, total, what)` callback. A bar on a terminal;
    elsewhere (CI, `tee`), where rich's transient bar prints nothing, plain lines (`_plain_progress`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not err.is_terminal:
        yield _plain_progress(label)
        return

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}", markup=False),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("", total=None)

        def tick(done, total, what):
            bar.update(task, completed=done, total=total, description=what)

        yield tick


def _plain_progress(label: str):
    """A progress callback printing `label: done/total what (elapsed s)` lines: the first, then at most one per
    PROGRESS_EVERY_S, and the last (done == total)."""
    start, last = time.monotonic(), None

    def tick(done, total, what):
        nonlocal last
        now = time.monotonic()
        if last is not None and now - last < PROGRESS_EVERY_S and done != total:
            return
        last = now
        sys.stderr.write(f"{label}: {done}{f'/{total}' if total else ''} {what} ({now - start:.0f} s)\n")
        sys.stderr.flush()

    return tick


@contextlib.contextmanager
def _interruptible(kept):
    """Turn Ctrl-C inside into exit 130 (`Interrupted`) with one line saying what the command kept (`kept()`)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {kept()}") from None


# The commands, in pipeline order: `mosaic --help` lists them in the order they are defined here.
@app.command()
def profile(model: ModelOpt = "tiny",
            device: DeviceOpt = "cpu",
            ops: OpsOpt = None,
            workload: Annotated[Optional[list[str]], typer.Option(
                help="phase:tokens[:bN], e.g. prefill:32k or decode:96k:b8 (repeatable).")] = None,
            out: OutOpt = None, validate: Annotated[bool, typer.Option(
                help="Also time whole models (teacher and two mixes) in the same passes and report predicted "
                     "vs measured latency.")] = False,
            layers_per_sample: Annotated[Optional[int], typer.Option(
                help="Layers holding the candidate, run in sequence per sample (default: all on cpu, 1 on cuda).")
            ] = None,
            image_tokens: ImageTokensOpt = 0, table_out: TableOpt = None, seed: SeedOpt = 0,
            as_json: JsonOpt = False):
    """Stage 1: time every candidate mixer as a whole decoder layer on this device."""
    from . import frames, profiler

    if table_out:
        frames.check_table(table_out)  # a bad --table fails before the profile runs, not after

    with _interruptible(lambda: f"{NOTHING_WRITTEN}: a profile is saved only once complete"), \
            _progress("profiling") as tick:
        prof = profiler.profile(model=model, device=device, ops=ops, workloads=workload, out=out, seed=seed,
                                progress=tick, image_tokens=image_tokens, layers_per_sample=layers_per_sample,
                                validate=validate)
    rows, noise = prof.validation, profiler.spread(prof)
    if table_out:
        frames.write_table(prof, table_out)
    if as_json:
        return _emit_json({"profile": str(profiler.profile_path(model, prof.header.env, out)),
                           "validation": list(rows), "spread": noise, "table": table_out})
    layer0 = {(e.candidate, e.workload): e for e in prof.entries if e.layer == 0}
    gqa = {w: layer0.get((profiler.Candidate.teacher(), w)) for w in (w.name for w in prof.workloads)}
    body = []
    for cand in dict.fromkeys(c for c, _ in layer0):
        cells = []
        for w in prof.workloads:
            e, ref = layer0[(cand, w.name)], gqa[w.name]
            if e.status != "ok":
                cells.append(e.status)
            else:
                ratio = f" ({_x(ref.latency_ms / e.latency_ms)})" if ref and ref.status == "ok" and e.latency_ms else ""
                cells.append(f"{_ms(e.latency_ms)}{ratio}")
        body.append((cand.label, *cells))
    body.append(("fixed part", *(_ms(prof.fixed_ms.get(w.name)) for w in prof.workloads)))
    body.append(("whole teacher", *(_ms(prof.baseline_ms.get(w.name)) for w in prof.workloads)))
    _print_table(f"latency per decoder layer, ms (speedup vs gqa): {prof.header.env.get('device_name')}",
                 [("candidate", "label"), *((w.name, "num") for w in prof.workloads)], body)
    if noise:
        console.print(f"timing spread, p80/p20 per entry: median {noise['median']:.2f}x, max {noise['max']:.2f}x "
                      f"({noise['worst']}) over {noise['entries']} entries")
    console.print(f"wrote {profiler.profile_path(model, prof.header.env, out)}"
                  + (f" and {table_out}" if table_out else ""))
    if rows:
        _print_table("additivity: fixed + sum of layers vs whole model",
                     [("assignment", "text"), ("pattern", "text"), ("workload", "label"), ("predicted ms", "num"),
                      ("measured ms", "num"), ("error %", "num")],
                     [(r["assignment"], r["pattern"], r["workload"], _ms(r["predicted_ms"]), _ms(r["measured_ms"]),
                       f"{r['error_pct']:+.1f}") for r in rows], lead=3)


@app.command()
def score(teacher: ModelOpt = "tiny",
          data: Annotated[Optional[str], typer.Option(
              help="A .txt, .jsonl or .parquet file (chat rows may hold images for a VLM teacher), or 'self' "
                   "(default: tiny's calibration.txt, held-out text with recall; else self).")] = None,
          ops: OpsOpt = None,
          tokens: Annotated[Optional[int], typer.Option(
              help="Calibration tokens scored (default 8192, at least two windows).")] = None,
          seq_len: Annotated[Optional[int], typer.Option(
              "--seq-len", help="Tokens per window (default 512, or twice the largest SWA window).")] = None,
          align_steps: Annotated[Optional[int], typer.Option(
              "--align-steps", help="Local alignment steps of gdn/kda/mla (default 40; 0: the raw init).")] = None,
          out: OutOpt = None,
          resume: Annotated[bool, typer.Option(help="Keep finished items that still match.")] = False,
          device: DeviceOpt = "cpu",
          device_map: Annotated[Optional[str], typer.Option(help="e.g. auto: spread a large teacher over GPUs.")]
          = None,
          table_out: TableOpt = None, seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Stage 2: KL to the teacher of every (layer, operator) swap, after local alignment (torchrun splits items)."""
    import time
    from pathlib import Path

    from rich.text import Text

    from . import frames, scorer
    from .data import SELF
    from .library import library_path
    from .schema import to_json

    if table_out:
        frames.check_table(table_out)  # before the scoring run, not after it
    rank0, start = int(os.environ.get("RANK", "0")) == 0, time.perf_counter()
    kept = f"the finished items are kept beside {scorer.table_path(teacher, out)}; --resume continues"
    with _interruptible(lambda: kept), _progress("scoring") if rank0 else contextlib.nullcontext() as tick:
        table = scorer.score(teacher, data=data, ops=ops, tokens=tokens, seq_len=seq_len, align_steps=align_steps,
                             out=out, resume=resume, seed=seed, device=device, device_map=device_map, progress=tick)
    if not rank0:
        return None
    path, c, seconds = scorer.table_path(teacher, out), table.data["cost"], time.perf_counter() - start
    library = library_path(path)
    if table_out:
        frames.write_table(table, table_out)
    if as_json:
        return _emit_json({**to_json(table), "path": str(path), "seconds": seconds, "library": str(library)
                           if library.is_file() else None, "block_influence_vs_drop": scorer.proxy_agreement(table),
                           "table": table_out})
    cands = list(dict.fromkeys(e.candidate for e in table.entries))
    cell = {(e.layer, e.candidate): e.kl for e in table.entries}
    top = max(cell.values()) or 1.0
    rho = scorer.proxy_agreement(table)
    bi, rows = scorer.block_influence(table), []
    for layer in sorted({e.layer for e in table.entries}):
        shade = [f"on color({232 + round(12 * (cell[layer, k] / top) ** 0.5)})" for k in cands]
        milli = [1e3 * cell[layer, k] for k in cands]
        rows.append((str(layer), *(Text(f"{m:.3g}" if m < 1e3 else f"{m:.0f}", style=s) for m, s in zip(milli, shade)),
                     f"{bi.get(layer, float('nan')):.2f}"))
    source = table.data["source"]
    source = source if source == SELF else Path(source).name  # the file's name: its folder made titles wrap
    _print_table(f"KL(teacher || swapped), 1e-3 nats/token: {table.header.model.id}, {table.data['tokens']} tokens "
                 f"of {source}",
                 [("layer", "num"), *((k.label, "num") for k in cands), ("BI", "num")], rows,
                 caption=f"work {c['done_full_forwards']:.1f} full-forward equivalents vs "
                         f"{c['naive_full_forwards']:.1f} naive ({c['ratio']:.0%}); {seconds:.0f} s"
                         + ("" if rho is None else f"\nBI (block influence) vs drop KL, rank correlation {rho:.2f}"))
    console.print(f"wrote {path}" + (f" and {library}" if library.is_file() else "")
                  + (f" and {table_out}" if table_out else ""))


@app.command()
def solve(speedup: Annotated[Optional[float], typer.Option(help="Target speedup for every workload in scope.")] = None,
          profile: Annotated[Optional[str], typer.Option(help="Latency profile (default: newest).")] = None,
          scores: Annotated[Optional[str], typer.Option(help="Sensitivity table (default: newest matching).")] = None,
          workload: Annotated[Optional[list[str]], typer.Option(help="Only this workload (repeatable).")] = None,
          ttft_speedup: Annotated[Optional[float], typer.Option(help="Target for prefill workloads.")] = None,
          tpot_speedup: Annotated[Optional[float], typer.Option(help="Target for decode workloads.")] = None,
          max_cache_bytes: Annotated[Optional[int], typer.Option(help="Bound on the generation cache.")] = None,
          cache_batch: Annotated[int, typer.Option(help="Sequences the cache bound holds.")] = 1,
          cache_context: Annotated[Optional[int], typer.Option(help="Context of the cache bound.")] = None,
          ops: OpsOpt = None,
          pin: Annotated[Optional[list[str]], typer.Option(help="LAYER=OP, e.g. 0=gqa (repeatable).")] = None,
          min_count: Annotated[Optional[list[str]], typer.Option("--min", help="OP=N: at least N layers.")] = None,
          max_count: Annotated[Optional[list[str]], typer.Option("--max", help="OP=N: at most N layers.")] = None,
          strategy: Annotated[str, typer.Option(help="mip, greedy or pattern:SYMBOLS (e.g. pattern:DDDG).")] = "mip",
          sweep: Annotated[Optional[str], typer.Option(help="START:STOP:STEP: the Pareto frontier.")] = None,
          plot: Annotated[bool, typer.Option(help="With --sweep, also draw it to PNG.")] = False,
          solutions: Annotated[int, typer.Option(help="K diverse plans.")] = 1,
          min_distance: Annotated[int, typer.Option(help="Layers in which the K plans differ.")] = 1,
          time_limit: Annotated[float, typer.Option(help="MIP time limit, seconds.")] = 60.0,
          metric: Annotated[str, typer.Option(help="Score to minimise: kl or delta_loss.")] = "kl",
          device: Annotated[Optional[str], typer.Option(help="Refuse a profile from another device.")] = None,
          allow_stale: Annotated[bool, typer.Option(help="Use a profile/table for another model or device.")] = False,
          overwrite: Annotated[bool, typer.Option(help="Replace existing plan / sweep files at --out.")] = False,
          out: OutOpt = None, table_out: TableOpt = None, as_json: JsonOpt = False):
    """Stage 3: the least predicted loss per layer assignment that meets the speedup targets (MIP)."""
    from . import frames, solver
    from .errors import UsageError
    from .schema import to_json

    kw = dict(profile=profile, scores=scores, workloads=workload, ttft_speedup=ttft_speedup, tpot_speedup=tpot_speedup,
              max_cache_bytes=max_cache_bytes, cache_batch=cache_batch, cache_context=cache_context, ops=ops,
              pins=pin, min_count=min_count, max_count=max_count, metric=metric, device=device,
              allow_stale=allow_stale, time_limit_s=time_limit, out=out, overwrite=overwrite)
    if plot and not sweep:
        raise UsageError("--plot needs --sweep")
    if solutions != 1 and (sweep or strategy != "mip"):
        raise UsageError("--solutions needs the mip strategy and no --sweep")
    if min_distance != 1 and solutions == 1:
        raise UsageError(f"--min-distance {min_distance} needs --solutions 2 or more")
    if table_out and solutions != 1:
        raise UsageError("--table writes one plan or one sweep; drop --solutions")
    if table_out:
        frames.check_table(table_out)
    if sweep:
        res = solver.sweep(sweep, plot=plot, speedup=speedup, **kw)
        if table_out:
            frames.write_table(res, table_out)
        if as_json:
            return _emit_json({**res, "table": table_out})
        workloads = res["constraints"]["workloads"]
        _print_table(f"Pareto frontier: {res['model']['id']} (predicted loss, and speedup per workload, vs target)",
                     [("target", "num"), ("loss", "num"), ("pattern", "label"), *((w, "num") for w in workloads)],
                     [(_x(pt["target_speedup"]), f"{pt['objective']:.4g}" if pt["feasible"] else "infeasible",
                       pt.get("pattern", ""),
                       *(_x(pt["predicted"][w]["speedup"]) if pt["feasible"] else "-" for w in workloads))
                      for pt in res["points"]])
        return console.print("wrote " + ", ".join(res["files"] + ([table_out] if table_out else [])))
    plans = (solver.solve_many(solutions, min_distance, speedup=speedup, **kw) if solutions != 1 else
             [solver.solve(speedup=speedup, strategy=strategy, **kw)])
    paths = [str(solver.plan_path(p.header.model.id, out, rank)) for rank, p in enumerate(plans, 1)]
    if table_out:
        frames.write_table(plans[0], table_out)
    if as_json:
        return _emit_json([{**to_json(p), "path": path} for p, path in zip(plans, paths)] if solutions > 1 else
                          {**to_json(plans[0]), "path": paths[0], "table": table_out})
    for plan, path in zip(plans, paths):
        s, pred = plan.solver, plan.predicted
        gap = "-" if s.get("mip_gap") is None else f"{s['mip_gap']:.2g}"
        rows = [(str(row["layer"]), plan.layers[row["layer"]].label, f"{row['loss']:.4g}",
                 *(_ms(row["saved_ms"].get(w)) for w in pred)) for row in s["per_layer"]]
        rows += [("", "predicted ms", "", *(_ms(v["latency_ms"]) for v in pred.values())),
                 ("", "speedup", "", *(_x(v["speedup"]) for v in pred.values()))]
        _print_table(f"{plan.pattern}  loss {plan.objective:.4g}  ({s['name']}: {s['status']}, "
                     f"{s['seconds'] * 1000:.0f} ms, gap {gap}); ms saved per layer, by workload",
                     [("layer", "num"), ("operator", "label"), ("loss added", "num"), *((w, "num") for w in pred)],
                     rows, lead=2)
        console.print(f"wrote {path}" + (f" and {table_out}" if table_out else ""))


@app.command()
def build(plan: Annotated[str, typer.Argument(help="A mosaic/layer-plan JSON file.")],
          teacher: ModelOpt = None,
          library: Annotated[Optional[str], typer.Option(
              help="Aligned weights from score (.safetensors); default: the library score wrote with the table the "
                   "plan was solved on, found beside the plan or in layer_plans/<model>/.")] = None,
          no_library: Annotated[bool, typer.Option(
              "--no-library", help="Build from the teacher initialisation, without aligned weights.")] = False,
          out: Annotated[Optional[str], typer.Option("--out", "-o",
                                                     help="Model directory (default build/<model>-<pattern>).")] = None,
          dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
          overwrite: Annotated[bool, typer.Option(help="Replace an existing build at --out.")] = False,
          allow_stale: Annotated[bool, typer.Option(help="Use a plan made for another model.")] = False,
          seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Stage 4: apply a plan to its teacher and write a Hugging Face model directory (trust_remote_code)."""
    from . import builder
    from .errors import UsageError

    if library and no_library:
        raise UsageError("--library and --no-library exclude each other")
    with _interruptible(lambda: f"{NOTHING_WRITTEN}: a build replaces its output folder only once complete"):
        path = builder.build(plan, teacher=teacher, library=False if no_library else library, out=out, dtype=dtype,
                             overwrite=overwrite, allow_stale=allow_stale, seed=seed)
    if as_json:
        return _emit_json({"model_dir": str(path)})
    console.print(f"wrote {path}  (load with from_pretrained(..., trust_remote_code=True))")


@app.command()
def distill(model: Annotated[str, typer.Argument(help="A model directory written by mosaic build.")],
            teacher: Annotated[Optional[str], typer.Option(help="Teacher (default: the one the plan records).")]
            = None,
            oracle: Annotated[Optional[str], typer.Option(
                help="A stronger teacher with the same tokenizer, mixed into the on-policy stage.")] = None,
            oracle_weight: Annotated[float, typer.Option(help="Weight of the oracle's divergence (0..1).")] = 0.5,
            data: Annotated[Optional[str], typer.Option(
                help="Training data: .txt, .jsonl or .parquet, or 'self' (default: sampled from the teacher).")]
            = None,
            stage: Annotated[str, typer.Option(help="offpolicy, onpolicy or both.")] = "both",
            steps: Annotated[Optional[int], typer.Option(help=f"Optimizer steps per stage (default {distill_defaults.DEFAULT_STEPS}).")] = None,
            tokens: Annotated[Optional[int], typer.Option(help="Instead of --steps: training tokens per stage.")]
            = None,
            lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine).")]
            = distill_defaults.DEFAULT_LR,
            trainable: Annotated[str, typer.Option(
                help="all, mixers (every layer's token mixer) or replaced (the swapped-in mixers).")] = "all",
            hidden_weight: Annotated[float, typer.Option(
                help="Off-policy: weight of the per-layer hidden-state alignment term (0: off).")]
            = distill_defaults.DEFAULT_HIDDEN_WEIGHT,
            divergence: Annotated[str, typer.Option(help="On-policy: forward, reverse or jsd.")] = "forward",
            batch_size: Annotated[int, typer.Option(help="Windows per step (global, over every process).")]
            = distill_defaults.DEFAULT_BATCH,
            seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window.")]
            = distill_defaults.DEFAULT_SEQ_LEN,
            out: Annotated[Optional[str], typer.Option(
                "--out", "-o", help="Model directory (default <model>-distilled).")] = None,
            resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint of the same run.")] = False,
            overwrite: Annotated[bool, typer.Option(help="Replace an existing model at --out.")] = False,
            checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")]
            = distill_defaults.CHECKPOINT_EVERY,
            eval_data: Annotated[Optional[str], typer.Option(
                help="Held-out text for the quality before/after (default: tiny's; other teachers: none).")] = None,
            quality: Annotated[bool, typer.Option("--eval/--no-eval", help="Measure quality before and after.")]
            = True,
            parallel: Annotated[str, typer.Option(
                help="Under torchrun: ddp (a replica per process) or fsdp (FSDP2: each process holds a shard).")]
            = "ddp",
            device: DeviceOpt = "cpu", seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Stage 5: recover quality by distillation from the teacher (off-policy, then on-policy; torchrun scales out)."""
    from pathlib import Path

    from . import distill as distill_mod

    ckpt = Path(f"{distill_mod.default_out(model, out)}.checkpoint")
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with _interruptible(lambda: f"the checkpoint in {ckpt} is kept; rerun with --resume to continue"
                        if ckpt.is_dir() else f"{NOTHING_WRITTEN} (no checkpoint yet)"), _progress("distilling") if rank0 else contextlib.nullcontext() as tick:
        path = distill_mod.distill(model, teacher=teacher, oracle=oracle, oracle_weight=oracle_weight, data=data,
                                   stage=stage, steps=steps, tokens=tokens, lr=lr, trainable=trainable,
                                   hidden_weight=hidden_weight, divergence=divergence, batch_size=batch_size,
                                   seq_len=seq_len, out=out, resume=resume, overwrite=overwrite,
                                   checkpoint_every=checkpoint_every, eval_data=eval_data, quality=quality, seed=seed,
                                   device=device, parallel=parallel, progress=tick)
    if not rank0:
        return None
    record = distill_mod.load_record(path)
    if as_json:
        return _emit_json({"model_dir": str(path), "quality": record["quality"], "losses": record["losses"]})
    measured = record["quality"]
    if measured["after"] is not None:
        _quality_table(f"{Path(model).name}: quality against {record['teacher']} before and after distillation",
                       {"before": measured["before"], "after": measured["after"]})
    console.print(f"wrote {path}  (load with from_pretrained(..., trust_remote_code=True))")


@app.command("eval")
def eval_(model: Annotated[str, typer.Argument(help="A model directory (built or distilled by mosaic).")],
          teacher: Annotated[Optional[str], typer.Option(help="Teacher (default: the one the plan records).")] = None,
          data: Annotated[Optional[str], typer.Option(
              help="Held-out text (.txt/.jsonl/.parquet); its last windows are read (default: tiny's heldout.txt).")]
          = None,
          probes: Annotated[Optional[str], typer.Option(
              help="Recall probes, JSON lines {prompt, answer, distance} (default: tiny's recall_eval.jsonl).")]
          = None,
          windows: Annotated[int, typer.Option(help="Held-out windows.")] = eval_defaults.EVAL_WINDOWS,
          seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per held-out window.")]
          = eval_defaults.EVAL_SEQ_LEN,
          device: DeviceOpt = "cpu", as_json: JsonOpt = False):
    """Measured quality against the teacher: KL, held-out loss and recall (the numbers every report uses)."""
    from .evaluate import evaluate

    result = evaluate(model, teacher=teacher, data=data, probes=probes, windows=windows, seq_len=seq_len,
                      device=device)
    if as_json:
        return _emit_json(result)
    e = result["eval"]
    _quality_table(f"{model} against {result['teacher']}: {e['windows']} x {e['seq_len']} tokens of {e['source']}"
                   + (f", {e['probes']} probes" if e["probes"] else ""), {"model": result})


def _quality_table(title: str, rows: dict) -> None:
    """KL, held-out loss and recall per bucket, one row per measured model."""
    buckets = list(dict.fromkeys(b for q in rows.values() for b in q.get("recall", {})))
    _print_table(title, [("", "label"), ("KL", "num"), ("held-out loss", "num"),
                         *((f"recall {b}", "num") for b in buckets)],
                 [(name, f"{q['kl']:.4f}", f"{q['heldout_loss']:.4f}",
                   *(f"{q['recall'][b]:.1%}" if b in q.get("recall", {}) else "-" for b in buckets))
                  for name, q in rows.items()])


@app.command()
def bench(target: Annotated[str, typer.Argument(help="A built model directory, or a plan JSON (timed with random weights).")],
          vs: Annotated[Optional[str], typer.Option("--vs", help="Teacher to compare with (default: the plan's).")] = None,
          workload: Annotated[Optional[list[str]], typer.Option(
              help="Workload spec or name (default: those the plan predicts); repeatable.")] = None,
          device: DeviceOpt = "cpu", image_tokens: ImageTokensOpt = 0,
          generate: Annotated[bool, typer.Option(
              "--generate", help="Time model.generate end to end (TTFT, TPOT, tokens/s) against an all-gqa build and "
                                 "the stock teacher class, instead of the profiler's harness.")] = False,
          context: Annotated[Optional[list[str]], typer.Option(
              help="--generate: prompt length, e.g. 16k (default: the plan's decode contexts); repeatable.")] = None,
          new_tokens: Annotated[int, typer.Option(help="--generate: tokens generated per call.")] = 32,
          batch: Annotated[int, typer.Option(help="--generate: sequences per call.")] = 1,
          seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Measure TTFT / TPOT speedup over the teacher and compare it with the plan's prediction."""
    if generate:
        return _bench_generate(target, device, context, new_tokens, batch, seed, as_json)
    from .speedup import bench as run_bench

    with _progress("benchmarking") as tick:
        rows = run_bench(target, vs=vs, workloads=workload, device=device, seed=seed, progress=tick,
                         image_tokens=image_tokens)
    if as_json:
        return _emit_json(rows)
    _print_table(f"{target} vs teacher on {device}",
                 [("workload", "label"), *((col, "num") for col in ("teacher ms", "model ms", "measured", "predicted",
                                                                    "error %"))],
                 [(r["workload"], _ms(r["teacher_ms"]), _ms(r["model_ms"]), _x(r["measured_speedup"]),
                   _x(r["predicted_speedup"]), "-" if r["error_pct"] is None else f"{r['error_pct']:+.1f}")
                  for r in rows])


def _bench_generate(target, device, context, new_tokens, batch, seed, as_json):
    from .speedup import bench_generate

    with _progress("generate") as tick:
        rows = bench_generate(target, contexts=context, new_tokens=new_tokens, batch_size=batch, device=device,
                              seed=seed, progress=tick)
    if as_json:
        return _emit_json(rows)
    body = []
    for r in rows:
        pred = _x(r["predicted_tpot_speedup"])
        ratios = [_x(r[f"tpot_speedup_vs_{ref}"]) for ref in ("all-gqa", "stock")]
        body.append((str(r["context"]), _ms(r["model_ttft_ms"]), _ms(r["model_tpot_ms"]),
                     f"{r['model_tokens_per_s']:.1f}", _ms(r["all-gqa_tpot_ms"]), _ms(r["stock_tpot_ms"]), *ratios,
                     pred))
    _print_table(f"{target}: model.generate on {device}, batch {batch}, {new_tokens} new tokens "
                 f"(stock teacher: {rows[0]['stock_mode']} cache)",
                 [(col, "num") for col in ("context", "TTFT ms", "TPOT ms", "tokens/s", "all-gqa TPOT", "stock TPOT",
                                           "TPOT vs all-gqa", "TPOT vs stock", "predicted")], body)


@app.command()
def demo(out: Annotated[str, typer.Option("--out", "-o", help="Report folder (replaced if it holds an earlier demo).")]
         = "demo_report", seed: SeedOpt = 0):
    """The whole pipeline on the embedded teacher on CPU: profile, score, solve, build, bench, report."""
    from .demo import demo as run_demo

    with _interruptible(lambda: f"{NOTHING_WRITTEN}: the report replaces {out} only once complete"), \
            _progress("mosaic demo") as tick:
        path = run_demo(out=out, seed=seed, progress=tick)
    console.print(f"wrote {path / 'report.md'} (plots: sensitivity.png, pareto.png, plans.png)")


@app.command()
def ops(as_json: JsonOpt = False):
    """List every registered operator, its HF layer type and whether its fast path runs here."""
    from .operators import REGISTRY

    rows = []
    for spec in REGISTRY.values():
        ok, why = spec.fast_path()
        rows.append({"op": spec.name, "symbol": spec.symbol, "layer_type": spec.layer_type,
                     "params": list(spec.params), "fast_path": ok, "fast_path_note": why, "summary": spec.summary})
    if as_json:
        return _emit_json(rows)
    # why a fast path does not run, once per distinct reason under the table: an install hint stays on one line
    notes = list(dict.fromkeys(r["fast_path_note"] for r in rows if not r["fast_path"]))
    columns = [("op", "label"), ("sym", "label"), ("HF layer type", "label"), ("params", "label"),
               ("fast path", "label"), ("what", "text")]
    _print_table("mosaic operators", columns, [
        (r["op"], r["symbol"], r["layer_type"], ",".join(r["params"]) or "-",
         "yes" if r["fast_path"] else f"no ({notes.index(r['fast_path_note']) + 1})", r["summary"]) for r in rows],
        lead=len(columns))
    for k, note in enumerate(notes, 1):
        console.print(f"({k}) {note}")


@app.command()
def check(model: ModelOpt = "tiny", layer: Annotated[int, typer.Option(help="Layer to swap.")] = 0,
          tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 8, as_json: JsonOpt = False):
    """Swap every operator into one layer and check generate() with the static and dynamic caches equals no cache."""
    from .builder import check_generation

    results = check_generation(model, layer=layer, new_tokens=tokens)
    if as_json:
        return _emit_json(results)
    from .operators import Candidate

    _print_table(f"swap check: {model}, layer {layer}, {tokens} new tokens",
                 [("candidate", "label"), ("cache == no cache", "label"), ("tokens", "text")],
                 [(Candidate.parse(r["candidate"]).label, "yes" if r["match"] else "NO",
                   " ".join(map(str, r["tokens"]))) for r in results], lead=3)
    if not all(r["match"] for r in results):
        raise MosaicError("generation with cache differs from generation without cache")


def _fail(message: str, code: int) -> int:
    # plain write, not rich: a known error must stay on one line whatever the terminal width
    sys.stderr.write(f"error: {message}\n")
    return code


def main(argv=None) -> int:
    """Run the CLI and return its exit code (errors.py lists them); known errors print one line
    (MOSAIC_DEBUG=1 prints the traceback)."""
    debug = bool(os.environ.get("MOSAIC_DEBUG"))
    if not err.is_terminal:  # logs get our plain progress lines, not the hub's and transformers' redrawn bars
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        code = app(args=argv, prog_name="mosaic", standalone_mode=False)
    except KeyboardInterrupt:  # before or after a command (typer handles those inside one)
        return _fail(f"interrupted; {NOTHING_WRITTEN}", EXIT_INTERRUPTED)
    except MosaicError as e:
        if debug:
            traceback.print_exc()
        return _fail(str(e), e.exit_code)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return _fail("aborted", EXIT_RUNTIME)
    except Exception as e:
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # click's (typer's vendored) usage errors
            return _fail(" ".join(e.format_message().split()), e.exit_code)
        if debug:
            raise
        return _fail(f"{type(e).__name__}: {e} (MOSAIC_DEBUG=1 for the traceback)".replace("\n", " "), EXIT_RUNTIME)
    # without standalone mode typer returns, not raises, the code of a typer.Exit, and its own exit 130 for a
    # Ctrl-C in a command that has no `_interruptible` note (those write nothing before they finish)
    if code == EXIT_INTERRUPTED:
        return _fail(f"interrupted; {NOTHING_WRITTEN}", code)
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
