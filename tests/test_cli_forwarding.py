"""Every command forwards each of its options to the library function it calls, and nothing else (no model loads)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_solver import make

from mosaic_search import builder
from mosaic_search import demo as demo_mod
from mosaic_search.artifacts.distill_record import RECORD_FILE, DistillRecord
from mosaic_search.artifacts.header import Header, ModelRef, save
from mosaic_search.cli import main
from mosaic_search.errors import EXIT_OK, EXIT_RUNTIME
from mosaic_search.latency import bench as bench_mod
from mosaic_search.latency import profiler
from mosaic_search.quality import evaluation as evaluate_mod
from mosaic_search.quality import scorer
from mosaic_search.recovery import distill as distill_mod
from mosaic_search.recovery.settings import DEFAULTS as DISTILL_DEFAULTS
from mosaic_search.search import solver


@pytest.fixture(scope="module")
def artifacts():
    """A small profile, its sensitivity table, a plan and a sweep, all in memory."""
    prof, sens = make(3)
    sens = dataclasses.replace(sens, data={"source": "self", "tokens": 64, "seq_len": 32, "seed": 0,
                                           "cost": {"done_full_forwards": 1.0, "naive_full_forwards": 2.0,
                                                    "ratio": 0.5}})
    plan = solver.solve(prof, sens, speedup=1.1, write=False)
    front = solver.sweep("1.1:1.2:0.1", profile=prof, scores=sens, write=False)
    return prof, sens, plan, front


def _fake(monkeypatch, module, name, result):
    """Replace `module.name` with a recorder of its call that returns `result`; return the record."""
    seen = {}

    def fake(*args, **kwargs):
        seen.update(args=args, **kwargs)
        return result

    monkeypatch.setattr(module, name, fake)
    return seen


def _progress(seen: dict) -> dict:
    """The record without its progress callback, which must be one."""
    assert callable(seen.pop("progress"))
    return seen


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_profile(artifacts, monkeypatch, tmp_path, capsys):
    prof = artifacts[0]
    seen = _fake(monkeypatch, profiler, "profile", prof)
    out, table = tmp_path / "p.json", tmp_path / "p.csv"
    assert main(["profile", "--teacher", "M", "--device", "cuda", "--ops", "gqa,swa", "--workload", "decode:32",
                 "--workload", "prefill:1k:b2", "--out", str(out), "--validate", "--layers-per-sample", "2",
                 "--image-tokens", "16", "--table", str(table), "--seed", "3", "--json"]) == EXIT_OK
    assert _progress(seen) == dict(args=(), model="M", device="cuda", ops="gqa,swa",
                                   workloads=["decode:32", "prefill:1k:b2"], out=str(out), seed=3, image_tokens=16,
                                   layers_per_sample=2, validate=True)
    got = _json(capsys)
    assert got["profile"] == str(profiler.profile_path("M", prof.header.env, str(out))) == str(out)
    assert got["table"] == str(table) and table.is_file()


def test_score(artifacts, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RANK", raising=False)
    sens = artifacts[1]
    seen = _fake(monkeypatch, scorer, "score", sens)
    out = tmp_path / "s.json"
    assert main(["score", "-m", "T", "--data", "D", "--ops", "gqa,none", "--tokens", "64", "--seq-len", "32",
                 "--align-steps", "0", "--out", str(out), "--resume", "--device", "cuda", "--device-map", "auto",
                 "--seed", "4", "--json"]) == EXIT_OK
    assert _progress(seen) == dict(args=("T",), data="D", ops="gqa,none", tokens=64, seq_len=32, align_steps=0,
                                   out=str(out), resume=True, seed=4, device="cuda", device_map="auto")
    got = _json(capsys)
    assert got["path"] == str(scorer.table_path("T", str(out))) and got["library"] is None and got["table"] is None


SOLVE_ARGV = ["--profile", "P", "--scores", "S", "--workload", "decode-b1-c32", "--workload", "prefill-b1-p32",
              "--ttft-speedup", "1.1", "--tpot-speedup", "1.2", "--max-cache-bytes", "9", "--cache-batch", "2",
              "--cache-context", "32", "--ops", "gqa,swa", "--pin", "0=gqa", "--pin", "1=swa", "--min", "gqa=1",
              "--max", "swa=2", "--time-limit", "5", "--metric", "delta_loss", "--device", "cuda", "--allow-stale",
              "--overwrite", "--max-memory", "0.5"]
SOLVE_KW = dict(profile="P", scores="S", workloads=["decode-b1-c32", "prefill-b1-p32"], ttft_speedup=1.1,
                tpot_speedup=1.2, max_cache_bytes=9, cache_batch=2, cache_context=32, ops="gqa,swa",
                pins=["0=gqa", "1=swa"], min_count=["gqa=1"], max_count=["swa=2"], metric="delta_loss", device="cuda",
                allow_stale=True, time_limit_s=5.0, overwrite=True, max_memory=0.5)


def test_solve(artifacts, monkeypatch, tmp_path, capsys):
    plan = artifacts[2]
    seen = _fake(monkeypatch, solver, "solve", plan)
    out = tmp_path / "plan.json"
    assert main(["solve", "--speedup", "1.1", *SOLVE_ARGV, "--strategy", "greedy", "--out", str(out),
                 "--table", str(tmp_path / "plan.csv"), "--json"]) == EXIT_OK
    assert seen == dict(args=(), speedup=1.1, strategy="greedy", out=str(out), **SOLVE_KW)
    got = _json(capsys)
    assert got["path"] == str(out) and got["pattern"] == plan.pattern and (tmp_path / "plan.csv").is_file()


def test_solve_sweep(artifacts, monkeypatch, tmp_path, capsys):
    out = tmp_path / "front.json"
    front = dataclasses.replace(artifacts[3], files=tuple(str(out.with_suffix(x)) for x in (".json", ".csv", ".png")))
    seen = _fake(monkeypatch, solver, "sweep", front)
    assert main(["solve", "--sweep", "1.1:1.2:0.1", "--plot", *SOLVE_ARGV, "--out", str(out), "--json"]) == EXIT_OK
    assert seen == dict(args=("1.1:1.2:0.1",), reserve=(".png",), speedup=None, out=str(out), **SOLVE_KW)
    assert _json(capsys)["points"] == json.loads(json.dumps(list(front.points)))
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # --plot draws the reserved file


def test_solve_solutions(artifacts, monkeypatch, tmp_path, capsys):
    plan = artifacts[2]
    seen = _fake(monkeypatch, solver, "solve_many", [plan, plan])
    out = tmp_path / "plan.json"
    assert main(["solve", "--speedup", "1.1", *SOLVE_ARGV, "--solutions", "2", "--min-distance", "2",
                 "--out", str(out), "--json"]) == EXIT_OK
    assert seen == dict(args=(2, 2), speedup=1.1, out=str(out), **SOLVE_KW)
    assert [p["path"] for p in _json(capsys)] == [str(out), str(tmp_path / "plan-2.json")]


def test_refine(artifacts, monkeypatch, tmp_path, capsys):
    from mosaic_search.artifacts.search_record import SearchRecord, save_search_record
    from mosaic_search.quality import refine as refine_mod

    plan = artifacts[2]
    out = tmp_path / "r.json"
    row = {"index": 0, "origin": "mip-1", "pattern": plan.pattern, "layers": [str(c) for c in plan.layers],
           "pins": {}, "fidelity": "high", "tokens": 8, "swapped_layers": 1, "predicted_kl": plan.objective,
           "measured_kl": 0.5, "predicted": {}, "seconds": 0.1}
    save_search_record(SearchRecord(plan.header, {}, {}, (row,), 0), tmp_path / "r.search.json")
    seen = _fake(monkeypatch, refine_mod, "refine", plan)
    argv = [a for a in SOLVE_ARGV if a not in ("--device", "cuda")]
    assert main(["refine", "--speedup", "1.1", *argv, "--plan", "PL", "--teacher", "T", "--library", "L",
                 "--data", "D", "--seq-len", "64", "--evaluations", "9", "--seconds", "30", "--solutions", "3",
                 "--min-distance", "2", "--low-windows", "1", "--high-windows", "4", "--offspring", "5",
                 "--survivors", "2", "--rerank-steps", "3", "--rerank-finalists", "2", "--resume", "--device", "cuda",
                 "--seed", "7", "--out", str(out), "--table", str(tmp_path / "r.csv"), "--json"]) == EXIT_OK
    kw = {k: v for k, v in SOLVE_KW.items() if k != "device"}  # refine keeps every bound solve takes, memory too
    assert _progress(seen) == dict(args=("P", "S"), speedup=1.1, plan="PL", teacher="T", library="L", data="D",
                                   seq_len=64, evaluations=9, seconds=30.0, solutions=3, min_distance=2, low_windows=1,
                                   high_windows=4, offspring=5, survivors=2, rerank_steps=3, rerank_finalists=2,
                                   seed=7, resume=True, out=str(out), device="cuda",
                                   **{k: v for k, v in kw.items() if k not in ("profile", "scores")})
    got = _json(capsys)
    assert got["plan"]["path"] == str(out) and got["search_record"] == str(tmp_path / "r.search.json")
    assert (tmp_path / "r.csv").read_text().splitlines()[1].startswith("0,mip-1,")


def test_build(monkeypatch, tmp_path, capsys):
    seen = _fake(monkeypatch, builder, "build", tmp_path / "m")
    assert main(["build", "plan.json", "--teacher", "T", "--library", "L.safetensors", "--out", "o",
                 "--dtype", "bfloat16", "--overwrite", "--allow-stale", "--seed", "5", "--json"]) == EXIT_OK
    assert seen == dict(args=("plan.json",), teacher="T", library="L.safetensors", out="o", dtype="bfloat16",
                        overwrite=True, allow_stale=True, seed=5)
    assert _json(capsys) == {"model_dir": str(tmp_path / "m")}
    seen.clear()
    assert main(["build", "plan.json", "--no-library"]) == EXIT_OK
    assert seen == dict(args=("plan.json",), teacher=None, library=False, out=None, dtype="float32", overwrite=False,
                        allow_stale=False, seed=0)
    assert f"wrote {tmp_path / 'm'}" in capsys.readouterr().out


def test_distill(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "d"
    out.mkdir()
    loss = {"step": 1, "stage": "offpolicy", "loss": 1.0}
    save(DistillRecord(Header.new(ModelRef("tiny", "0" * 64, 3)), {"teacher": "tiny"}, 0, (loss,),
                       {"before": None, "after": None}), out / RECORD_FILE)
    seen = _fake(monkeypatch, distill_mod, "distill", out)
    assert main(["distill", "m", "--teacher", "T", "--oracle", "O", "--oracle-weight", "0.3", "--data", "D",
                 "--stage", "onpolicy", "--tokens", "700", "--lr", "0.01", "--trainable", "mixers",
                 "--hidden-weight", "0", "--divergence", "jsd", "--batch-size", "8", "--seq-len", "128", "--out", "o",
                 "--resume", "--overwrite", "--checkpoint-every", "5", "--eval-data", "E", "--no-eval",
                 "--parallel", "fsdp", "--device", "cuda", "--seed", "3", "--dtype", "bfloat16", "--json"]) == EXIT_OK
    assert _progress(seen) == dict(args=("m",), teacher="T", oracle="O", oracle_weight=0.3, data="D", stage="onpolicy",
                                   steps=None, tokens=700, lr=0.01, trainable="mixers", hidden_weight=0.0,
                                   divergence="jsd", batch_size=8, seq_len=128, out="o", resume=True, overwrite=True,
                                   checkpoint_every=5, eval_data="E", quality=False, seed=3, device="cuda",
                                   parallel="fsdp", dtype="bfloat16")
    assert _json(capsys) == {"model_dir": str(out), "losses": [loss], "quality": {"before": None, "after": None},
                             "teacher": "tiny", "data": None, "dtype": None}
    seen.clear()
    assert main(["distill", "m", "--steps", "7", "--json"]) == EXIT_OK  # every other option: the library's default
    assert _progress(seen) == dict(args=("m",), **{**dataclasses.asdict(DISTILL_DEFAULTS), "steps": 7}, out=None,
                                   resume=False, overwrite=False, device="cpu", dtype=None)


def test_eval(monkeypatch, capsys):
    result = {"model": "m", "teacher": "tiny", "kl": 0.5, "heldout_loss": 1.0, "recall": {"1k": 0.5},
              "questions": {"accuracy": 0.875, "n": 8, "by_question": {}},
              "eval": {"source": "s", "windows": 3, "seq_len": 99, "probes": 2, "questions": 8}}
    seen = _fake(monkeypatch, evaluate_mod, "evaluate", result)
    assert main(["eval", "m", "--teacher", "T", "--data", "D", "--probes", "P", "--windows", "3", "--seq-len", "99",
                 "--questions", "Q", "--device", "cuda"]) == EXIT_OK
    assert seen == dict(args=("m",), teacher="T", data="D", probes="P", windows=3, seq_len=99, device="cuda",
                        questions="Q")
    out = capsys.readouterr().out
    assert "m against tiny: 3 x 99 tokens of s, 2 probes, 8" in " ".join(out.split()) and "87.5%" in out
    assert main(["eval", "m", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["kl"] == 0.5


def test_bench(monkeypatch, capsys):
    rows = [{"workload": "decode-b1-c32", "teacher_ms": 2.0, "model_ms": 1.0, "measured_speedup": 2.0,
             "predicted_speedup": 1.9, "error_pct": 5.3}]
    seen = _fake(monkeypatch, bench_mod, "bench", rows)
    assert main(["bench", "t", "--vs", "V", "--workload", "decode:32", "--workload", "prefill-b1-p32",
                 "--device", "cuda", "--image-tokens", "16", "--seed", "2", "--json"]) == EXIT_OK
    assert _progress(seen) == dict(args=("t",), vs="V", workloads=["decode:32", "prefill-b1-p32"], device="cuda",
                                   seed=2, image_tokens=16)
    assert _json(capsys) == rows


def test_bench_generate(monkeypatch, capsys):
    rows = [{"context": 32, "stock_mode": "static"}]
    seen = _fake(monkeypatch, bench_mod, "bench_generate", rows)
    monkeypatch.setattr(bench_mod, "bench", lambda *a, **k: pytest.fail("bench instead of bench_generate"))
    assert main(["bench", "t", "--generate", "--context", "16k", "--context", "32", "--new-tokens", "4",
                 "--batch", "2", "--device", "cuda", "--seed", "2", "--json"]) == EXIT_OK
    assert _progress(seen) == dict(args=("t",), contexts=["16k", "32"], new_tokens=4, batch_size=2, device="cuda",
                                   seed=2)
    assert _json(capsys) == rows


def test_demo(monkeypatch, tmp_path, capsys):
    seen = _fake(monkeypatch, demo_mod, "demo", tmp_path)
    assert main(["demo", "--out", "r", "--seed", "6"]) == EXIT_OK
    assert _progress(seen) == dict(args=(), out="r", seed=6, teacher="tiny")
    assert f"wrote {tmp_path / 'report.md'}" in capsys.readouterr().out


def test_ops(monkeypatch, capsys):
    from mosaic_search.operators import REGISTRY, OperatorSpec

    monkeypatch.setattr(OperatorSpec, "fast_path", lambda self: (True, "") if self.name != "gdn" else (False, "why"))
    assert main(["ops", "--json"]) == EXIT_OK
    rows = _json(capsys)
    assert [r["op"] for r in rows] == list(REGISTRY)
    assert [r["op"] for r in rows if not r["fast_path"]] == ["gdn"] and rows[list(REGISTRY).index("gdn")][
        "fast_path_note"] == "why"


def test_check(monkeypatch, capsys):
    results = [{"candidate": "gqa", "match": True, "tokens": [1, 2]}, {"candidate": "none", "match": False,
                                                                      "tokens": [1, 3]}]
    seen = _fake(monkeypatch, builder, "check_generation", results)
    assert main(["check", "--teacher", "T", "--layer", "2", "--tokens", "3", "--json"]) == EXIT_OK
    assert seen == dict(args=("T",), layer=2, new_tokens=3)
    assert _json(capsys) == results
    assert main(["check", "-m", "T"]) == EXIT_RUNTIME  # the table, then the mismatch as one error line
    got = capsys.readouterr()
    assert "NO" in got.out and got.err == "error: generation with cache differs from generation without cache\n"


def test_every_command_has_a_forwarding_test():
    from mosaic_search.cli import app

    tested = {name.removeprefix("test_").split("_")[0] for name in globals() if name.startswith("test_")}
    assert {c.name or c.callback.__name__ for c in app.registered_commands} <= tested
