"""The `mosaic` command: a thin Typer shell over the library; the only module that imports rich."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import EXIT_RUNTIME, MosaicError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Hardware-aware architecture search: profile -> score -> solve -> build.")
console = Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)  # progress bars

# Option types, declared once and shared by every command.
ModelOpt = Annotated[str, typer.Option("--model", "--teacher", "-m",
                                       help="Hub id, local directory, or 'tiny' (the embedded teacher).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in outputs).")]
OutOpt = Annotated[Optional[str], typer.Option("--out", "-o", help="Output path (default: under profiles/ or layer_plans/).")]
ImageTokensOpt = Annotated[int, typer.Option(
    "--image-tokens", help="VLM only: TTFT also encodes one image of this many tokens per sequence (as profiled).")]


def _version(value: bool):
    if value:
        console.print(f"mosaic {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                           help="Print the version and exit.")] = None):
    """Hardware-aware architecture search: profile -> score -> solve -> build."""


def _emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


@contextlib.contextmanager
def _progress(label: str):
    """A progress bar on stderr; yields the library's `progress(done, total, what)` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("", total=None)

        def tick(done, total, what):
            bar.update(task, completed=done, total=total, description=what)

        yield tick


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
    table = Table(title="mosaic operators")
    for col in ("op", "sym", "HF layer type", "params", "fast path", "what"):
        table.add_column(col)
    for r in rows:
        fast = "yes" if r["fast_path"] else f"no: {r['fast_path_note']}"
        table.add_row(r["op"], r["symbol"], r["layer_type"], ",".join(r["params"]) or "-", fast, r["summary"])
    console.print(table)


@app.command()
def check(model: ModelOpt = "tiny", layer: Annotated[int, typer.Option(help="Layer to swap.")] = 0,
          tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 8, as_json: JsonOpt = False):
    """Swap every operator into one layer and check generate() with the static and dynamic caches equals no cache."""
    from .builder import check_generation

    results = check_generation(model, layer=layer, new_tokens=tokens)
    if as_json:
        return _emit_json(results)
    table = Table(title=f"swap check: {model}, layer {layer}, {tokens} new tokens")
    for col in ("candidate", "cache == no cache", "tokens"):
        table.add_column(col)
    for r in results:
        table.add_row(r["candidate"], "yes" if r["match"] else "NO", " ".join(map(str, r["tokens"])))
    console.print(table)
    if not all(r["match"] for r in results):
        raise MosaicError("generation with cache differs from generation without cache")


