"""What `mosaic score` says is what happened: the library it names is the one written with the table (an earlier
run's library left beside a re-scored table is named as kept), and windows the calibration (or `eval`'s held-out)
sequences cannot tell from full attention are named in a warning."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mosaic_search.artifacts.header import sha256_file
from mosaic_search.cli import main
from mosaic_search.quality.library import library_of, library_path

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = ["--tokens", "32", "--seq-len", "16"]


def test_a_library_left_by_an_earlier_run_is_named_as_kept_not_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich reads it at every print: no path folded across lines
    out = tmp_path / "s.json"
    lib = library_path(out)
    assert main(["score", "--ops", "gqa,mla:rank=16", "--align-steps", "1", "--out", str(out), *SHORT]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"wrote {out} and {lib}")
    assert library_of(out) == lib
    written = lib.read_bytes()
    # no candidate of this run needs aligned weights: the table is replaced, the earlier library stays as it was
    assert main(["score", "--ops", "gqa,none", "--out", str(out), *SHORT]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"wrote {out} kept {lib}: an earlier run's library, for another table" in shown
    assert lib.read_bytes() == written and library_of(out) is None
    assert main(["score", "--ops", "gqa,none", "--out", str(out), "--json", *SHORT]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["library"] is None and doc["kept_library"] == str(lib)
    assert json.loads(lib.with_suffix(".json").read_text())["scores_sha256"] != sha256_file(out)


def test_windows_as_long_as_the_sequences_are_named_in_a_warning(tmp_path, capsys):
    out = tmp_path / "w.json"
    assert main(["score", "--ops", "gqa,swa:window=8,swa:window=16,swa:window=64", "--out", str(out), *SHORT]) == 0
    err = capsys.readouterr().err
    assert ("warning: windows of 16 tokens cannot tell swa:window=16, swa:window=64 from full attention (a window as "
            "long as the sequence sees all of it): each scores as gqa does; score on longer sequences (seq_len above "
            "the largest window) to measure them\n") in err
    entries = json.loads(out.read_text())["entries"]
    assert {e["kl"] for e in entries if e["params"].get("window") in (16, 64)} == {0.0}  # what the warning says
    assert all(e["kl"] > 0 for e in entries if e["params"].get("window") == 8)
    assert main(["score", "--ops", "gqa,swa:window=8", "--out", str(out), *SHORT]) == 0
    assert "warning" not in capsys.readouterr().err


def test_eval_names_the_windows_its_held_out_sequences_cannot_tell_from_full_attention(tmp_path, capsys):
    from test_solver import make, save_pair

    from mosaic_search.artifacts.header import save
    from mosaic_search.artifacts.plan import PLAN_FILE
    from mosaic_search.hf.models import resolve
    from mosaic_search.operators import Candidate
    from mosaic_search.quality import evaluation
    from mosaic_search.search import solver

    p, s = save_pair(tmp_path, *make(8, model="tiny", sha=resolve("tiny").ref.config_sha256))
    plan = solver.solve(p, s, speedup=1.1, write=False)
    layers = [Candidate.parse(c) for c in ["gqa", "swa:window=512", "swa:window=2048", "swa:window=2048", "gdn",
                                           "gqa", "gqa", "gqa"]]
    (tmp_path / "m").mkdir()
    save(dataclasses.replace(plan, layers=tuple(layers)), tmp_path / "m" / PLAN_FILE)
    capsys.readouterr()
    evaluation.warn_if_blind(str(tmp_path / "m"), "tiny", 1024)
    assert capsys.readouterr().err == (
        "warning: held-out windows of 1024 tokens cannot tell swa:window=2048 from full attention (a window as long as "
        "the sequence sees all of it): the numbers say nothing of what those layers lose on longer contexts; evaluate "
        "on longer sequences (seq_len above the largest window)\n")
    evaluation.warn_if_blind(str(tmp_path / "m"), "tiny", 4096)
    assert capsys.readouterr().err == ""
