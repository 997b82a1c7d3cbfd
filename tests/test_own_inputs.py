"""No output of a run replaces one of its own inputs, whatever --overwrite says: every command that writes refuses it
before any work, in one line naming the input (exit 2), and writes nothing. Paths compare as written and resolved."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from test_solver import make, save_pair

from mosaic_search import builder
from mosaic_search.artifacts import files
from mosaic_search.artifacts.plan import PLAN_FILE
from mosaic_search.assets import embedded_dir
from mosaic_search.cli import main
from mosaic_search.errors import UsageError
from mosaic_search.hf.models import resolve
from mosaic_search.quality import refine, scorer
from mosaic_search.recovery import distill
from mosaic_search.search import solver


def _snapshot(root: Path) -> dict:
    """{relative path: bytes} of every file under `root` (symlinks as their target's name)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = os.readlink(p).encode()
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.fixture
def tiny_pair(tmp_path, monkeypatch):
    """A profile and a table for the embedded `tiny` (8 layers), a plan solved on them, in tmp_path (the cwd)."""
    monkeypatch.chdir(tmp_path)
    ref = resolve("tiny").ref
    p, s = save_pair(tmp_path, *make(8, model="tiny", sha=ref.config_sha256, seed=3))
    solver.solve(p, s, speedup=1.2, out="plans/plan.json")
    return Path(p).name, Path(s).name, "plans/plan.json"


def _refused(capsys, argv, message):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err  # after any notes naming inputs found by default
    assert err.endswith(f"error: {message}\n") and err.count("error:") == 1, err


def test_solve_refuses_to_write_over_its_profile_or_table_however_named(tiny_pair, tmp_path, capsys):
    p, s, _ = tiny_pair
    os.symlink(p, "link.json")
    before = _snapshot(tmp_path)
    solve = ["solve", "--speedup", "1.2", "--overwrite"]
    for given_p, given_s, out, what, shown in (
            (p, s, p, "--profile", p), (p, f"./{s}", s, "--scores", s), (p, s, "link.json", "--profile", p),
            ("link.json", s, p, "--profile", "link.json"), (p, f"../{tmp_path.name}/{s}", s, "--scores",
                                                             f"../{tmp_path.name}/{s}")):
        _refused(capsys, solve + ["--profile", given_p, "--scores", given_s, "--out", out],
                 f"--out {out}: would replace the {what} input of this run ({shown}); choose another --out")
    # every file a sweep or several plans write counts; so do inputs found by default (no --profile / --scores)
    _refused(capsys, ["solve", "--profile", p, "--scores", s, "--sweep", "1.1:1.2:0.1", "--out", s, "--overwrite"],
             f"--out {s}: would replace the --scores input of this run ({s}); choose another --out")
    Path("run-2.json").write_bytes(Path(p).read_bytes())  # the second of `--solutions 2 --out run.json`
    _refused(capsys, ["solve", "--profile", "run-2.json", "--scores", s, "--speedup", "1.2", "--solutions", "2",
                      "--out", "run.json", "--overwrite"],
             "--out run-2.json: would replace the --profile input of this run (run-2.json); choose another --out")
    os.remove("run-2.json")
    os.makedirs("profiles")
    os.makedirs("layer_plans/tiny")
    os.replace(p, f"profiles/{p}")
    os.replace(s, f"layer_plans/tiny/{s}")
    _refused(capsys, ["solve", "--speedup", "1.2", "--out", f"layer_plans/tiny/{s}", "--overwrite"],
             f"--out layer_plans/tiny/{s}: would replace the --scores input of this run (layer_plans/tiny/{s}); "
             "choose another --out")
    os.replace(f"profiles/{p}", p)
    os.replace(f"layer_plans/tiny/{s}", s)
    assert _snapshot(tmp_path) == before


def test_the_library_names_the_parameter_and_writes_nothing(tiny_pair, tmp_path):
    p, s, plan = tiny_pair
    before = _snapshot(tmp_path)
    with pytest.raises(UsageError, match=rf"^out {p}: would replace the `profile` input of this run \({p}\)"):
        solver.solve(p, s, speedup=1.2, out=p, overwrite=True)
    with pytest.raises(UsageError, match=rf"^out {s}: would replace the `scores` input"):
        solver.sweep("1.1:1.2:0.1", profile=p, scores=s, out=s, overwrite=True)
    # refine: its plan, record and progress file against its plan, profile and table
    with pytest.raises(UsageError, match=rf"^out {plan}: would replace the `plan` input"):
        refine.refine(p, s, plan=plan, out=plan, overwrite=True)
    with pytest.raises(UsageError, match=rf"^out {p}: would replace the `profile` input"):
        refine.refine(p, s, speedup=1.2, out=p, overwrite=True)
    os.replace(p, "run.search.json")  # the search record of `out` run.json
    with pytest.raises(UsageError, match=r"^out run.search.json: would replace the `profile` input"):
        refine.refine("run.search.json", s, speedup=1.2, out="run.json", overwrite=True)
    os.replace("run.search.json", p)
    assert _snapshot(tmp_path) == before


def test_build_refuses_an_output_folder_that_holds_its_plan(tiny_pair, tmp_path, capsys):
    _, _, plan = tiny_pair
    before = _snapshot(tmp_path)
    _refused(capsys, ["build", plan, "--out", "plans", "--overwrite"],
             f"--out plans: would remove the PLAN input of this run ({plan}), which is inside it; choose another --out")
    _refused(capsys, ["build", plan, "--out", ".", "--overwrite"],
             f"--out .: would remove the PLAN input of this run ({plan}), which is inside it; choose another --out")
    teacher = tmp_path / "teacher"  # a local teacher directory: tiny's own files
    shutil.copytree(embedded_dir("tiny"), teacher)
    before = _snapshot(tmp_path)
    with pytest.raises(UsageError, match=rf"^out {teacher}: would replace the `teacher` input of this run"):
        builder.build(plan, teacher=str(teacher), out=teacher, overwrite=True, allow_stale=True)
    assert _snapshot(tmp_path) == before


def test_distill_refuses_to_write_over_the_model_it_distills(tiny_pair, tmp_path, capsys):
    _, _, plan = tiny_pair
    model = tmp_path / "built"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "mosaic_qwen3"}))
    (model / PLAN_FILE).write_bytes(Path(plan).read_bytes())
    before = _snapshot(tmp_path)
    _refused(capsys, ["distill", "built", "--out", "./built/", "--overwrite", "--steps", "1"],
             "--out built: would replace the MODEL input of this run (built); choose another --out")
    with pytest.raises(UsageError, match=r"^out data.txt: would replace the `data` input"):
        Path("data.txt").write_text("a b c\n")
        before = _snapshot(tmp_path)
        distill.distill("built", data="data.txt", out="data.txt", overwrite=True)
    assert _snapshot(tmp_path) == before