@app.command()
def profile(model: ModelOpt = "tiny",
            device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
            ops: Annotated[Optional[str], typer.Option(help="Candidates, e.g. gqa,swa:window=1024,gdn.")] = None,
            workload: Annotated[Optional[list[str]], typer.Option(
                help="phase:tokens[:bN], e.g. prefill:32k or decode:96k:b8 (repeatable).")] = None,
            out: OutOpt = None, validate: Annotated[bool, typer.Option(
                help="Also time whole models (teacher and two mixes) in the same passes and report predicted "
                     "vs measured latency.")] = False,
            layers_per_sample: Annotated[Optional[int], typer.Option(
                help="Layers holding the candidate, run in sequence per sample (default: all on cpu, 1 on cuda).")
            ] = None,
            image_tokens: ImageTokensOpt = 0, seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Stage 1: time every candidate mixer as a whole decoder layer on this device."""
    from . import profiler

    with _progress("profiling") as tick:
        prof = profiler.profile(model=model, device=device, ops=ops, workloads=workload, out=out, seed=seed,
                                progress=tick, image_tokens=image_tokens, layers_per_sample=layers_per_sample,
                                validate=validate)
    rows = prof.validation
    if as_json:
        return _emit_json({"profile": str(profiler.profile_path(model, prof.header.env, out)),
                           "validation": list(rows)})
    out_table = Table(title=f"latency per decoder layer, ms (speedup vs gqa): {prof.header.env.get('device_name')}")
    out_table.add_column("candidate")
    for w in prof.workloads:
        out_table.add_column(w.name, justify="right")
    layer0 = {(e.candidate, e.workload): e for e in prof.entries if e.layer == 0}
    gqa = {w: layer0.get((profiler.Candidate.of("gqa"), w)) for w in (w.name for w in prof.workloads)}
    for cand in dict.fromkeys(c for c, _ in layer0):
        cells = []
        for w in prof.workloads:
            e, ref = layer0[(cand, w.name)], gqa[w.name]
            if e.status != "ok":
                cells.append(e.status)
            else:
                ratio = f" ({ref.latency_ms / e.latency_ms:.2f}x)" if ref and ref.status == "ok" and e.latency_ms else ""
                cells.append(f"{e.latency_ms:.3f}{ratio}")
        out_table.add_row(str(cand), *cells)
    out_table.add_row("fixed part", *(_ms(prof.fixed_ms.get(w.name)) for w in prof.workloads))
    out_table.add_row("whole teacher", *(_ms(prof.baseline_ms.get(w.name)) for w in prof.workloads))
    console.print(out_table)
    console.print(f"wrote {profiler.profile_path(model, prof.header.env, out)}")
    if rows:
        v = Table(title="additivity: fixed + sum of layers vs whole model")
        for col in ("assignment", "pattern", "workload", "predicted ms", "measured ms", "error %"):
            v.add_column(col)
        for r in rows:
            v.add_row(r["assignment"], r["pattern"], r["workload"], f"{r['predicted_ms']:.3f}",
                      f"{r['measured_ms']:.3f}", f"{r['error_pct']:+.1f}")
        console.print(v)


@app.command()
def build(plan: Annotated[str, typer.Argument(help="A mosaic/layer-plan JSON file.")],
          teacher: ModelOpt = None,
          library: Annotated[Optional[str], typer.Option(help="Aligned weights from score (.safetensors).")] = None,
          out: Annotated[Optional[str], typer.Option("--out", "-o",
                                                     help="Model directory (default build/<model>-<pattern>).")] = None,
          dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
          overwrite: Annotated[bool, typer.Option(help="Replace an existing build at --out.")] = False,
          allow_stale: Annotated[bool, typer.Option(help="Use a plan made for another model.")] = False,
          seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Stage 4: apply a plan to its teacher and write a Hugging Face model directory (trust_remote_code)."""
    from . import builder

    path = builder.build(plan, teacher=teacher, library=library, out=out, dtype=dtype, overwrite=overwrite,
                         allow_stale=allow_stale, seed=seed)
    if as_json:
        return _emit_json({"model_dir": str(path)})
    console.print(f"wrote {path}  (load with from_pretrained(..., trust_remote_code=True))")


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
          ops: Annotated[Optional[str], typer.Option(help="Allowed candidates, e.g. gqa,swa,gdn.")] = None,
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
          out: OutOpt = None, as_json: JsonOpt = False):
    """Stage 3: the least predicted loss per layer assignment that meets the speedup targets (MIP)."""
    from . import solver
    from .errors import UsageError
    from .schema import to_json

    kw = dict(profile=profile, scores=scores, workloads=workload, ttft_speedup=ttft_speedup, tpot_speedup=tpot_speedup,
              max_cache_bytes=max_cache_bytes, cache_batch=cache_batch, cache_context=cache_context, ops=ops,
              pins=pin, min_count=min_count, max_count=max_count, metric=metric, device=device,
              allow_stale=allow_stale, time_limit_s=time_limit, out=out)
    if (plot and not sweep) or (solutions > 1 and (sweep or strategy != "mip")):
        raise UsageError("--plot needs --sweep; --solutions needs the mip strategy and no --sweep")
    if sweep:
        res = solver.sweep(sweep, plot=plot, speedup=speedup, **kw)
        if as_json:
            return _emit_json(res)
        table = Table(title=f"Pareto frontier: {res['model']['id']} (predicted loss vs target speedup)")
        for col in ("target", "loss", "pattern", *res["constraints"]["workloads"]):
            table.add_column(col)
        for pt in res["points"]:
            sp = [f"{pt['predicted'][w]['speedup']:.2f}x" if pt["feasible"] else "-"
                  for w in res["constraints"]["workloads"]]
            table.add_row(f"{pt['target_speedup']:.2f}x", f"{pt['objective']:.4g}" if pt["feasible"] else "infeasible",
                          pt.get("pattern", ""), *sp)
        console.print(table)
        return console.print("wrote " + ", ".join(res["files"]))
    plans = (solver.solve_many(solutions, min_distance, speedup=speedup, **kw) if solutions > 1 else
             [solver.solve(speedup=speedup, strategy=strategy, **kw)])
    paths = [str(solver.plan_path(p.header.model.id, out, rank)) for rank, p in enumerate(plans, 1)]
    if as_json:
        return _emit_json([{**to_json(p), "path": path} for p, path in zip(plans, paths)] if solutions > 1 else
                          {**to_json(plans[0]), "path": paths[0]})
    for plan, path in zip(plans, paths):
        s, pred = plan.solver, plan.predicted
        gap = "-" if s.get("mip_gap") is None else f"{s['mip_gap']:.2g}"
        table = Table(title=f"{plan.pattern}  loss {plan.objective:.4g}  ({s['name']}: {s['status']}, "
                            f"{s['seconds'] * 1000:.0f} ms, gap {gap})")
        for col in ("layer", "operator", "loss added", *(f"saved ms {w}" for w in pred)):
            table.add_column(col, justify="right")
        for row in s["per_layer"]:
            table.add_row(str(row["layer"]), row["candidate"], f"{row['loss']:.4g}",
                          *(_ms(v) for v in row["saved_ms"].values()))
        table.add_row("", "predicted", "", *(f"{v['latency_ms']:.3f} ms ({v['speedup']:.2f}x)" for v in pred.values()))
        console.print(table)
        console.print(f"wrote {path}")


