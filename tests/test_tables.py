"""Artifacts as tables: `to_frame` DataFrames, `--table` CSV / parquet files, and the terminal tables at 80 columns."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from test_solver import make, save_pair

from mosaic_search import builder, to_frame
from mosaic_search.artifacts import frames
from mosaic_search.artifacts.profile import Workload
from mosaic_search.cli import main, terminal
from mosaic_search.errors import UsageError
from mosaic_search.latency import bench as bench_mod
from mosaic_search.latency import profiler
from mosaic_search.operators import Candidate
from mosaic_search.quality import scorer
from mosaic_search.search import solver

# A model shaped like Qwen3-VL-4B (36 layers) with the candidates and workload names a GPU profile holds: the
# longest names and numbers the tables show.
LAYERS = 36
CANDS = [Candidate.parse(t) for t in ("gqa", "swa:window=1024", "swa:window=8192", "mla:rank=256", "gdn", "kda",
                                      "none", "drop")]
WORKLOADS = [Workload("prefill-b1-p96k", "prefill", 1, 98304), Workload("prefill-b8-p4k", "prefill", 8, 4096),
             Workload("decode-b1-c96k", "decode", 1, 98304), Workload("decode-b8-c16k", "decode", 8, 16384)]
GQA_MS = {"prefill-b1-p96k": 1635.7, "prefill-b8-p4k": 163.57, "decode-b1-c96k": 1.6357, "decode-b8-c16k": 0.9}
SHARE = {"gqa": 1.0, "swa": 0.3, "mla": 0.9, "gdn": 0.6, "kda": 0.65, "none": 0.1, "drop": 0.01}
LABELS = ("swa:1024", "swa:8192", "mla:256")
MODEL = "Qwen/Qwen3-VL-4B-Instruct"


def _artifacts():
    prof, sens = make(LAYERS, cands=CANDS, workloads=WORKLOADS, model=MODEL,
                      lat=lambda l, c, w: round(GQA_MS[w] * SHARE[c.op] * (1 + 0.01 * (l % 3) + 0.01 * len(str(c))), 4))
    return prof, sens


@pytest.fixture(scope="module")
def artifacts():
    """A profile, a sensitivity table, a plan and a sweep of the 36-layer model (all in memory)."""
    prof, sens = _artifacts()
    plan = solver.solve(prof, sens, speedup=1.4, write=False)
    front = solver.sweep("1.2:2.0:0.4", profile=prof, scores=sens, write=False)
    return prof, sens, plan, front


# ---- to_frame -----------------------------------------------------------------------------------------

def _dtypes(frame) -> dict:
    return {name: str(dtype) for name, dtype in frame.dtypes.items()}


def test_to_frame_of_every_artifact_kind(artifacts):
    prof, sens, plan, front = artifacts
    ws = [w.name for w in WORKLOADS]
    candidate = {"candidate": "string", "op": "string", "mlp": "string", "window": "Int64", "kv_heads": "Int64",
                 "rank": "Int64", "width": "Int64"}

    df = to_frame(prof)
    assert len(df) == LAYERS * len(CANDS) * len(WORKLOADS)
    assert _dtypes(df) == {"layer": "int64", **candidate, "workload": "string", "phase": "string",
                           "batch_size": "int64", "seq_len": "int64", "status": "string", "latency_ms": "float64",
                           "p20_ms": "float64", "p80_ms": "float64", "cache_bytes": "int64", "reason": "string"}
    row = df[(df.layer == 0) & (df.candidate == "gqa") & (df.workload == "prefill-b1-p96k")].iloc[0]
    assert row.latency_ms == pytest.approx(1635.7 * 1.03) and row.phase == "prefill" and row.seq_len == 98304
    assert set(df[df.op == "swa"].window) == {1024, 8192} and df[df.op == "gqa"].window.isna().all()

    df = to_frame(sens)
    assert len(df) == LAYERS * len(CANDS)
    assert _dtypes(df) == {"layer": "int64", **candidate, "kl_nats": "float64", "delta_loss_nats": "float64",
                           "align_steps": "int64"}
    assert (df[df.op == "gqa"].kl_nats == 0).all() and set(df[df.op == "mla"]["rank"]) == {256}

    df = to_frame(plan)
    assert list(df.layer) == list(range(LAYERS)) and "".join(df.symbol) == plan.pattern
    assert _dtypes(df) == {"layer": "int64", **candidate, "symbol": "string", "layer_type": "string",
                           "kl_nats": "float64", **{f"saved_ms_{w}": "float64" for w in ws}}
    assert df.kl_nats.sum() == pytest.approx(plan.objective)

    df = to_frame(front)
    assert list(df.target_speedup) == [1.2, 1.6, 2.0]
    assert _dtypes(df) == {"target_speedup": "float64", "feasible": "bool", "pattern": "string", "kl_nats": "float64",
                           **{f"speedup_{w}": "float64" for w in ws}, **{f"latency_ms_{w}": "float64" for w in ws}}
    ok = df[df.feasible]
    assert list(ok.pattern) == [pt["pattern"] for pt in front.points if pt["feasible"]]
    assert (ok[[f"speedup_{w}" for w in ws]].min(axis=1) >= ok.target_speedup - 1e-9).all()
    assert df[~df.feasible].kl_nats.isna().all()


def test_to_frame_keeps_its_columns_when_empty_and_refuses_other_things():
    prof, _ = make(2, cands=[])
    df = to_frame(prof)
    assert df.empty and df.dtypes["latency_ms"] == "float64" and df.dtypes["window"] == "Int64"
    with pytest.raises(UsageError, match=r"artifact must be a profile, sensitivity table, plan, sweep or search "
                                         r"record \(or its file's path\), got dict"):
        to_frame({"kind": "mosaic/something-else"})


# ---- --table ---------------------------------------------------------------------------------------------

def _read(path):
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_every_command_writes_its_table(suffix, artifacts, tmp_path, monkeypatch, capsys):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    prof, sens, plan, front = artifacts
    monkeypatch.setattr(profiler, "profile", lambda **kw: prof)
    monkeypatch.setattr(scorer, "score", lambda *a, **kw: dataclasses.replace(
        sens, data={"source": "self", "tokens": 64, "seq_len": 32, "seed": 0,
                    "cost": {"done_full_forwards": 1.0, "naive_full_forwards": 2.0, "ratio": 0.5}}))
    p, s = save_pair(tmp_path, prof, sens)
    runs = {"profile": (["profile", "--out", str(tmp_path / "prof.json")], prof),
            "score": (["score", "--data", "self", "--out", str(tmp_path / "sens.json")], sens),
            "solve": (["solve", "--profile", p, "--scores", s, "--speedup", "1.4",
                       "--out", str(tmp_path / "plan.json")], plan),
            "sweep": (["solve", "--profile", p, "--scores", s, "--sweep", "1.2:2.0:0.4",
                       "--out", str(tmp_path / "front.json")], front)}
    for name, (argv, artifact) in runs.items():
        path = tmp_path / f"{name}{suffix}"
        assert main([*argv, "--table", str(path)]) == 0, capsys.readouterr().err
        assert path.name in capsys.readouterr().out
        got, want = _read(path), to_frame(artifact)
        assert list(got.columns) == list(want.columns) and len(got) == len(want)
        numeric = [c for c in want.columns if pd.api.types.is_float_dtype(want[c])]
        pd.testing.assert_frame_equal(got[numeric], want[numeric], check_exact=False)
    # the Pareto CSV that solve --sweep writes beside its JSON is the same table
    if suffix == ".csv":
        assert (tmp_path / "front.csv").read_text() == (tmp_path / "sweep.csv").read_text()


def test_bad_table_paths_exit_2_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(profiler, "profile", lambda **kw: pytest.fail("profiled despite a bad --table"))
    for bad, why in (("t.xlsx", "expected a file name ending in .csv or .parquet"),
                     ("t", "expected a file name ending in .csv or .parquet"),
                     (str(tmp_path), "expected a file name ending in .csv or .parquet")):
        assert main(["profile", "--table", bad]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1
    (tmp_path / "dir.csv").mkdir()
    assert main(["profile", "--table", str(tmp_path / "dir.csv")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["solve", "--speedup", "1.2", "--solutions", "2", "--table", "t.csv"]) == 2
    assert "--table writes one plan or one sweep" in capsys.readouterr().err
    real = frames.importlib.util.find_spec
    monkeypatch.setattr(frames.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyarrow" else real(name, *a))
    assert main(["profile", "--table", str(tmp_path / "t.parquet")]) == 2
    assert "writing .parquet needs pyarrow (pip install pyarrow)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["dir.csv"]


# ---- the terminal tables at 80 columns -----------------------------------------------------------------

@pytest.fixture
def columns80(monkeypatch):
    """The CLI's console 80 columns wide, as rich reads COLUMNS at every print."""
    monkeypatch.setenv("COLUMNS", "80")
    assert terminal.console.width == 80


