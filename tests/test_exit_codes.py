"""Exit codes tell the truth: Ctrl-C is 130 with what was kept, binary inputs and unwritable outputs are usage errors
(exit 2, one line, before any work), nonsensical numbers are refused naming their flag; progress without a terminal
and the profile's timing spread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from test_solver import make, save_pair

from mosaic_search import builder
from mosaic_search.artifacts.header import Header, ModelRef, save
from mosaic_search.artifacts.plan import LayerPlan
from mosaic_search.artifacts.profile import LatencyProfile, ProfileEntry, Workload, parse_workload
from mosaic_search.cli import main, terminal
from mosaic_search.errors import EXIT_INTERRUPTED, UsageError
from mosaic_search.hf.models import load_config, model_ref
from mosaic_search.latency import profiler
from mosaic_search.operators import Candidate
from mosaic_search.quality import scorer
from mosaic_search.search import solver

BINARY = b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _err(capsys) -> str:
    """The stderr of the last command, which must be exactly one line."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _plan(path: Path, layers=None) -> str:
    ref = model_ref("tiny", load_config("tiny"))
    layers = layers or [Candidate.of("gqa")] * ref.num_hidden_layers
    save(LayerPlan(Header.new(ref), tuple(layers), {}, 0.0, {}, {}), path)
    return str(path)


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# ---- Ctrl-C --------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,target,kept", [
    (["profile", "--out", "p.json"], (profiler, "profile"), "nothing was written: a profile is saved only once complete"),
    (["build", "plan.json"], (builder, "build"), "nothing was written: a build replaces its output folder only once"),
    (["score", "--out", "s.json"], (scorer, "score"), "nothing was written (no item finished yet)"),
    (["solve", "--speedup", "1.2"], (solver, "solve"), "interrupted; nothing was written"),  # typer's own 130
])
def test_ctrl_c_exits_130_saying_what_was_kept(monkeypatch, capsys, argv, target, kept):
    monkeypatch.setattr(*target, _interrupt)
    assert main(argv) == EXIT_INTERRUPTED
    err = _err(capsys)
    assert err.startswith("error: interrupted; ") and kept in err


