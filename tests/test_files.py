"""One writer for every output: atomic, the user's umask on every file, no leftovers after a kill, bad output
locations refused before any work."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WorkTimer

from mosaic_search import builder
from mosaic_search.artifacts import files, frames
from mosaic_search.artifacts.header import Header, save
from mosaic_search.artifacts.plan import LayerPlan
from mosaic_search.artifacts.profile import LatencyProfile
from mosaic_search.artifacts.sensitivity import load_sensitivity
from mosaic_search.cli.plots import plot_frontier
from mosaic_search.errors import UsageError
from mosaic_search.hf.models import load_config, model_ref
from mosaic_search.latency import profiler
from mosaic_search.operators import Candidate
from mosaic_search.quality import scorer
from mosaic_search.quality.library import library_path
from mosaic_search.recovery import distill
from mosaic_search.search import solver

UMASK = 0o027


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _modes(root: Path) -> dict:
    """{relative path: permission bits} of every file and folder under `root`."""
    return {str(p.relative_to(root)) + ("/" if p.is_dir() else ""): stat.S_IMODE(p.lstat().st_mode)
            for p in root.rglob("*")}


@pytest.fixture
def umask():
    """UMASK for the test, the old one restored after."""
    old = os.umask(UMASK)
    yield UMASK
    os.umask(old)


def test_every_file_of_a_chain_has_the_umask_mode(tmp_path, umask):
    """profile -> score (with its per-item parts and library) -> solve, sweep CSV/PNG, a parquet table -> build ->
    distill (with its checkpoint) on `tiny`; the demo's report and plots: test_demo.py."""
    seen = {}
    prof = tmp_path / "plans" / "profile.json"
    profiler.profile("tiny", ops="gqa,mla:rank=16", workloads=["decode:32"], out=prof, timer=WorkTimer(), rounds=1)
    table = tmp_path / "plans" / "sensitivity.json"
    # progress runs after each item: the per-item weights and the item log exist then, not at the end
    scorer.score("tiny", ops="gqa,mla:rank=16", tokens=32, seq_len=16, align_steps=1, out=table,
                 progress=lambda *a: seen.update(_modes(tmp_path)))
    assert any(".library.d/" in name for name in seen) and any("items.jsonl" in name for name in seen)
    plan = solver.solve(str(prof), str(table), speedup=1.01, out=str(tmp_path / "plans" / "plan.json"))
    front = solver.sweep("1.01:1.05:0.02", reserve=(".png",), profile=str(prof), scores=str(table),
                         out=str(tmp_path / "plans" / "pareto.json"))
    plot_frontier(front, front.files[2])
    frames.write_table(load_sensitivity(table), tmp_path / "plans" / "sensitivity.parquet")
    builder.build(tmp_path / "plans" / "plan.json", library=library_path(table), out=tmp_path / "model")
    # progress runs after each step: from the second one on, the checkpoint of the step before exists
    distill.distill(str(tmp_path / "model"), out=tmp_path / "distilled", stage="offpolicy", steps=3, batch_size=1,
                    seq_len=16, quality=False, checkpoint_every=1, progress=lambda *a: seen.update(_modes(tmp_path)))
    assert plan.layers and any(name.startswith("distilled.checkpoint/") for name in seen)
    seen.update(_modes(tmp_path))
    names = set(seen)
    assert {"plans/pareto.csv", "plans/pareto.png", "plans/sensitivity.library.safetensors",
            "plans/sensitivity.library.json", "plans/sensitivity.parquet", "plans/plan.json",
            "model/model.safetensors", "model/config.json", "model/mosaic_plan.json",
            "distilled.checkpoint/state.safetensors", "distilled.checkpoint/state.json",
            "distilled/model.safetensors", "distilled/distill_record.json"} <= names
    want = {name: (0o777 if name.endswith("/") else 0o666) & ~umask for name in seen}
    assert seen == want
    assert not [n for n in names if Path(n).name.startswith(".") and Path(n).name.endswith((".tmp", ".old"))]


def test_a_killed_builds_folder_is_removed_by_the_next_build(tmp_path, umask):
    out = tmp_path / "model"
    pid = _dead_pid()
    left = tmp_path / f".model.{pid}.0123abcd.tmp"  # what `atomic_dir` leaves when its process gets SIGKILL
    (left / "sub").mkdir(parents=True)
    (left / "sub" / "model.safetensors").write_bytes(b"half")
    mine = tmp_path / f".model.{os.getpid()}.0123abcd.tmp"  # a live writer's: not ours to remove
    mine.mkdir()
    other = tmp_path / ".model.backup"  # not our naming
    other.mkdir()
    plan = tmp_path / "plan.json"
    ref = model_ref("tiny", load_config("tiny"))
    save(LayerPlan(Header.new(ref), tuple([Candidate.of("gqa")] * ref.num_hidden_layers), {}, 0.0, {}, {}), plan)
    builder.build(plan, out=out)
    assert not left.exists() and mine.is_dir() and other.is_dir() and (out / "config.json").is_file()


def test_atomic_dir_puts_back_the_old_output_a_kill_left_aside(tmp_path):
    """Killed between atomic_dir's two renames: `out` is gone, the old output waits as `.out.<pid>.<hex>.old`."""
    aside = tmp_path / f".out.{_dead_pid()}.89abcdef.old"
    aside.mkdir()
    (aside / "report.md").write_text("the earlier one\n")
    with pytest.raises(RuntimeError):
        with files.atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("fails")
    assert (tmp_path / "out" / "report.md").read_text() == "the earlier one\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.png"
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    files.write_json(target.with_suffix(".json"), {"b": 1, "a": [2]})
    assert target.with_suffix(".json").read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no writable /dev/shm here")