def test_score_and_tables_refuse_their_calibration_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("rows.txt").write_text("hello world\n" * 50)
    Path("rows.parquet").write_bytes(b"PAR1")
    before = _snapshot(tmp_path)
    _refused(capsys, ["score", "--data", "rows.parquet", "--table", "./rows.parquet"],
             "--table rows.parquet: would replace the --data input of this run (rows.parquet); choose another --table")
    with pytest.raises(UsageError, match=r"^out rows.items.jsonl: would replace the `data` input"):
        Path("rows.items.jsonl").write_text("{}\n")
        before = _snapshot(tmp_path)
        scorer.score("tiny", data="rows.items.jsonl", out="rows.json")
    assert _snapshot(tmp_path) == before


def test_check_not_input_compares_written_and_resolved_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("in.json").write_text("{}")
    Path("d").mkdir()
    Path("d/x.json").write_text("{}")
    os.symlink("d", "dlink")
    files.check_not_input(["out.json", "d/y.json", "d2"], {"profile": "in.json", "plan": "d/x.json", "model": "tiny",
                                                           "data": None})
    for outputs, inputs, problem in (
            (["in.json"], {"profile": "./in.json"}, "would replace the `profile` input of this run (./in.json)"),
            ([tmp_path / "in.json"], {"profile": "in.json"}, "would replace the `profile`"),
            (["dlink/x.json"], {"plan": "d/x.json"}, "would replace the `plan` input of this run (d/x.json)"),
            (["dlink"], {"plan": "d/x.json"}, "would remove the `plan` input of this run (d/x.json), which is inside"),
            (["d"], {"plan": "dlink/x.json"}, "would remove the `plan` input")):
        with pytest.raises(UsageError, match="^" + re.escape(f"out {outputs[0]}: {problem}")):
            files.check_not_input(outputs, inputs)