def test_ctrl_c_during_score_names_the_finished_items_once_there_are_some(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.items.jsonl").write_text('{"layer": 0}\n')  # one finished item's log line
    monkeypatch.setattr(scorer, "score", _interrupt)
    assert main(["score", "--out", "s.json"]) == EXIT_INTERRUPTED
    assert "the finished items are kept beside s.json; --resume continues" in _err(capsys)


@pytest.mark.slow
def test_a_real_sigint_during_score_keeps_the_finished_items_for_resume(tmp_path):
    out = tmp_path / "s.json"
    args = ["score", "--ops", "gqa,none", "--tokens", "32", "--seq-len", "16", "--out", str(out)]
    code = textwrap.dedent(f"""
        import os, signal, sys
        from mosaic_search.quality import library
        from mosaic_search.cli import main
        # Ctrl-C as a terminal delivers it, even when this suite runs in the background (where the shell starts
        # children with SIGINT ignored, and Python then installs no KeyboardInterrupt handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        real, n = library.append_item, [0]
        def append(path, row):  # Ctrl-C right after the second finished item
            real(path, row)
            n[0] += 1
            if n[0] == 2:
                os.kill(os.getpid(), signal.SIGINT)
        library.append_item = append
        sys.exit(main({args!r}))
    """)
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    assert r.stderr.splitlines()[-1] == f"error: interrupted; the finished items are kept beside {out}; --resume continues"
    assert len(out.with_suffix(".items.jsonl").read_text().splitlines()) == 2 and not out.exists()
    seen = []
    scorer.score("tiny", ops="gqa,none", tokens=32, seq_len=16, out=out, resume=True,
                 progress=lambda done, total, what: seen.append(total))
    assert seen[-1] == 8 - 2 and out.is_file()  # 8 layers x none, 2 kept


# ---- binary input ---------------------------------------------------------------------------------

def test_binary_input_files_are_one_line_usage_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("garbage.json", "garbage.jsonl", "garbage.safetensors"):
        Path(name).write_bytes(BINARY)
    prof, sens = make(4, seed=3)
    p, s = save_pair(tmp_path, prof, sens)
    plan = _plan(tmp_path / "plan.json")
    cases = [["build", "garbage.json"], ["build", plan, "--library", "garbage.safetensors"],
             ["score", "--data", "garbage.jsonl", "--out", "s.json"],
             ["solve", "--profile", "garbage.json", "--scores", s, "--speedup", "1.2"],
             ["solve", "--profile", p, "--scores", "garbage.json", "--speedup", "1.2"],
             ["bench", "garbage.json"]]
    for argv in cases:
        assert main(argv) == 2, argv
        assert "not UTF-8 text" in _err(capsys)
    assert sorted(os.listdir(tmp_path)) == sorted(["garbage.json", "garbage.jsonl", "garbage.safetensors",
                                                   Path(p).name, Path(s).name, "plan.json"])


# ---- output locations, before any work ------------------------------------------------------------

def test_unwritable_outputs_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    plan = _plan(tmp_path / "plan.json")
    prof, sens = make(4, seed=4)
    p, s = save_pair(tmp_path, prof, sens)

    def work(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    for module, name in ((profiler, "load_bench"), (scorer, "_load_teacher"), (builder, "load_model"),
                         (solver, "run_mip"), (solver, "_assign")):
        monkeypatch.setattr(module, name, work)
    cases = [(["profile", "--out", "/proc/p.json"], "--out /proc/p.json: not a place for output files"),
             (["profile", "--out", "afile/p.json"], "afile is a file, not a folder"),
             (["score", "--out", "afile/s.json"], "afile is a file, not a folder"),
             (["build", plan, "--out", "/proc/model"], "--out /proc/model: not a place"),
             (["build", plan, "--out", "afile/model"], "afile is a file, not a folder"),
             (["solve", "--profile", p, "--scores", s, "--speedup", "1.2", "--out", "afile/plan.json"], "afile is a"),
             (["solve", "--profile", p, "--scores", s, "--sweep", "1.1:1.2:0.1", "--out", "/proc/f.json"], "/proc"),
             (["solve", "--profile", p, "--scores", s, "--speedup", "1.2", "--solutions", "2", "--out", "/sys/x.json"],
              "/sys"),
             (["demo", "--out", "afile"], "--out afile: is a file, expected a folder")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _err(capsys), argv
    assert sorted(os.listdir(tmp_path)) == sorted(["afile", "plan.json", Path(p).name, Path(s).name])


# ---- nonsensical numbers ---------------------------------------------------------------------------

def test_nonsensical_numbers_are_refused_naming_their_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    prof, sens = make(4, seed=5)
    p, s = save_pair(tmp_path, prof, sens)
    solve = ["solve", "--profile", p, "--scores", s, "--speedup", "1.2"]
    cases = [(solve + ["--solutions", "0"], "--solutions must be a positive integer, got 0"),
             (solve + ["--solutions", "-2"], "--solutions must be a positive integer, got -2"),
             (solve + ["--min-distance", "0"], "--min-distance 0 needs --solutions 2 or more"),
             (solve + ["--solutions", "2", "--min-distance", "0"], "--min-distance must be within 1..4"),
             (solve + ["--time-limit", "-1"], "--time-limit must be a positive number, got -1.0"),
             (solve + ["--time-limit", "0"], "--time-limit must be a positive number"),
             (solve + ["--cache-batch", "0"], "--cache-batch must be a positive integer, got 0"),
             (solve + ["--max-cache-bytes", "0"], "--max-cache-bytes must be a positive"),
             (solve + ["--pin", "9=gqa"], "--pin 9=gqa: layer 9 is outside 0..3"),
             (["solve", "--profile", p, "--scores", s],
              "give --speedup, --ttft-speedup, --tpot-speedup, --max-cache-bytes or --max-memory"),
             (["solve", "--profile", p, "--scores", s, "--speedup", "0.5"], "--speedup must be at least 1 (a "
                                                                              "speedup over the teacher), got 0.5"),
             (["solve", "--profile", p, "--scores", s, "--tpot-speedup", "0.9"], "--tpot-speedup must be at least 1"),
             (["score", "--device-map", "auto"], "--device-map auto spreads a teacher over GPUs and runs it there, "
                                                 "but device is cpu"),
             (["solve", "--profile", p, "--scores", s, "--sweep", "1:2:0"], '--sweep "1:2:0": need'),
             (["profile", "--ops", "mla:rank=100000"], "mla:rank=100000: rank must be at most "),
             (["score", "--ops", "gqa,mla:rank=100000"], "rank must be at most "),
             (["bench", "x.json", "--generate", "--new-tokens", "0"], "--new-tokens must be 2 or more"),
             (["bench", "x.json", "--generate", "--batch", "0"], "--batch must be 1 or more, got 0"),
             (["check", "--tokens", "0"], "--tokens must be 1 or more"),
             (["profile", "--workload", "prefill:99999999999"], "profiling needs at least ")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _err(capsys), argv
    assert sorted(os.listdir(tmp_path)) == sorted([Path(p).name, Path(s).name])


def test_a_profile_that_cannot_fit_is_refused_naming_need_and_limit():
    """Qwen3-VL-4B in float32 with a paired timer (two copies) on a 24 GiB machine: refused before any allocation,
    naming the need, its parts and the limit; in bfloat16 with one copy and a short workload it fits."""
    from mosaic_search.hf import surgery
    from mosaic_search.hf.models import _config_from_file, shipped_config_path
    from mosaic_search.latency.memory import GIB, check_fits, weight_bytes

    dims = surgery.dims_of(_config_from_file(shipped_config_path("Qwen/Qwen3-VL-4B-Instruct")))
    assert weight_bytes(dims, 4) / GIB == pytest.approx(16.43, abs=0.01)  # 4.41e9 decoder parameters
    # the decode cache: 8 x 98304 tokens x K and V of 1024 x 36 layers x 4 bytes = 216 GiB
    decode = [parse_workload("decode:96k:b8")]
    with pytest.raises(UsageError, match=r"^profiling needs at least 248\.9 GiB \(2 copies of the model: 32\.9 GiB; "
                                         r"workload decode-b8-c96k: 216\.0 GiB\) but cpu has 24\.0 GiB available; "
                                         r"the model alone does not fit"):
        check_fits(dims, decode, 4, 2, "cpu", available=24 * GIB)
    check_fits(dims, [parse_workload("prefill:2k")], 2, 1, "cpu", available=24 * GIB)


def test_a_plan_with_a_rank_above_the_model_is_refused_by_build(tmp_path, capsys):
    n = model_ref("tiny", load_config("tiny")).num_hidden_layers
    plan = _plan(tmp_path / "plan.json", [Candidate.of("gqa")] * (n - 1) + [Candidate.of("mla", {"rank": 4096})])
    assert main(["build", plan, "--no-library", "--out", str(tmp_path / "m")]) == 2
    assert "mla:rank=4096: rank must be at most " in _err(capsys)
    assert sorted(os.listdir(tmp_path)) == ["plan.json"]


# ---- progress without a terminal --------------------------------------------------------------------

def test_progress_without_a_terminal_is_plain_rate_limited_lines(monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(terminal, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    with terminal.progress("scoring") as tick:  # capsys's stderr is no terminal
        for done in range(1, 101):
            now[0] += 0.25  # 100 ticks over 25 s
            tick(done, 100, f"item {done}")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "scoring: 1/100 item 1 (0 s)" and lines[-1] == "scoring: 100/100 item 100 (25 s)"
    assert terminal.PROGRESS_EVERY_S == 5 and len(lines) == 6  # at 0.25 s, then 5.25, 10.25, 15.25, 20.25, and the last


def test_the_demo_announces_every_stage_and_a_silent_stage_still_reports(monkeypatch, capsys):
    """Off a terminal every stage start is printed however soon after the last line; a stage's own progress is
    forwarded under its name; a stage that says nothing for HEARTBEAT_S still gets a line."""
    import time

    from mosaic_search import demo

    now = [100.0]
    monkeypatch.setattr(terminal, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(demo, "HEARTBEAT_S", 0.2)
    with terminal.progress("mosaic demo", every_step=True) as tick:
        stages = demo._Stages(tick, 7)
        try:
            stages.start(2, "solve")
            stages.start(3, "build")  # at the same instant: printed all the same
            stages.start(4, "distill")
            now[0] += 6
            stages.under("tiny-tpot-1.5x")(3, 60, "offpolicy loss 1.2")
            now[0] += 6
            time.sleep(0.6)  # real seconds: the heartbeat's clock
        finally:
            stages.stop()
    lines = capsys.readouterr().err.splitlines()
    assert lines[:4] == ["mosaic demo: 2/7 solve (0 s)", "mosaic demo: 3/7 build (0 s)", "mosaic demo: 4/7 distill (0 s)",
                         "mosaic demo: 4/7 distill: 3/60 tiny-tpot-1.5x: offpolicy loss 1.2 (6 s)"]
    assert lines[4].startswith("mosaic demo: 4/7 distill: 3/60 tiny-tpot-1.5x: offpolicy loss 1.2, still running (")


def test_profile_prints_progress_lines_and_its_timing_spread(tmp_path, monkeypatch, capsys):
    samples = {"quiet": [1.0, 1.01, 0.99, 1.02, 1.0], "busy": [1.0, 2.0, 3.0, 4.0, 5.0]}
    for machine, ms in samples.items():
        monkeypatch.setattr("mosaic_search.latency.timing.default_timer", lambda device: (lambda fn, phase: list(ms)))
        out = tmp_path / f"{machine}.json"
        assert main(["profile", "--ops", "gqa,none", "--workload", "decode:32", "--out", str(out)]) == 0
        got = capsys.readouterr()
        lines = got.err.splitlines()
        progress = [line for line in lines if line.startswith("profiling: ")]
        assert progress and progress[-1].startswith("profiling: 8/8 ")  # 2 rounds x (baseline, fixed, 2 ops)
        warned = [line for line in lines if line.startswith("warning: noisy timings")]
        assert len(warned) == (machine == "busy")
        assert "timing spread, p80/p20 per entry: median" in got.out
    assert "re-run on a quiet machine" in warned[0] and "pin the threads" in warned[0]
    assert main(["profile", "--ops", "gqa,none", "--workload", "decode:32", "--out", str(out), "--json"]) == 0
    spread = json.loads(capsys.readouterr().out)["spread"]
    assert spread["median"] == spread["max"] == pytest.approx(4.0 / 2.0) and spread["entries"] == 2


def test_spread_leaves_out_entries_too_cheap_to_time():
    ref = ModelRef("m", "sha", 2)
    w = Workload("decode-b1-c32", "decode", 1, 32)

    def entry(layer, op, ms, p20, p80):
        return ProfileEntry(layer, Candidate.of(op), w.name, ms, p20, p80, "ok", 0)

    entries = tuple(e for layer in range(2) for e in (
        entry(layer, "gqa", 10.0, 9.0, 11.7), entry(layer, "none", 4.0, 3.8, 4.2),
        entry(layer, "drop", 0.01, 0.001, 0.03)))  # 30x, but a hundredth of a millisecond
    prof = LatencyProfile(Header.new(ref), (w,), {w.name: 22.0}, {w.name: 2.0}, entries, (Candidate.teacher(),) * 2)
    got = profiler.spread(prof)
    assert got == {"median": pytest.approx((1.3 + 4.2 / 3.8) / 2), "max": pytest.approx(1.3), "worst": f"gqa {w.name}",
                   "entries": 2}


def test_a_shared_cpu_is_reported_after_a_measurement(monkeypatch):
    """Contention the spread cannot see (every time slowed alike) is named from the load average, on CPU only."""
    from mosaic_search.latency import timing

    monkeypatch.setattr(timing.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (4.1, 3.0, 2.0))
    assert "busy (load average 4.1 on 2 cores)" in timing.busy_machine("cpu")
    assert timing.busy_machine("cuda") is None
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (2.2, 2.0, 2.0))  # our own two threads
    assert timing.busy_machine("cpu") is None
