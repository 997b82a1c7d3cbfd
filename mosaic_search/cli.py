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
    """Swap every operator into one layer and check generate() with cache equals without cache."""
    from .surgery import check_swaps

    results = check_swaps(model, layer=layer, new_tokens=tokens)
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
                help="Also time whole models and report predicted vs measured latency.")] = False,
            seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Stage 1: time every candidate mixer as a whole decoder layer on this device."""
    from . import profiler

    with _progress("profiling") as tick:
        prof = profiler.profile(model=model, device=device, ops=ops, workloads=workload, out=out, seed=seed,
                                progress=tick)
    rows = profiler.validate(prof, model=model, device=device, seed=seed) if validate else []
    if as_json:
        return _emit_json({"profile": str(profiler.profile_path(model, prof.header.env, out)), "validation": rows})
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
        for col in ("assignment", "workload", "predicted ms", "measured ms", "error %"):
            v.add_column(col)
        for r in rows:
            v.add_row(r["assignment"], r["workload"], f"{r['predicted_ms']:.3f}", f"{r['measured_ms']:.3f}",
                      f"{r['error_pct']:+.1f}")
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
