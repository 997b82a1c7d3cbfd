"""The `mosaic` command: a thin Typer shell over the library; the only module that imports rich."""

from __future__ import annotations

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
out = Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)  # progress bars

# Option types, declared once and shared by every command.
ModelOpt = Annotated[str, typer.Option("--model", "--teacher", "-m",
                                       help="Hub id, local directory, or 'tiny' (the embedded teacher).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in outputs).")]


def _version(value: bool):
    if value:
        out.print(f"mosaic {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                           help="Print the version and exit.")] = None):
    """Hardware-aware architecture search: profile -> score -> solve -> build."""


def _emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


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
    out.print(table)


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
    out.print(table)
    if not all(r["match"] for r in results):
        raise MosaicError("generation with cache differs from generation without cache")


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
