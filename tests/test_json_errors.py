"""Under --json, stdout carries the one JSON document of a success and nothing else: a failure leaves stdout empty
and says itself as every error does, one line `error: ...` on stderr, with its documented exit code."""

from __future__ import annotations

from mosaic_search.cli import main


def _cases(p, s):
    solve = ["solve", "--profile", p, "--scores", s]
    return [
        (["profile", "--workload", "prefill:x"], 2, 'cannot parse workload "prefill:x"'),
        (["score", "--ops", "gqa,swa:window=4:window=8"], 2, "--ops: cannot parse candidate"),
        (solve + ["--speedup", "1.2", "--out", p, "--overwrite"], 2, f"--out {p}: would replace the --profile input"),
        (solve + ["--speedup", "50"], 3, "speedup target not reachable"),
        (solve + ["--speedup", "abc"], 2, "Invalid value for '--speedup'"),
        (["refine", "--profile", p, "--scores", s, "--speedup", "1.2", "--evaluations", "0"], 2,
         "--evaluations must be a positive integer"),
        (["build", "missing.json"], 2, "missing.json: no such file"),
        (["distill", "missing"], 2, "missing: no such model directory"),
        (["eval", "missing"], 2, "missing: no such model directory"),
        (["bench", "missing.json"], 2, "missing.json"),
        (["check", "--tokens", "0"], 2, "--tokens must be 1 or more, got 0"),
    ]


def test_a_failure_under_json_prints_nothing_on_stdout_and_one_line_on_stderr(pair, capsys):
    for argv, code, said in _cases(*pair):
        assert main(argv + ["--json"]) == code, argv
        out, err = capsys.readouterr()
        assert out == "", (argv, out)
        last = err.splitlines()[-1]
        assert last.startswith("error: ") and said in last and err.count("error:") == 1, (argv, err)
