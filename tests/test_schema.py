"""Artifacts: round trip, atomic save, and one-line refusals of bad files."""

from __future__ import annotations

import json
import os

import pytest

from mosaic_search.artifacts import schema
from mosaic_search.errors import UsageError
from mosaic_search.operators import Candidate

MODEL = schema.ModelRef(id="tiny", config_sha256="ab" * 32, num_hidden_layers=3)


def _plan(layers=None):
    layers = layers or (Candidate.of("gqa"), Candidate.of("swa", {"window": 64}), Candidate.of("gdn"))
    return schema.LayerPlan(header=schema.Header.new(MODEL), layers=tuple(layers),
                            predicted={"decode": {"latency_ms": 1.0, "baseline_ms": 2.0, "speedup": 2.0}},
                            objective=0.5, constraints={"speedup": 2.0}, solver={"name": "highs"})


def _profile():
    w = schema.Workload(name="decode-b1-c1k", phase="decode", batch_size=1, seq_len=1024)
    e = schema.ProfileEntry(layer=0, candidate=Candidate.of("swa", {"window": 64}), workload=w.name, latency_ms=0.5,
                            p20_ms=0.4, p80_ms=0.6, status="ok", cache_bytes=100)
    oom = schema.ProfileEntry(layer=1, candidate=Candidate.of("gqa"), workload=w.name, latency_ms=None, p20_ms=None,
                              p80_ms=None, status="oom", cache_bytes=100, reason="CUDA out of memory")
    check = {"assignment": "mix A", "pattern": "SG", "workload": w.name, "predicted_ms": 2.9, "measured_ms": 3.1,
             "error_pct": -6.45}
    return schema.LatencyProfile(header=schema.Header.new(MODEL, env={"device": "cpu"}), workloads=(w,),
                                 baseline_ms={w.name: 3.0}, fixed_ms={w.name: 0.5}, entries=(e, oom),
                                 validation=(check,))


def _table():
    e = schema.SensitivityEntry(layer=2, candidate=Candidate.of("mla", {"rank": 8}), kl=0.1, delta_loss=0.02,
                                align_steps=50, extra={"block_influence": 0.3})
    return schema.SensitivityTable(header=schema.Header.new(MODEL), metric="kl", data={"source": "self"}, entries=(e,))


@pytest.mark.parametrize("make,load", [(_plan, schema.load_plan), (_profile, schema.load_profile),
                                       (_table, schema.load_sensitivity)])
def test_round_trip(tmp_path, make, load):
    artifact = make()
    path = schema.save(artifact, tmp_path / "a.json")
    text = path.read_text()
    assert json.loads(text)["kind"] == artifact.kind and json.loads(text)["schema_version"] == schema.SCHEMA_VERSION
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert load(path) == artifact
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp files left behind
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others, like any file the user writes


def test_plan_json_has_pattern_and_structured_candidates(tmp_path):
    obj = json.loads(schema.save(_plan(), tmp_path / "p.json").read_text())
    assert obj["pattern"] == "GSD"
    assert obj["layers"][1] == {"op": "swa", "params": {"window": 64}}
    assert obj["model"]["num_hidden_layers"] == 3 and obj["created_by"]


def _write(tmp_path, obj, text=None):
    p = tmp_path / "x.json"
    p.write_text(text if text is not None else json.dumps(obj))
    return p


def _plan_obj(tmp_path):
    return json.loads(schema.save(_plan(), tmp_path / "good.json").read_text())


@pytest.mark.parametrize("mutate,message", [
    (lambda o: o.update(kind="mosaic/latency-profile"), 'expected "mosaic/layer-plan", got "mosaic/latency-profile"'),
    (lambda o: o.update(schema_version=99), "version 99 is newer than this mosaic reads"),
    (lambda o: o["layers"][0].update(op="gqaa"), 'layers\\[0\\]: unknown operator "gqaa" \\(did you mean "gqa"\\?\\)'),
    (lambda o: o["layers"].pop(), "has 2 entries but the model has 3 layers"),
    (lambda o: o["layers"][1]["params"].update(window=0), "window must be a positive integer, got 0"),
    (lambda o: o["layers"][1]["params"].update(window=-5), "window must be a positive integer, got -5"),
    (lambda o: o["layers"][1].update(params={}), "missing param window"),
    (lambda o: o.pop("layers"), "layers: missing field"),
    (lambda o: o["model"].update(num_hidden_layers="3"), "model.num_hidden_layers: expected int, got str"),
])
def test_bad_plans_are_refused_naming_the_field(tmp_path, mutate, message):
    obj = _plan_obj(tmp_path)
    mutate(obj)
    with pytest.raises(UsageError, match=message):
        schema.load_plan(_write(tmp_path, obj))


def test_truncated_and_missing_files(tmp_path):
    text = schema.save(_plan(), tmp_path / "p.json").read_text()
    with pytest.raises(UsageError, match="not valid JSON .* truncated"):
        schema.load_plan(_write(tmp_path, None, text[: len(text) // 2]))
    with pytest.raises(UsageError, match="no such file"):
        schema.load_plan(tmp_path / "missing.json")


def test_plan_for_a_model_of_another_depth(tmp_path):
    path = schema.save(_plan(), tmp_path / "p.json")
    with pytest.raises(UsageError, match="target model has 36 layers"):
        schema.load_plan(path, num_layers=36)


def test_profile_entry_for_undeclared_workload(tmp_path):
    obj = json.loads(schema.save(_profile(), tmp_path / "p.json").read_text())
    obj["entries"][0]["workload"] = "prefill-32k"
    with pytest.raises(UsageError, match='entries\\[0\\].workload: "prefill-32k" is not a declared workload'):
        schema.load_profile(_write(tmp_path, obj))


def test_profile_validation_row_for_undeclared_workload(tmp_path):
    obj = json.loads(schema.save(_profile(), tmp_path / "p.json").read_text())
    obj["validation"][0]["workload"] = "prefill-32k"
    with pytest.raises(UsageError, match='validation\\[0\\].workload: "prefill-32k" is not a declared workload'):
        schema.load_profile(_write(tmp_path, obj))


def test_a_profile_without_validation_loads(tmp_path):
    obj = json.loads(schema.save(_profile(), tmp_path / "p.json").read_text())
    del obj["validation"]  # written before profiles carried their additivity check
    assert schema.load_profile(_write(tmp_path, obj)).validation == ()


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = schema.save(_plan(), tmp_path / "p.json")
    before = path.read_text()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)  # the temporary file is written, then the disk is full
    with pytest.raises(OSError):
        schema.save(_plan(), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_stale_model_check():
    other = schema.ModelRef(id="Qwen/Qwen3-4B", config_sha256="cd" * 32, num_hidden_layers=36)
    from mosaic_search.errors import StaleInputError

    with pytest.raises(StaleInputError, match="`allow_stale`"):
        schema.check_same_model(MODEL, other, "profile.json")
    schema.check_same_model(MODEL, other, "profile.json", allow_stale=True)