def test_tmpfs_under_dev_is_a_place_for_output_files():
    assert files.check_output("/dev/shm/mosaic-test/plan.json") == Path("/dev/shm/mosaic-test/plan.json")
    assert files.check_output("/dev/shm/mosaic-test-build", folder=True, overwrite=False).name == "mosaic-test-build"


@pytest.mark.parametrize("where,folder,message", [
    ("/proc/x.json", False, "pseudo file system"),
    ("/sys/kernel/x", True, "pseudo file system"),
    ("/dev/null", False, "pseudo file system"),
    ("afile/x.json", False, "is a file, not a folder"),
    ("afile", True, "is a file, expected a folder"),
    ("adir", False, "is a folder, expected a file name"),
])
def test_check_output_refuses_odd_locations(tmp_path, monkeypatch, where, folder, message):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    Path("adir").mkdir()
    with pytest.raises(UsageError, match=message) as e:
        files.check_output(where, "--out", folder=folder)
    assert str(e.value).startswith(f"--out {where}: ")
    assert sorted(os.listdir(tmp_path)) == ["adir", "afile"]  # the probe is gone too


def test_check_output_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch):
    real = Path.touch

    def read_only(self, *a, **kw):  # root writes anywhere chmod allows, so fake a read-only mount
        if self.parent == tmp_path / "ro":
            raise OSError(30, "Read-only file system")
        return real(self, *a, **kw)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(Path, "touch", read_only)
    with pytest.raises(UsageError, match=r"out .*ro/x.json: cannot write there \(Read-only file system\)"):
        files.check_output(tmp_path / "ro" / "x.json")
    assert files.check_output(tmp_path / "new" / "deeper" / "x.json") == tmp_path / "new" / "deeper" / "x.json"
    assert not (tmp_path / "new").exists()


def test_read_text_refuses_binary_and_missing_files(tmp_path):
    (tmp_path / "x.json").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(UsageError, match=r"--plan .*x.json: not UTF-8 text \(byte 0 is 0x89\)"):
        files.read_text(tmp_path / "x.json", "--plan ")
    with pytest.raises(UsageError, match="no such file"):
        files.read_text(tmp_path / "y.json")


@pytest.mark.parametrize("out, message", [("", "out: empty path"), (".", "names a folder"),
                                          ("plans/", "names a folder")])
def test_an_output_path_named_like_a_folder_is_refused(out, message):
    with pytest.raises(UsageError, match=message):
        files.output_path(out, "default.json")
    assert files.output_path(None, "default.json") == Path("default.json")
    if out:  # a folder output may be named like one; empty is refused for every output
        assert files.output_path(out, "default", folder=True) == Path(out)
    else:
        with pytest.raises(UsageError, match=message):
            files.output_path(out, "default", folder=True)


def test_an_existing_output_is_replaced_only_by_its_own_kind(tmp_path):
    """A profile or table re-measured replaces its file; a foreign file at --out is never replaced."""
    stranger, mine = tmp_path / "notes.json", tmp_path / "profile.json"
    stranger.write_text("my notes\n")
    mine.write_text('{"kind": "mosaic/latency-profile"}\n')
    with pytest.raises(UsageError, match="exists and is not a mosaic/latency-profile file"):
        files.check_output(stranger, kind=LatencyProfile.kind)
    assert files.check_output(mine, kind=LatencyProfile.kind) == mine
    with pytest.raises(UsageError, match="is a folder, expected a file name"):  # not "pass --overwrite" first
        files.check_output(tmp_path, overwrite=False)


def test_a_folder_written_meanwhile_is_kept_unless_replacing(tmp_path):
    """Two runs to one output: without replace, the one that finishes second keeps the first's folder."""
    out = tmp_path / "model"
    with pytest.raises(UsageError, match="written by another run meanwhile"):
        with files.atomic_dir(out, replace=False) as tmp:
            (tmp / "mine").write_text("second\n")
            out.mkdir()
            (out / "theirs").write_text("first\n")
    assert sorted(p.name for p in out.iterdir()) == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left
    with files.atomic_dir(out) as tmp:
        (tmp / "mine").write_text("third\n")
    assert sorted(p.name for p in out.iterdir()) == ["mine"]


def test_a_claimed_output_refuses_a_second_run_and_is_taken_over_from_a_killed_one(tmp_path, monkeypatch, capsys):
    from mosaic_search.cli import main

    out = tmp_path / "table.json"
    lock = tmp_path / ".table.json.lock"
    with files.claimed(out):
        assert lock.read_text() == str(os.getpid())
        lock.write_text(str(os.getppid()))  # as if a live other run held it
        with pytest.raises(UsageError, match=rf"^out {out}: another run \(pid {os.getppid()}\) is writing it"):
            with files.claimed(out):
                pass
        # the CLI: one line, exit 2, before loading anything
        assert main(["score", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {out}: another run" in err
        lock.write_text(str(os.getpid()))
    assert not lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # a killed run's claim
    with files.claimed(out):
        assert lock.read_text() == str(os.getpid())
    assert not out.exists()
