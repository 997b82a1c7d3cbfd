"""The command line's defaults are the library's: every option left out forwards the default of the library
parameter it feeds, for every command (a changed library default cannot stay old on the command line)."""

from __future__ import annotations

import inspect

import pytest
from test_cli_forwarding import artifacts  # noqa: F401  (the fixture: a profile, table, plan, sweep)

from mosaic_search import builder
from mosaic_search import demo as demo_mod
from mosaic_search.artifacts.distill_record import RECORD_FILE, DistillRecord
from mosaic_search.artifacts.header import Header, save
from mosaic_search.cli import app, main
from mosaic_search.latency import bench as bench_mod
from mosaic_search.latency import profiler
from mosaic_search.quality import evaluation, scorer
from mosaic_search.recovery import distill as distill_mod
from mosaic_search.search import problem, solver


def _defaults(*functions) -> dict:
    return {k: p.default for fn in functions for k, p in inspect.signature(fn).parameters.items()
            if p.default is not p.empty}


@pytest.fixture(scope="module")
def results(artifacts, tmp_path_factory):  # noqa: F811  (the fixture, asked for by name)
    """What each library function returns to the views, small and in memory."""
    prof, sens, plan, front = artifacts
    distilled = tmp_path_factory.mktemp("d")
    save(DistillRecord(Header.new(prof.header.model), {"teacher": "tiny"}, 0, ({"step": 1, "stage": "offpolicy",
                                                                              "loss": 1.0},),
                       {"before": None, "after": None}), distilled / RECORD_FILE)
    evaluated = {"model": "m", "teacher": "tiny", "kl": 0.5, "heldout_loss": 1.0, "recall": {},
                 "eval": {"source": "s", "windows": 3, "seq_len": 99, "probes": 0}}
    return {"profile": prof, "score": sens, "solve": plan, "sweep": front, "solve_many": [plan], "build": distilled,
            "distill": distilled, "evaluate": evaluated, "bench": [], "demo": distilled,
            "bench_generate": [{"context": 32, "stock_mode": "static"}],
            "check_generation": [{"candidate": "gqa", "match": True, "tokens": [1]}]}


# (argv with only what is required, the module and function it calls, the functions whose defaults apply)
CASES = [
    (["profile"], profiler, "profile", (profiler.profile,)),
    (["score"], scorer, "score", (scorer.score,)),
    (["solve"], solver, "solve", (problem.prepare, solver.solve)),
    (["solve", "--sweep", "1.1:1.2:0.1"], solver, "sweep", (problem.prepare, solver.sweep)),
    (["solve", "--solutions", "2"], solver, "solve_many", (problem.prepare, solver.solve_many)),
    (["build", "plan.json"], builder, "build", (builder.build,)),
    (["distill", "m"], distill_mod, "distill", (distill_mod.distill,)),
    (["eval", "m"], evaluation, "evaluate", (evaluation.evaluate,)),
    (["bench", "t"], bench_mod, "bench", (bench_mod.bench,)),
    (["bench", "t", "--generate"], bench_mod, "bench_generate", (bench_mod.bench_generate,)),
    (["demo"], demo_mod, "demo", (demo_mod.demo,)),
    (["check"], builder, "check_generation", (builder.check_generation,)),
]


@pytest.mark.parametrize("argv, module, name, functions", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_every_option_left_out_forwards_the_library_default(argv, module, name, functions, results, monkeypatch,
                                                            capsys):
    monkeypatch.delenv("RANK", raising=False)
    seen = {}

    def fake(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        return results[name]

    monkeypatch.setattr(module, name, fake)
    as_json = [] if argv[0] == "demo" else ["--json"]  # the views need less of a fake result
    assert main(argv + as_json) == 0, capsys.readouterr().err
    want = _defaults(*functions)
    params = list(inspect.signature(functions[-1]).parameters)  # the function called
    # positional: the required argument (no default), or solve_many's two numbers
    forwarded = {**dict(zip(params, seen["args"])), **seen["kwargs"]}
    forwarded.pop("progress", None)  # the CLI's progress bar, not an option
    compared = {k: v for k, v in forwarded.items() if k in want}
    if name == "solve_many":
        compared.pop("solutions")  # given: --solutions 2
    elif name == "sweep":
        compared.pop("speedups")  # given: --sweep
    assert compared, "nothing compared"
    assert compared == {k: want[k] for k in compared}
    assert {k for k in forwarded if k not in want} <= {"model", "model_id", "plan", "target", "model_dir"}


def test_refine_options_default_to_the_library():
    """refine reads its result back from disk, so its options are compared where typer declares them."""
    import typer.main

    from mosaic_search.quality import refine as refine_mod

    command = typer.main.get_command(app).commands["refine"]
    want = _defaults(problem.prepare, refine_mod.refine)
    library_name = {"workload": "workloads", "pin": "pins", "time_limit": "time_limit_s"}
    compared = {p.name: p.default for p in command.params if library_name.get(p.name, p.name) in want}
    assert len(compared) >= 25
    assert compared == {name: want[library_name.get(name, name)] for name in compared}


def test_every_command_is_covered():
    assert {c.name or c.callback.__name__ for c in app.registered_commands} - {"ops", "refine"} <= \
        {argv[0] for argv, *_ in CASES}
