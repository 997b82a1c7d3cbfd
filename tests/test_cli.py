"""The CLI shell: help without torch, version, ops, one-line errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mosaic_search import __version__
from mosaic_search.cli import main
from mosaic_search.operators import REGISTRY, Candidate


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mosaic_search", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_help_does_not_import_torch():
    code = ("import sys; from mosaic_search.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('clean')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "clean" in r.stdout, r.stderr
    assert "profile" in r.stdout or "ops" in r.stdout


def test_help_lists_the_commands_in_pipeline_order(capsys):
    assert main(["--help"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.split("Commands:")[1].splitlines() if line.strip()]
    pipeline = ["profile", "score", "solve", "refine", "build", "distill", "eval", "bench", "demo", "ops", "check"]
    assert set(listed) <= set(pipeline), "a new command: give it its place in the pipeline order"
    assert listed == [c for c in pipeline if c in listed]


def test_library_text_is_printed_as_is_at_80_columns(monkeypatch, capsys):
    """rich markup is off: an install hint keeps its [cuda] and stays on one line."""
    from mosaic_search.operators import OperatorSpec

    hint = "fla is not installed (pip install 'mosaic-search[cuda]')"
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(OperatorSpec, "fast_path", lambda self: (False, hint) if self.requires else (True, ""))
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    assert hint in out and "…" not in out and "sliding_attention" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_ops_lists_every_operator():
    r = _run("ops", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["op"] for row in rows] == list(REGISTRY)
    assert {"gqa", "swa", "gdn", "kda", "mla", "none", "drop"} <= {row["op"] for row in rows}
    gdn = next(row for row in rows if row["op"] == "gdn")
    assert gdn["layer_type"] == "linear_attention" and gdn["fast_path"] is False and gdn["fast_path_note"]
    axes = {row["op"]: (row["axis"], row["params"]) for row in rows}
    assert axes["mlp"] == ("mlp", ["width"]) and axes["nomlp"] == ("mlp", [])
    assert axes["gqa"] == ("mixer", ["kv_heads?"]) and axes["swa"] == ("mixer", ["window", "kv_heads?"])
    table = _run("ops", env={"NO_COLOR": "1", "COLUMNS": "200"})
    assert table.returncode == 0 and all(op in table.stdout for op in REGISTRY)


def test_unknown_command_is_a_usage_error():
    r = _run("frobnicate")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_known_errors_are_one_line_and_debug_shows_traceback():
    r = _run("check", "--model", "no-such-org/no-such-model", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pass a local model directory" in lines[0] and "Traceback" not in r.stderr
    r = _run("check", "--model", "no-such-org/no-such-model", env={"HF_HUB_OFFLINE": "1", "MOSAIC_DEBUG": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr


@pytest.mark.parametrize("bad", [["check", "--layer", "99"], ["check", "--layer", "x"]])
def test_bad_values_exit_2(bad):
    r = _run(*bad)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_check_runs_every_operator_on_tiny():
    r = _run("check", "--json", "--tokens", "4")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    checked = [Candidate.parse(row["candidate"]) for row in rows]
    # every registered operator, each MLP candidate as a layer choice under the teacher's gqa
    assert {c.op for c in checked} | {c.mlp_candidate.op for c in checked if c.mlp} == set(REGISTRY)
    assert all(c.op == "gqa" for c in checked if c.mlp)
    assert all(row["match"] for row in rows)


# ---- one --ops grammar -----------------------------------------------------------------------------

class _Reached(Exception):
    """Raised where a command would start its real work: the options were accepted."""


@pytest.mark.parametrize("ops", ["gqa,swa,gdn,none", "swa:window=64,mla", "gqa,swa,swa:window=128,mla:rank=16"])
@pytest.mark.parametrize("command", ["profile", "score", "solve"])
def test_every_command_takes_the_same_ops_strings(command, ops, monkeypatch, tmp_path, capsys):
    """A bare swa / mla means its default params for this model wherever --ops is taken."""
    from mosaic_search import operators
    from mosaic_search.hf import surgery
    from mosaic_search.hf.models import load_config
    from mosaic_search.latency import profiler
    from mosaic_search.quality import scorer

    dims = surgery.dims_of(load_config("tiny"))
    want = operators.parse_candidates(ops, dims)
    if "swa" in ops.split(","):
        assert {operators.Candidate.of("swa", p) for p in REGISTRY["swa"].default_params(dims)} <= set(want)
    if command in ("profile", "score"):
        module = profiler if command == "profile" else scorer
        seen = []
        # both stages parse --ops in surgery.candidates, the one place that adds the teacher's own operators
        monkeypatch.setattr(surgery, "parse_candidates", lambda o, d: seen.append(operators.parse_candidates(o, d))
                            or seen[-1])
        monkeypatch.setattr(module, "load_bench" if command == "profile" else "_load_teacher",
                            lambda *a, **k: (_ for _ in ()).throw(_Reached()))
        extra = ["--data", "self"] if command == "score" else []
        assert main([command, "--ops", ops, "--out", str(tmp_path / "o.json"), *extra]) == 1
        assert "_Reached" in capsys.readouterr().err and [c for c in seen[0] if c.op != "gqa"] == \
            [c for c in want if c.op != "gqa"]
        return
    from test_solver import make, save_pair  # a profile and a table holding every candidate named above

    prof, sens = make(3, cands=list(dict.fromkeys([operators.Candidate.of("gqa"), *want])))
    p, s = save_pair(tmp_path, prof, sens)
    assert main(["solve", "--profile", p, "--scores", s, "--ops", ops, "--speedup", "1.0",
                 "--out", str(tmp_path / "plan.json"), "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["constraints"]["ops"]
