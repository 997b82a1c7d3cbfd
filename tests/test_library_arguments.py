"""Every public function checks its arguments as the command line's would be: a bad value is a one-line UsageError
naming the library parameter (never a raw TypeError / KeyError, never an artifact written with it), a bool is not a
number, a list-valued parameter takes a list or one comma-separated string (as the command line writes it), and an
unknown keyword is named with the function the user called."""

from __future__ import annotations

import pytest

import mosaic_search as mosaic
from mosaic_search import builder
from mosaic_search.artifacts.frames import to_frame
from mosaic_search.artifacts.plan import load_plan
from mosaic_search.artifacts.profile import load_profile
from mosaic_search.cli import main
from mosaic_search.errors import UsageError
from mosaic_search.latency import bench, profiler
from mosaic_search.operators import Candidate
from mosaic_search.quality import evaluation, refine
from mosaic_search.recovery.settings import DistillSettings
from mosaic_search.search import serving, solver


def _refused(call, message):
    with pytest.raises(UsageError) as e:
        call()
    assert str(e.value) == message


def test_profile_refuses_what_it_cannot_time_with_before_any_work(tmp_path):
    out = tmp_path / "p.json"
    for kw, message in (
            (dict(rounds=-1), "rounds must be an integer >= 1, got -1"),
            (dict(rounds=True), "rounds must be an integer >= 1, got True"),
            (dict(dtype="int8"), 'dtype must be one of float32, bfloat16, float16, got "int8"'),
            (dict(image_tokens=-4), "image_tokens must be an integer >= 0, got -4"),
            (dict(seed="1"), "seed must be an integer, got '1'"),
            (dict(workloads=64), "workloads must be a list or a comma-separated string, got int 64"),
            (dict(ops=5), "ops must be a list or a comma-separated string, got int 5"),
            (dict(layers_per_sample=1.5), "layers_per_sample must be 1..8 (the model's layers), got 1.5")):
        _refused(lambda: mosaic.profile("tiny", out=out, **kw), message)
    assert not out.exists()


def test_a_list_valued_parameter_takes_a_comma_separated_string_as_the_command_line_does(pair):
    assert [w.name for w in profiler._workloads("decode:64, prefill:32", "cpu")] == \
        [w.name for w in profiler._workloads(["decode:64", "prefill:32"], "cpu")] == ["decode-b1-c64", "prefill-b1-p32"]
    p, s = pair
    one = solver.solve(p, s, speedup=1.2, pins="0=gqa,1=gqa", workloads="decode_4k,decode_16k", write=False)
    other = solver.solve(p, s, speedup=1.2, pins=["0=gqa", "1=gqa"], workloads=["decode_4k", "decode_16k"],
                         write=False)
    assert one.layers == other.layers and [str(c) for c in one.layers[:2]] == ["gqa", "gqa"]
    assert list(one.predicted) == ["decode_4k", "decode_16k"]
    # a repeated flag given comma-separated items once reads the same (the command line passes a list of strings)
    assert [w.name for w in profiler._workloads(["decode:64,prefill:32"], "cpu")] == ["decode-b1-c64", "prefill-b1-p32"]
    assert main(["solve", "--profile", p, "--scores", s, "--speedup", "1.2", "--pin", "0=gqa,1=gqa", "--workload",
                 "decode_4k,decode_16k", "--out", "cli.json"]) == 0
    assert load_plan("cli.json").layers == one.layers


def test_solve_checks_its_own_arguments_and_names_itself(pair):
    p, s = pair
    for kw, message in (
            (dict(ops=5), "ops must be a list or a comma-separated string, got int 5"),
            (dict(mip_gap=-1), "mip_gap must be a number within 0..1, got -1"),
            (dict(mip_gap="0"), "mip_gap must be a number within 0..1, got '0'"),
            (dict(speedup=True), "speedup must be a positive number, got True"),
            (dict(time_limit_s=True), "time_limit_s must be a positive number, got True"),
            (dict(pins=3), "pins must be a list or a comma-separated string, got int 3"),
            (dict(strategy=3), "strategy must be one of mip, greedy, pattern:SYMBOLS, got 3"),
            (dict(zzz=1), 'solve() has no parameter "zzz"'),
            (dict(speedpu=1.5), 'solve() has no parameter "speedpu" (did you mean "speedup"?)')):
        _refused(lambda: solver.solve(p, s, write=False, **{"speedup": 1.2, **kw}), message)
    _refused(lambda: solver.solve_many(2, profile=p, scores=s, speedup=1.2, zzz=1), 'solve_many() has no parameter '
                                                                                      '"zzz"')
    _refused(lambda: solver.sweep("1.1:1.2:0.1", profile=p, scores=s, zzz=1), 'sweep() has no parameter "zzz"')
    _refused(lambda: solver.sweep(5, profile=p, scores=s), "speedups must be a list or a comma-separated string, got "
                                                           "int 5")
    _refused(lambda: serving.solve_serving(1.5, 0.5, profile=p, scores=s, zzz=1),
             'solve_serving() has no parameter "zzz"')
    _refused(lambda: refine.refine(p, s, speedup=1.2, zzz=1), 'refine() has no parameter "zzz"')