@app.command()
def bench(target: Annotated[str, typer.Argument(help="A built model directory, or a plan JSON (timed with random weights).")],
          vs: Annotated[Optional[str], typer.Option("--vs", help="Teacher to compare with (default: the plan's).")] = None,
          workload: Annotated[Optional[list[str]], typer.Option(
              help="Workload spec or name (default: those the plan predicts); repeatable.")] = None,
          device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu", image_tokens: ImageTokensOpt = 0,
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
    table = Table(title=f"{target} vs teacher on {device}")
    for col in ("workload", "teacher ms", "model ms", "measured", "predicted", "error %"):
        table.add_column(col, justify="right")
    for r in rows:
        pred = "-" if r["predicted_speedup"] is None else f"{r['predicted_speedup']:.2f}x"
        err_ = "-" if r["error_pct"] is None else f"{r['error_pct']:+.1f}"
        table.add_row(r["workload"], _ms(r["teacher_ms"]), _ms(r["model_ms"]), f"{r['measured_speedup']:.2f}x", pred, err_)
    console.print(table)


def _bench_generate(target, device, context, new_tokens, batch, seed, as_json):
    from .speedup import bench_generate

    with _progress("generate") as tick:
        rows = bench_generate(target, contexts=context, new_tokens=new_tokens, batch_size=batch, device=device,
                              seed=seed, progress=tick)
    if as_json:
        return _emit_json(rows)
    table = Table(title=f"{target}: model.generate on {device}, batch {batch}, {new_tokens} new tokens "
                        f"(stock teacher: {rows[0]['stock_mode']} cache)")
    for col in ("context", "TTFT ms", "TPOT ms", "tokens/s", "all-gqa TPOT", "stock TPOT", "TPOT vs all-gqa",
                "TPOT vs stock", "predicted"):
        table.add_column(col, justify="right")
    for r in rows:
        pred = "-" if r["predicted_tpot_speedup"] is None else f"{r['predicted_tpot_speedup']:.2f}x"
        ratios = ["-" if r[f"tpot_speedup_vs_{ref}"] is None else f"{r[f'tpot_speedup_vs_{ref}']:.2f}x"
                  for ref in ("all-gqa", "stock")]
        table.add_row(str(r["context"]), _ms(r["model_ttft_ms"]), _ms(r["model_tpot_ms"]),
                      f"{r['model_tokens_per_s']:.1f}", _ms(r["all-gqa_tpot_ms"]), _ms(r["stock_tpot_ms"]), *ratios, pred)
    console.print(table)


@app.command()
def demo(out: Annotated[str, typer.Option("--out", "-o", help="Report folder (replaced if it holds an earlier demo).")]
         = "demo_report", seed: SeedOpt = 0):
    """The whole pipeline on the embedded teacher on CPU: profile, score, solve, build, bench, report."""
    from .demo import demo as run_demo

    with _progress("mosaic demo") as tick:
        path = run_demo(out=out, seed=seed, progress=tick)
    console.print(f"wrote {path / 'report.md'} (plots: sensitivity.png, pareto.png, plans.png)")


@app.command()
def score(teacher: ModelOpt = "tiny",
          data: Annotated[Optional[str], typer.Option(
              help="A .txt, .jsonl or .parquet file (chat rows may hold images for a VLM teacher), or 'self' "
                   "(default: tiny's calibration.txt, held-out text with recall; else self).")] = None,
          ops: Annotated[Optional[str], typer.Option(help="Candidates, e.g. gqa,swa:window=128,gdn (default: all).")]
          = None,
          tokens: Annotated[Optional[int], typer.Option(
              help="Calibration tokens scored (default 8192, at least two windows).")] = None,
          seq_len: Annotated[Optional[int], typer.Option(
              "--seq-len", help="Tokens per window (default 512, or twice the largest SWA window).")] = None,
          align_steps: Annotated[Optional[int], typer.Option(
              "--align-steps", help="Local alignment steps of gdn/kda/mla (default 40; 0: the raw init).")] = None,
          out: OutOpt = None,
          resume: Annotated[bool, typer.Option(help="Keep finished items that still match.")] = False,
          device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
          device_map: Annotated[Optional[str], typer.Option(help="e.g. auto: spread a large teacher over GPUs.")]
          = None,
          seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Stage 2: KL to the teacher of every (layer, operator) swap, after local alignment (torchrun splits items)."""
    import time

    from rich import box
    from rich.text import Text

    from . import scorer
    from .schema import to_json

    rank0, start = int(os.environ.get("RANK", "0")) == 0, time.perf_counter()
    with _progress("scoring") if rank0 else contextlib.nullcontext() as tick:
        table = scorer.score(teacher, data=data, ops=ops, tokens=tokens, seq_len=seq_len, align_steps=align_steps,
                             out=out, resume=resume, seed=seed, device=device, device_map=device_map, progress=tick)
    if not rank0:
        return None
    path, c, seconds = scorer.table_path(teacher, out), table.data["cost"], time.perf_counter() - start
    library = scorer.library_path(path)
    if as_json:
        return _emit_json({**to_json(table), "path": str(path), "seconds": seconds, "library": str(library)
                           if library.is_file() else None, "block_influence_vs_drop": scorer.proxy_agreement(table)})
    cands = list(dict.fromkeys(e.candidate for e in table.entries))
    cell = {(e.layer, e.candidate): e.kl for e in table.entries}
    top = max(cell.values()) or 1.0
    rho = scorer.proxy_agreement(table)
    heat = Table(title=f"KL(teacher || swapped), 1e-3 nats/token: {table.header.model.id}, {table.data['tokens']} "
                       f"tokens of {table.data['source']}", caption=f"work {c['done_full_forwards']:.1f} full-forward "
                       f"equivalents vs {c['naive_full_forwards']:.1f} naive ({c['ratio']:.0%}); {seconds:.0f} s"
                       + ("" if rho is None else f"\nBI (block influence) vs drop KL, rank correlation {rho:.2f}"),
                 box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("layer", *(str(k).replace("window=", "").replace("rank=", "") for k in cands), "BI"):
        heat.add_column(col, justify="right")
    bi = scorer.block_influence(table)
    for layer in sorted({e.layer for e in table.entries}):
        shade = [f"on color({232 + round(12 * (cell[layer, k] / top) ** 0.5)})" for k in cands]
        milli = [1e3 * cell[layer, k] for k in cands]
        heat.add_row(str(layer), *(Text(f"{m:.3g}" if m < 1e3 else f"{m:.0f}", style=s) for m, s in zip(milli, shade)),
                     f"{bi.get(layer, float('nan')):.2f}")
    console.print(heat)
    console.print(f"wrote {path}" + (f" and {library}" if library.is_file() else ""))


def _fail(message: str, code: int) -> int:
    # plain write, not rich: a known error must stay on one line whatever the terminal width
    sys.stderr.write(f"error: {message}\n")
    return code


def main(argv=None) -> int:
    """Run the CLI; known errors print one line (MOSAIC_DEBUG=1 prints the traceback)."""
    debug = bool(os.environ.get("MOSAIC_DEBUG"))
    try:
        app(args=argv, prog_name="mosaic", standalone_mode=False)
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