def _shown(capsys, argv) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "…" not in out and max(map(len, out.splitlines())) <= 80, out
    return out


def test_profile_and_score_tables_fit_80_columns(artifacts, columns80, monkeypatch, capsys, tmp_path):
    prof, sens, _, _ = artifacts
    validation = tuple({"assignment": name, "pattern": pattern, "workload": "decode-b8-c16k", "predicted_ms": 1635.71,
                        "measured_ms": 1640.25, "error_pct": -0.28}
                       for name, pattern in (("teacher (all gqa)", "G" * LAYERS), ("mix A", "GSDK" * (LAYERS // 4))))
    monkeypatch.setattr(profiler, "profile", lambda **kw: dataclasses.replace(prof, validation=validation))
    out = _shown(capsys, ["profile", "--out", str(tmp_path / "p.json")])
    for text in (*LABELS, *GQA_MS, "1685 (1.00x)", "whole teacher", "teacher (all", "mix A", "1636", "1640"):
        assert text in out, text

    monkeypatch.setattr(scorer, "score", lambda *a, **kw: dataclasses.replace(
        sens, data={"source": "/data/calibration/a-very-long-folder-name/calibration-set.jsonl", "tokens": 8192,
                    "seq_len": 512, "seed": 0,
                    "cost": {"done_full_forwards": 12.5, "naive_full_forwards": 300.0, "ratio": 0.04}}))
    out = _shown(capsys, ["score", "--out", str(tmp_path / "s.json")])
    for text in (*LABELS, "calibration-set.jsonl", " 35 ", "BI"):
        assert text in out, text


def test_solve_and_sweep_tables_fit_80_columns(artifacts, columns80, tmp_path, capsys):
    prof, sens, plan, front = artifacts
    p, s = save_pair(tmp_path, prof, sens)
    out = _shown(capsys, ["solve", "--profile", p, "--scores", s, "--speedup", "1.4",
                          "--out", str(tmp_path / "x.json")])
    assert plan.pattern in out and "predicted ms" in out and "speedup" in out
    for text in (*(c.label for c in plan.layers), *GQA_MS):
        assert text in out, text
    out = _shown(capsys, ["solve", "--profile", p, "--scores", s, "--sweep", "1.2:2.0:0.4",
                          "--out", str(tmp_path / "f.json")])
    for text in (*(pt["pattern"] for pt in front.points if pt["feasible"]), *GQA_MS, "1.20x", "2.00x"):
        assert text in out, text


def test_bench_check_and_ops_tables_fit_80_columns(columns80, monkeypatch, capsys):
    target = f"build/{MODEL.replace('/', '--')}-{'GSDK' * 9}"
    monkeypatch.setattr(bench_mod, "bench", lambda *a, **kw: [
        {"workload": w, "teacher_ms": 1635.7, "model_ms": 1001.25, "measured_speedup": 1.634, "predicted_speedup": 1.6,
         "error_pct": -2.1, "teacher": MODEL, "workloads_from": "the plan's predictions"} for w in GQA_MS])
    out = _shown(capsys, ["bench", target])
    for text in (*GQA_MS, "1636", "1001", "1.63x", "-2.1"):
        assert text in out, text
    monkeypatch.setattr(bench_mod, "bench_generate", lambda *a, **kw: [
        {"context": ctx, "model_ttft_ms": 1635.7, "model_tpot_ms": 12.3456, "model_tokens_per_s": 81.0,
         "all-gqa_tpot_ms": 20.5, "stock_tpot_ms": 19.75, "tpot_speedup_vs_all-gqa": 1.66, "tpot_speedup_vs_stock": 1.6,
         "predicted_tpot_speedup": 1.7, "stock_mode": "static"} for ctx in (16384, 98304)])
    out = _shown(capsys, ["bench", target, "--generate"])
    for text in ("98304", "TPOT vs all-gqa", "TPOT vs stock", "12.35", "1.66x", "1.70x"):
        assert text in out, text
    monkeypatch.setattr(builder, "check_generation", lambda *a, **kw: [
        {"candidate": str(c), "match": True, "tokens": list(range(100, 108))} for c in CANDS])
    out = _shown(capsys, ["check"])
    for text in (*LABELS, "100 101 102"):
        assert text in out, text
    out = _shown(capsys, ["ops"])
    assert "sliding_attention" in out and "linear_attention" in out
    # at 80 columns each description is under the table, whole, not wrapped a word per line beside it
    assert "\ngqa: the teacher's full grouped-query attention\n" in out
