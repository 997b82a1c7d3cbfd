"""`mosaic refine`: a true-KL search around the MIP that keeps every budget, deterministic, resumable, bad input."""

from __future__ import annotations

import json
import random

import pytest
from conftest import tiny_model

from mosaic_search import to_frame
from mosaic_search.artifacts.header import Header, save
from mosaic_search.artifacts.plan import load_plan
from mosaic_search.artifacts.profile import LatencyProfile, ProfileEntry, Workload, load_profile
from mosaic_search.artifacts.search_record import load_search_record
from mosaic_search.cli import main
from mosaic_search.errors import InfeasibleError, Interrupted, StaleInputError, UsageError
from mosaic_search.hf.models import resolve
from mosaic_search.operators import Candidate
from mosaic_search.quality import refine as lib
from mosaic_search.quality import scorer
from mosaic_search.search import problem, solver

pytestmark = pytest.mark.usefixtures("one_thread")

SEQ = 16
OPS = "gqa,swa:window=4,gdn,none,drop"
WORKLOADS = (Workload("decode-b1-c1k", "decode", 1, 1024), Workload("prefill-b1-p512", "prefill", 1, 512))
FAST = {"gqa": 10.0, "swa": 7.0, "gdn": 5.0, "none": 3.0, "drop": 1.0}
SMALL = dict(evaluations=14, low_windows=1, high_windows=3, offspring=3, survivors=1, solutions=2, seq_len=SEQ)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(97)}, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0", bos_token="w1",
                                   eos_token="w2")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved 3-layer Qwen3 teacher, its table (scored with a library), a profile built in code, calibration text."""
    d = tmp_path_factory.mktemp("refine")
    teacher = d / "qwen3"
    tiny_model("qwen3").save_pretrained(teacher)
    _tokenizer().save_pretrained(teacher)
    rng = random.Random(0)
    text = d / "calib.txt"
    text.write_text(" ".join(f"w{rng.randrange(4, 97)}" for _ in range(400)))
    scores = d / "scores.json"
    table = scorer.score(str(teacher), data=str(text), ops=OPS, tokens=2 * SEQ, seq_len=SEQ, align_steps=3,
                         out=scores)
    ref = table.header.model
    cands = sorted({e.candidate for e in table.entries})
    entries = tuple(ProfileEntry(layer, c, w.name, FAST[c.op] + 0.1 * layer, None, None, "ok", 0)
                    for w in WORKLOADS for layer in range(ref.num_hidden_layers) for c in cands)
    fixed = {w.name: 2.0 for w in WORKLOADS}
    base = {w.name: 2.0 + sum(10.0 + 0.1 * layer for layer in range(ref.num_hidden_layers)) for w in WORKLOADS}
    profile = d / "profile.json"
    teacher_ops = tuple(resolve(str(teacher)).teacher_ops)
    save(LatencyProfile(Header.new(ref, env={"device": "cpu"}), WORKLOADS, base, fixed, entries, teacher_ops), profile)
    return {"teacher": str(teacher), "data": str(text), "scores": str(scores), "profile": str(profile), "dir": d}


def _run(setup, out, **kw):
    args = dict(profile=setup["profile"], scores=setup["scores"], data=setup["data"], tpot_speedup=1.6,
                workloads=["decode-b1-c1k"], out=str(out), **SMALL)
    return lib.refine(**{**args, **kw})


@pytest.fixture(scope="module")
def reference(setup):
    out = setup["dir"] / "ref" / "plan.json"
    plan = _run(setup, out)
    return plan, load_search_record(out.with_name("plan.search.json")), out


def test_every_plan_meets_every_budget_and_beats_its_seeds(setup, reference):
    plan, record, out = reference
    p = problem.prepare(setup["profile"], setup["scores"], tpot_speedup=1.6, workloads=["decode-b1-c1k"])
    assert len(record.evaluations) == SMALL["evaluations"]
    for row in record.evaluations:
        layers = [Candidate.parse(c) for c in row["layers"]]
        assert problem.violations(p, layers, 1e-6) == []
        assert row["predicted_kl"] == pytest.approx(sum(p.choice(i, c).loss for i, c in enumerate(layers)))
    best = record.evaluations[record.best]
    assert best["fidelity"] == "high" and [str(c) for c in plan.layers] == best["layers"]
    seeds = [r for r in record.evaluations if r["origin"] != "move"]
    assert seeds and all(r["fidelity"] == "high" for r in seeds)
    assert best["measured_kl"] <= min(r["measured_kl"] for r in seeds)
    assert min(r["measured_kl"] for r in record.evaluations if r["fidelity"] == "high") == best["measured_kl"]
    assert plan.solver["measured"]["kl"] == best["measured_kl"]
    assert plan.objective == pytest.approx(best["predicted_kl"])  # the additive prediction stays the objective
    assert solver.verify(p, [[c] for c in plan.layers])  # a plan solve's own re-check accepts
    # the first seed is the MIP's own plan
    mip = solver.solve(setup["profile"], setup["scores"], tpot_speedup=1.6, workloads=["decode-b1-c1k"], write=False)
    assert seeds[0]["origin"] == "mip-1" and seeds[0]["layers"] == [str(c) for c in mip.layers]
    assert not out.with_name("plan.progress.jsonl").exists()
    frame = to_frame(record)
    assert len(frame) == len(record.evaluations) and frame["chosen"].sum() == 1
    assert list(frame["measured_kl_nats"]) == [r["measured_kl"] for r in record.evaluations]


def test_deterministic_for_a_seed(setup, reference):
    plan, record, _ = reference
    again = _run(setup, setup["dir"] / "again" / "plan.json")
    rows = load_search_record(setup["dir"] / "again" / "plan.search.json").evaluations
    assert again.layers == plan.layers
    assert [(r["layers"], r["fidelity"], r["measured_kl"]) for r in rows] == \
        [(r["layers"], r["fidelity"], r["measured_kl"]) for r in record.evaluations]


def test_resume_after_interruption_gives_the_same_result(setup, reference):
    plan, record, _ = reference
    out = setup["dir"] / "resumed" / "plan.json"

    def stop(done, total, what):
        if done == 6:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"6 measured plans are kept in .*plan.progress.jsonl; rerun with --resume"):
        _run(setup, out, progress=stop)
    log = out.with_name("plan.progress.jsonl")
    assert not out.exists() and len(log.read_text().splitlines()) == 6
    with log.open("a") as f:
        f.write('{"fingerprint": "cut sh')  # a line cut short by kill -9
    resumed = _run(setup, out, resume=True)
    rows = load_search_record(out.with_name("plan.search.json")).evaluations
    assert resumed.layers == plan.layers
    assert [r["measured_kl"] for r in rows] == [r["measured_kl"] for r in record.evaluations]
    assert not log.exists()


def test_refine_a_solved_plan_reuses_its_constraints(setup, reference):
    plan, _, _ = reference
    solved = setup["dir"] / "solved.json"
    solver.solve(setup["profile"], setup["scores"], tpot_speedup=1.6, workloads=["decode-b1-c1k"], out=str(solved))
    again = lib.refine(setup["profile"], setup["scores"], plan=str(solved), data=setup["data"],
                       out=str(setup["dir"] / "from-plan" / "plan.json"), **SMALL)
    assert again.layers == plan.layers and again.constraints == plan.constraints


def test_bad_input(setup, tmp_path):
    with pytest.raises(InfeasibleError, match="largest reachable speedup"):
        _run(setup, tmp_path / "a.json", tpot_speedup=50)
    short = tmp_path / "short.txt"
    short.write_text("w5 " * 40)
    with pytest.raises(UsageError, match=r"short.txt: 40 tokens, fewer than the 48 the high fidelity needs "
                                         r"\(3 windows of 16\)"):
        _run(setup, tmp_path / "b.json", data=str(short))
    with pytest.raises(UsageError, match="low_windows must be at most high_windows"):
        _run(setup, tmp_path / "c.json", low_windows=4)
    other = tmp_path / "other.json"  # a plan solved on another profile
    prof = load_profile(setup["profile"])
    save(prof, tmp_path / "p2.json")
    solver.solve(str(tmp_path / "p2.json"), setup["scores"], tpot_speedup=1.6, workloads=["decode-b1-c1k"],
                 out=str(other))
    doc = json.loads(other.read_text())
    doc["inputs"]["profile"] = "0" * 64
    other.write_text(json.dumps(doc))
    with pytest.raises(StaleInputError, match="another profile or sensitivity table"):
        lib.refine(setup["profile"], setup["scores"], plan=str(other), data=setup["data"], out=str(tmp_path / "d.json"),
                   **SMALL)
    with pytest.raises(StaleInputError, match="made for .*qwen3.*but this is tiny"):  # a table of another teacher
        _run(setup, tmp_path / "e.json", teacher="tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "p2.json", "short.txt"]


def test_cli(setup, tmp_path, capsys):
    base = ["refine", "--profile", setup["profile"], "--scores", setup["scores"], "--data", setup["data"],
            "--workload", "decode-b1-c1k", "--evaluations", "4", "--low-windows", "1", "--high-windows", "3",
            "--seq-len", str(SEQ), "--solutions", "1"]
    assert main(base + ["--tpot-speedup", "1.6", "--out", str(tmp_path / "p.json"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["plan"]["pattern"] == load_plan(tmp_path / "p.json").pattern
    assert main(base + ["--tpot-speedup", "50", "--out", str(tmp_path / "q.json")]) == 3
    assert "largest reachable" in capsys.readouterr().err
    assert main(base + ["--tpot-speedup", "1.6", "--evaluations", "0", "--out", str(tmp_path / "r.json")]) == 2
    assert "--evaluations must be a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_rerank_after_distillation_hands_over_the_best_distilled_finalist(setup, reference):
    _, record, _ = reference
    out = setup["dir"] / "rerank" / "plan.json"
    plan = _run(setup, out, rerank_steps=2, rerank_finalists=2)
    rows = load_search_record(out.with_name("plan.search.json"))
    high = sorted((r for r in rows.evaluations if r["fidelity"] == "high"), key=lambda r: (r["measured_kl"], r["index"]))
    info = plan.solver["rerank"]
    # here the MIP's own plan (the first measured) measures best: the finalists are exactly the 2 best, once
    assert high[0]["origin"] == "mip-1" and high[0]["index"] == 0
    assert info["mip"] == {"index": 0, "origin": "mip-1", "added": False,
                           "reason": "the MIP's own plan (rank 1 by measured KL) is among the 2 best"}
    assert info["steps"] == 2 and [f["index"] for f in info["finalists"]] == [r["index"] for r in high[:2]]
    assert [f["origin"] for f in info["finalists"]] == [r["origin"] for r in high[:2]]
    assert info["without"] == high[0]["index"]  # the plan refine hands over without re-ranking
    chosen = min(info["finalists"], key=lambda f: f["distilled_kl"])
    assert info["with"] == chosen["index"] == rows.best
    assert [str(c) for c in plan.layers] == rows.evaluations[rows.best]["layers"]
    for f in info["finalists"]:
        # built as `mosaic build` builds it, measured as refine measured it: the same KL on the same windows
        assert f["built_kl"] == pytest.approx(f["measured_kl"], rel=1e-4)
        assert f["distilled_kl"] >= 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["plan.json", "plan.search.json"]  # no temporary models
    with pytest.raises(UsageError, match="rerank_steps must be 0"):
        _run(setup, setup["dir"] / "rerank-bad" / "plan.json", rerank_steps=-1)


@pytest.mark.slow
def test_rerank_distills_the_mips_own_plan_when_it_measured_worse_than_the_finalists(setup, monkeypatch):
    from mosaic_search.quality import fitness

    measure, calls = fitness.Fitness.measure, []

    def worse_first(self, layers, high):  # the first plan measured, the MIP's own, made to measure 1.0 worse
        kl, tokens, secs = measure(self, layers, high)
        calls.append(layers)
        return kl + (1.0 if len(calls) == 1 else 0.0), tokens, secs

    monkeypatch.setattr(fitness.Fitness, "measure", worse_first)
    out = setup["dir"] / "rerank-mip" / "plan.json"
    plan = _run(setup, out, rerank_steps=2, rerank_finalists=2)
    rows = load_search_record(out.with_name("plan.search.json"))
    high = sorted((r for r in rows.evaluations if r["fidelity"] == "high"),
                  key=lambda r: (r["measured_kl"], r["index"]))
    assert high[-1]["origin"] == "mip-1" and high[-1]["index"] == 0
    info = plan.solver["rerank"]
    assert [f["index"] for f in info["finalists"]] == [high[0]["index"], high[1]["index"], 0]
    assert [f["origin"] for f in info["finalists"]][-1] == "mip-1"
    assert info["mip"] == {"index": 0, "origin": "mip-1", "added": True,
                           "reason": f"the MIP's own plan (rank {len(high)} by measured KL) is not among the 2 best: "
                                     "re-ranked too, so that the plan handed over distills no worse than it"}
    mip = info["finalists"][-1]
    assert mip["built_kl"] == pytest.approx(mip["measured_kl"] - 1.0, rel=1e-4)  # built and measured honestly
    chosen = min(info["finalists"], key=lambda f: (f["distilled_kl"], f["measured_kl"], f["index"]))
    assert info["with"] == chosen["index"] == rows.best and chosen["distilled_kl"] <= mip["distilled_kl"]
    assert info["without"] == high[0]["index"]


def test_rerank_finalists_are_the_best_plans_plus_the_mips_own_when_it_is_not_among_them():
    from mosaic_search.quality import rerank

    kls = {"mip-1": 0.5, "mip-2": 0.3, "greedy": 0.4, "move": 0.2}
    rows = [{"index": i, "origin": o, "measured_kl": kl} for i, (o, kl) in enumerate(kls.items())]
    rows.append({"index": 4, "origin": "move", "measured_kl": 0.3})  # ties go to the first measured
    out, note = rerank.finalists(rows, 3, rows[0])
    assert [r["index"] for r in out] == [3, 1, 4, 0]
    assert note == {"index": 0, "origin": "mip-1", "added": True,
                    "reason": "the MIP's own plan (rank 5 by measured KL) is not among the 3 best: re-ranked too, so "
                              "that the plan handed over distills no worse than it"}
    out, note = rerank.finalists(rows, 5, rows[0])
    assert [r["index"] for r in out] == [3, 1, 4, 2, 0] and note["added"] is False
    assert note["reason"] == "the MIP's own plan (rank 5 by measured KL) is among the 5 best"
    rows[0]["measured_kl"] = 0.25  # now second: exactly the 3 best, once
    out, note = rerank.finalists(rows, 3, rows[0])
    assert [r["index"] for r in out] == [3, 0, 1] and note["added"] is False
    out, note = rerank.finalists(rows, 1, rows[0])
    assert [r["index"] for r in out] == [3, 0] and note["added"] is True


def test_rerank_refuses_calibration_windows_with_images():
    from types import SimpleNamespace

    from mosaic_search.quality import rerank

    rerank.check_windows(SimpleNamespace(images=None))
    rerank.check_windows(SimpleNamespace(images=[None, None]))
    with pytest.raises(UsageError, match="image rows, which re-ranking after distillation does not measure"):
        rerank.check_windows(SimpleNamespace(images=[None, object()]))


@pytest.mark.parametrize("kw,message", [
    ({"resume": "no"}, "resume must be True or False"), ({"seed": 1.5}, "seed must be an integer"),
    ({"time_limit_s": 0}, "time_limit_s must be a positive number"), ({"teacher": 5}, "teacher must be a path"),
    ({"data": ["a"]}, "data must be a path"), ({"device": "tpu"}, "tpu"),
    ({"rerank_steps": True}, "rerank_steps must be 0"), ({"seconds": float("nan")}, "seconds must be a positive"),
    ({"rerank_finalists": 5}, "rerank_finalists counts the plans re-ranked after distillation; with `rerank_steps` 0 "
                              r"\(off\) it would be ignored"),
])
def test_bad_arguments_name_the_parameter_before_any_work(setup, tmp_path, kw, message):
    with pytest.raises(UsageError, match=message):
        _run(setup, tmp_path / "p.json", **kw)
    assert list(tmp_path.iterdir()) == []


def test_a_plans_own_bounds_survive_the_command_lines_defaults(reference):
    import dataclasses

    plan = dataclasses.replace(reference[0], constraints={
        "tpot_speedup": 1.1, "workloads": ["decode-b8-c256"], "max_memory": 0.05, "memory_batch": 8,
        "memory_workload": "decode-b8-c256", "cache_batch": None, "metric": "kl"})
    # what the CLI passes for every option left out: prepare's defaults, which must not replace the plan's
    got = lib._from_plan(plan, {"cache_batch": 1, "metric": "kl", "max_memory": None, "tpot_speedup": None})
    assert (got["cache_batch"], got["cache_context"], got["max_memory"], got["tpot_speedup"]) == (8, 256, 0.05, 1.1)
    assert lib._from_plan(plan, {"cache_batch": 2})["cache_batch"] == 2  # given ones win
    assert lib._from_plan(plan, {"tpot_speedup": 1.3})["tpot_speedup"] == 1.3
    serving = dataclasses.replace(plan, constraints={**plan.constraints, "serving": {"batch": 8}})
    with pytest.raises(UsageError, match="plan was solved for a throughput target"):
        lib._from_plan(serving, {})
