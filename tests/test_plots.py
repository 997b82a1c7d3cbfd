"""The plots: each writes a PNG from its record, atomically, and matplotlib loads only when one is drawn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_solver import make

from mosaic_search.cli import plots
from mosaic_search.search import solver

PNG = b"\x89PNG\r\n\x1a\n"


def test_each_plot_writes_a_png_and_nothing_else(tmp_path):
    prof, sens = make(4)
    plans = {t: solver.solve(prof, sens, speedup=t, write=False) for t in (1.2, 1.5)}
    front = solver.sweep("1.1:1.5:0.2", profile=prof, scores=sens, write=False)
    wrote = [plots.plot_sensitivity(sens, tmp_path / "s.png"),
             plots.plot_savings(plans, prof.workloads[0].name, tmp_path / "p.png"),
             plots.plot_frontier(front, tmp_path / "f.png", measured={"measured": [(1.1, 0.5), (1.3, 0.7)]})]
    assert wrote == [tmp_path / n for n in ("s.png", "p.png", "f.png")]
    assert all(path.read_bytes()[:8] == PNG for path in wrote)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "p.png", "s.png"]  # no temporary file left


def test_matplotlib_loads_only_when_a_plot_is_drawn():
    code = ("import sys, mosaic_search.cli.plots, mosaic_search.search.solver, mosaic_search.demo\n"
            "sys.exit('matplotlib imported' if 'matplotlib' in sys.modules else 0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert run.returncode == 0, run.stderr