def test_build_refuses_a_shard_size_save_pretrained_would_fail_on_after_the_build(tmp_path):
    plan = tmp_path / "missing.json"  # the arguments are checked before the plan is read
    for bad in (0, -1, True, 1.5, "abc", "5GiB", "-5GB", "0GB", "10"):
        _refused(lambda: builder.build(plan, max_shard_size=bad), 'max_shard_size must be a positive number of bytes '
                                                                  f'or a size such as "5GB" (KB, MB, GB, TB), got '
                                                                  f"{bad!r}")
    for good in (10**9, "5GB", "1.5 gb", "500MB"):
        builder._check_shard_size(good)
    _refused(lambda: builder.build(plan, seed=1.0), "seed must be an integer, got 1.0")


def test_the_other_entries_check_types_too(tmp_path):
    for kw, message in ((dict(lr="0.1"), "lr must be a number, got '0.1'"),
                        (dict(batch_size=True), "batch_size must be an integer, got True"),
                        (dict(steps=1.5), "steps must be an integer, got 1.5"),
                        (dict(stage=2), 'stage "2": choose one of offpolicy, onpolicy, both'),
                        (dict(quality="yes"), "quality must be True or False, got 'yes'")):
        _refused(lambda: DistillSettings(**kw), message)
    _refused(lambda: bench.bench("x.json", rounds=0), "rounds must be an integer >= 1, got 0")
    _refused(lambda: bench.bench("x.json", workloads=7), "workloads must be a list or a comma-separated string, got "
                                                         "int 7")
    _refused(lambda: bench.bench_generate("x.json", new_tokens="3"), "new_tokens must be an integer, got '3'")
    with pytest.raises(UsageError, match=r"`windows` and `seq_len` must be integers of at least 1 and 2, got '2'"):
        evaluation.evaluate("tiny", windows="2")
    _refused(lambda: evaluation.evaluate("tiny", probes=5), "probes must be a path, got int 5")
    _refused(lambda: evaluation.evaluate("tiny", teacher=["tiny"]), "teacher must be a model id or directory, got list ['tiny']")
    _refused(lambda: to_frame(5), "artifact must be a profile, sensitivity table, plan, sweep or search record (or "
                                  "its file's path), got int")


def test_to_frame_reads_an_artifact_file(pair):
    p, _ = pair
    assert len(to_frame(p)) == len(to_frame(load_profile(p))) > 0


def test_a_candidate_names_each_param_once_and_a_window_within_the_model(capsys):
    for text in ("swa:window=4:window=8", "swa:4:window=8"):
        with pytest.raises(UsageError, match=f'cannot parse candidate "{text}": window is given twice'):
            Candidate.parse(text)
        assert main(["score", "--ops", text]) == 2
        assert capsys.readouterr().err == f'error: --ops: cannot parse candidate "{text}": window is given twice\n'
    assert main(["score", "--ops", "gqa,swa:window=5000"]) == 2  # tiny has 4096 positions
    assert capsys.readouterr().err == ("error: --ops: swa:window=5000: window must be at most 4096 for this model, "
                                       "got 5000\n")


def test_flags_are_bools_and_paths_are_paths(pair, tmp_path):
    """A flag is read by its value, not its truth (`resume="no"` would resume), and a path argument given a number
    is named, not a TypeError from os.fspath."""
    p, s = pair
    for call, message in (
            (lambda: mosaic.score("tiny", resume="no"), "resume must be True or False, got 'no'"),
            (lambda: mosaic.profile("tiny", validate=1), "validate must be True or False, got 1"),
            (lambda: builder.build("missing.json", overwrite="yes"), "overwrite must be True or False, got 'yes'"),
            (lambda: solver.solve(p, s, speedup=1.2, overwrite=0), "overwrite must be True or False, got 0"),
            (lambda: solver.solve(p, s, speedup=1.2, allow_stale="no", write=False),
             "allow_stale must be True or False, got 'no'"),
            (lambda: mosaic.profile("tiny", out=5), "out must be a path, got int 5"),
            (lambda: mosaic.profile(5), "model must be a model id or directory, got int 5"),
            (lambda: mosaic.score(5), "teacher must be a model id or directory, got int 5"),
            (lambda: builder.build(5), "plan must be a plan file or a LayerPlan, got int 5"),
            (lambda: bench.bench(5), "target must be a model directory or a plan file, got int 5"),
            (lambda: solver.solve(5, s, speedup=1.2), "profile must be a path or a record, got int 5"),
            (lambda: mosaic.score("tiny", data=5), "data must be a path, got int 5"),
            (lambda: builder.build("missing.json", library=5),
             "library must be a path, None (the plan's own) or False (none), got 5"),
            (lambda: DistillSettings(eval_data=1.5), "eval_data must be a path, got float 1.5"),
            (lambda: mosaic.profile("tiny", out=tmp_path / "p.json", workloads=[64]),
             "workloads items must be specs such as decode:1k, got 64")):
        _refused(call, message)
