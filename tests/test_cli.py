"""The CLI shell: help without torch, version, ops, one-line errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mosaic_search import __version__
from mosaic_search.cli import main
from mosaic_search.operators import REGISTRY


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
    table = _run("ops", env={"NO_COLOR": "1", "COLUMNS": "200"})
    assert table.returncode == 0 and all(op in table.stdout for op in REGISTRY)


def test_unknown_command_is_a_usage_error():
    r = _run("frobnicate")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


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


def test_check_runs_every_operator_on_tiny():
    r = _run("check", "--json", "--tokens", "4")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {row["candidate"].split(":")[0] for row in rows} == set(REGISTRY)
    assert all(row["match"] for row in rows)
