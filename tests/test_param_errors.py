"""The library speaks Python and the command line speaks flags: a library call with a bad argument names the
parameter, the same mistake on the command line names the flag (mapped in one place, `cli.commands.FLAGS`), and
notes go through `logging`, printed on stderr by the CLI's handler as they always were."""

from __future__ import annotations

import logging

import pytest

from mosaic_search import builder
from mosaic_search.artifacts import files, frames
from mosaic_search.cli import main
from mosaic_search.cli.commands import flag
from mosaic_search.errors import UsageError, invalid
from mosaic_search.latency import bench
from mosaic_search.quality import scorer
from mosaic_search.quality.library import ItemStore
from mosaic_search.search import solver


def _cases(p, s):
    """(library call, its message, argv, the command line's message) for one mistake each."""
    solve = ["solve", "--profile", p, "--scores", s]
    return [
        (lambda: solver.solve(p, s, speedup=1.2, time_limit_s=-1, write=False),
         "time_limit_s must be a positive number, got -1", solve + ["--speedup", "1.2", "--time-limit", "-1"],
         "--time-limit must be a positive number, got -1.0"),
        (lambda: solver.solve(p, s, speedup=1.2, pins=["9=gqa"], write=False), "pins 9=gqa: layer 9 is outside 0..3",
         solve + ["--speedup", "1.2", "--pin", "9=gqa"], "--pin 9=gqa: layer 9 is outside 0..3"),
        (lambda: solver.solve(p, s, speedup=1.2, max_count=["gdn=x"], write=False),
         "max_count gdn: count must be an integer, got 'x'", solve + ["--speedup", "1.2", "--max", "gdn=x"],
         "--max gdn: count must be an integer, got 'x'"),
        (lambda: solver.solve(p, s, speedup=1.2, cache_context=4096, write=False),
         "`cache_context` and `cache_batch` describe the `max_cache_bytes` bound; give it too",
         solve + ["--speedup", "1.2", "--cache-context", "4096"],
         "--cache-context and --cache-batch describe the --max-cache-bytes bound; give it too"),
        (lambda: solver.sweep("1.1:1.2:0.1", profile=p, scores=s, ttft_speedup=2, write=False),
         "speedups sets the speedup itself; drop `ttft_speedup` and narrow with `workloads` instead",
         solve + ["--sweep", "1.1:1.2:0.1", "--ttft-speedup", "2"],
         "--sweep sets the speedup itself; drop --ttft-speedup and narrow with --workload instead"),
        (lambda: builder.check_generation("tiny", new_tokens=0), "new_tokens must be 1 or more, got 0",
         ["check", "--tokens", "0"], "--tokens must be 1 or more, got 0"),
        (lambda: bench.bench_generate("x.json", batch_size=0), "batch_size must be 1 or more, got 0",
         ["bench", "x.json", "--generate", "--batch", "0"], "--batch must be 1 or more, got 0"),
        (lambda: bench.bench_generate("x.json", new_tokens=1), "new_tokens must be 2 or more",
         ["bench", "x.json", "--generate", "--new-tokens", "1"], "--new-tokens must be 2 or more"),
        (lambda: scorer.score("tiny", data="self", tokens=300, seq_len=200),
         "tokens 300 is less than two `seq_len` windows (2 x 200)", ["score", "--data", "self", "--tokens", "300",
                                                                    "--seq-len", "200"],
         "--tokens 300 is less than two --seq-len windows (2 x 200)"),
        (lambda: files.check_output("/proc/p.json"), "out /proc/p.json: not a place for output files",
         ["profile", "--out", "/proc/p.json"], "--out /proc/p.json: not a place for output files"),
        (lambda: frames.check_table("rows.txt"), "path rows.txt: expected a file name ending in .csv or .parquet",
         solve + ["--speedup", "1.2", "--table", "rows.txt"],
         "--table rows.txt: expected a file name ending in .csv or .parquet"),
    ]


def test_a_library_call_names_the_parameter_and_the_command_line_the_flag(pair, capsys):
    for call, library_message, argv, cli_message in _cases(*pair):
        with pytest.raises(UsageError) as e:
            call()
        assert str(e.value).startswith(library_message), (str(e.value), library_message)
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {cli_message}"), (err, cli_message)
        assert "`" not in err and "\n" not in err.rstrip("\n")


def test_flags_are_kebab_case_parameters_unless_the_one_table_says_otherwise():
    assert flag("batch_size") == "--batch-size" and flag("batch_size", "distill") == "--batch-size"
    assert flag("batch_size", "bench") == "--batch" and flag("new_tokens", "bench") == "--new-tokens"
    assert flag("new_tokens", "check") == "--tokens" and flag("time_limit_s", "solve") == "--time-limit"
    e = invalid("ops", ": empty operator list")
    assert str(e) == "ops: empty operator list" and e.for_cli(flag) == "--ops: empty operator list"


def test_notes_go_through_logging_and_the_cli_prints_them_as_before(tmp_path, caplog, capsys):
    store = ItemStore(tmp_path / "s.json")
    store.log(0).write_text("{}\n")
    with caplog.at_level(logging.INFO, logger="mosaic_search"):
        store.clear_progress(note=True)
    [record] = caplog.records
    assert record.name == "mosaic_search.quality.library" and record.levelno == logging.INFO
    note = f"note: starting afresh; {store.table}'s unfinished earlier run is discarded (--resume keeps it)"
    assert record.getMessage() == note
    assert capsys.readouterr().err == note + "\n"  # the handler `mosaic` installs (conftest installs it too)
