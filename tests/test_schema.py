"""Artifacts: round trip, atomic save, one-line refusals of bad files, and every kind's version rules."""

from __future__ import annotations

import json
import os

import pytest

from mosaic_search.artifacts.distill_record import RECORD_FILE, DistillRecord, load_distill_record
from mosaic_search.artifacts.header import Header, ModelRef, check_same_model, load, save, to_json
from mosaic_search.artifacts.kinds import KINDS, load_any
from mosaic_search.artifacts.library import CandidateLibrary, LibraryEntry
from mosaic_search.artifacts.pareto import Pareto
from mosaic_search.artifacts.plan import PLAN_FILE, LayerPlan, load_plan
from mosaic_search.artifacts.profile import LatencyProfile, ProfileEntry, Workload, load_profile
from mosaic_search.artifacts.search_record import SearchRecord
from mosaic_search.artifacts.sensitivity import SensitivityEntry, SensitivityTable, load_sensitivity
from mosaic_search.errors import UsageError
from mosaic_search.operators import Candidate

MODEL = ModelRef(id="tiny", config_sha256="ab" * 32, num_hidden_layers=3)


def _plan(layers=None):
    layers = layers or (Candidate.of("gqa"), Candidate.of("swa", {"window": 64}), Candidate.of("gdn"))
    return LayerPlan(header=Header.new(MODEL), layers=tuple(layers),
                     predicted={"decode": {"latency_ms": 1.0, "baseline_ms": 2.0, "speedup": 2.0}},
                     objective=0.5, constraints={"speedup": 2.0}, solver={"name": "highs"})


def _profile():
    w = Workload(name="decode-b1-c1k", phase="decode", batch_size=1, seq_len=1024)
    e = ProfileEntry(layer=0, candidate=Candidate.of("swa", {"window": 64}), workload=w.name, latency_ms=0.5,
                     p20_ms=0.4, p80_ms=0.6, status="ok", cache_bytes=100)
    oom = ProfileEntry(layer=1, candidate=Candidate.of("gqa"), workload=w.name, latency_ms=None, p20_ms=None,
                       p80_ms=None, status="oom", cache_bytes=100, reason="CUDA out of memory")
    check = {"assignment": "mix A", "pattern": "SG", "workload": w.name, "predicted_ms": 2.9, "measured_ms": 3.1,
             "error_pct": -6.45}
    teacher = (Candidate.of("gqa"), Candidate.of("swa", {"window": 64}), Candidate.of("gqa"))
    return LatencyProfile(header=Header.new(MODEL, env={"device": "cpu"}), workloads=(w,),
                          baseline_ms={w.name: 3.0}, fixed_ms={w.name: 0.5}, entries=(e, oom), teacher=teacher,
                          validation=(check,))


def _table():
    e = SensitivityEntry(layer=2, candidate=Candidate.of("mla", {"rank": 8}), kl=0.1, delta_loss=0.02,
                         align_steps=50, extra={"block_influence": 0.3})
    return SensitivityTable(header=Header.new(MODEL), metric="kl", data={"source": "self"}, entries=(e,))


def _library():
    e = LibraryEntry(layer=1, candidate=Candidate.of("gdn"), align_steps=20, fingerprint="f" * 16, extra={"mse": 0.1})
    return CandidateLibrary(header=Header.new(MODEL), scores_sha256="c" * 64, entries=(e,))


def _pareto():
    point = {"target_speedup": 1.5, "feasible": True, "objective": 0.25, "pattern": "GSD",
             "layers": ["gqa", "swa:window=64", "gdn"], "predicted": {}, "seconds": 0.1, "mip_gap": 0.0}
    return Pareto(header=Header.new(MODEL), constraints={"workloads": ["decode-b1-c1k"]}, speedups=(1.5, 9.0),
                  points=(point, {"target_speedup": 9.0, "feasible": False}))


def _record():
    return DistillRecord(header=Header.new(MODEL), settings={"teacher": "tiny", "lr": 3e-4}, trainable_parameters=7,
                         losses=({"step": 1, "stage": "offpolicy", "loss": 2.5},), eval=None,
                         quality={"before": {"kl": 0.5}, "after": None})


def _search():
    row = {"index": 0, "origin": "mip-1", "pattern": "GSD", "layers": ["gqa", "swa:window=64", "gdn"], "pins": {},
           "fidelity": "high", "tokens": 512, "predicted_kl": 0.25, "measured_kl": 0.3, "predicted": {},
           "seconds": 1.5}
    return SearchRecord(header=Header.new(MODEL), constraints={"speedup": 1.5}, settings={"seed": 0},
                        evaluations=(row,), best=0)


MAKERS = {LatencyProfile: _profile, SensitivityTable: _table, CandidateLibrary: _library, LayerPlan: _plan,
          Pareto: _pareto, SearchRecord: _search, DistillRecord: _record}


@pytest.mark.parametrize("make,load", [(_plan, load_plan), (_profile, load_profile),
                                       (_table, load_sensitivity)])
def test_round_trip(tmp_path, make, load):
    artifact = make()
    path = save(artifact, tmp_path / "a.json")
    text = path.read_text()
    assert json.loads(text)["kind"] == artifact.kind and json.loads(text)["schema_version"] == artifact.version
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert load(path) == artifact
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp files left behind
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others, like any file the user writes


def test_plan_json_has_pattern_and_structured_candidates(tmp_path):
    obj = json.loads(save(_plan(), tmp_path / "p.json").read_text())
    assert obj["pattern"] == "GSD"
    assert obj["layers"][1] == {"op": "swa", "params": {"window": 64}}
    assert obj["model"]["num_hidden_layers"] == 3 and obj["created_by"]


def test_pattern_marks_a_changed_mlp_in_lower_case():
    from mosaic_search.operators import pattern_string

    g, s = Candidate.of("gqa"), Candidate.of("swa", {"window": 64})
    narrow, none = Candidate.parse("mlp:width=32"), Candidate.of("nomlp")
    assert pattern_string([g, g.with_mlp(narrow), s.with_mlp(none), s]) == "GgsS"
    assert pattern_string([g, g.with_mlp(narrow)]) != pattern_string([g, g])


def _write(tmp_path, obj, text=None):
    p = tmp_path / "x.json"
    p.write_text(text if text is not None else json.dumps(obj))
    return p


def _plan_obj(tmp_path):
    return json.loads(save(_plan(), tmp_path / "good.json").read_text())


@pytest.mark.parametrize("mutate,message", [
    (lambda o: o.update(kind="mosaic/latency-profile"), 'expected "mosaic/layer-plan", got "mosaic/latency-profile"'),
    (lambda o: o.update(schema_version=99), "version 99 is newer than this mosaic reads"),
    (lambda o: o["layers"][0].update(op="gqaa"), 'layers\\[0\\]: unknown operator "gqaa" \\(did you mean "gqa"\\?\\)'),
    (lambda o: o["layers"].pop(), "x.json: layers: has 2 entries but model.num_hidden_layers in the same file says 3"),
    (lambda o: o["model"].update(num_hidden_layers=8), "layers: has 3 entries but model.num_hidden_layers in the same "
                                                       "file says 8 .*; one of the two was edited"),
    (lambda o: o.update(pattern="GGD"), 'x.json: pattern: "GGD" contradicts the layers in the same file, which spell '
                                        '"GSD"'),
    (lambda o: o["layers"][2].update(op="gqa", params={}), 'pattern: "GSD" contradicts the layers .* spell "GSG"'),
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
        load_plan(_write(tmp_path, obj))


def test_truncated_and_missing_files(tmp_path):
    text = save(_plan(), tmp_path / "p.json").read_text()
    with pytest.raises(UsageError, match="not valid JSON .* truncated"):
        load_plan(_write(tmp_path, None, text[: len(text) // 2]))
    with pytest.raises(UsageError, match="no such file"):
        load_plan(tmp_path / "missing.json")


def test_plan_for_a_model_of_another_depth(tmp_path):
    path = save(_plan(), tmp_path / "p.json")
    with pytest.raises(UsageError, match="target model has 36 layers"):
        load_plan(path, num_layers=36)


def test_profile_entry_for_undeclared_workload(tmp_path):
    obj = json.loads(save(_profile(), tmp_path / "p.json").read_text())
    obj["entries"][0]["workload"] = "prefill-32k"
    with pytest.raises(UsageError, match='entries\\[0\\].workload: "prefill-32k" is not a declared workload'):
        load_profile(_write(tmp_path, obj))


def test_profile_validation_row_for_undeclared_workload(tmp_path):
    obj = json.loads(save(_profile(), tmp_path / "p.json").read_text())
    obj["validation"][0]["workload"] = "prefill-32k"
    with pytest.raises(UsageError, match='validation\\[0\\].workload: "prefill-32k" is not a declared workload'):
        load_profile(_write(tmp_path, obj))


def test_a_profile_without_validation_loads(tmp_path):
    obj = json.loads(save(_profile(), tmp_path / "p.json").read_text())
    del obj["validation"]  # written before profiles carried their additivity check
    assert load_profile(_write(tmp_path, obj)).validation == ()


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = save(_plan(), tmp_path / "p.json")
    before = path.read_text()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)  # the temporary file is written, then the disk is full
    with pytest.raises(OSError):
        save(_plan(), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_stale_model_check():
    other = ModelRef(id="Qwen/Qwen3-4B", config_sha256="cd" * 32, num_hidden_layers=36)
    from mosaic_search.errors import StaleInputError

    with pytest.raises(StaleInputError, match="`allow_stale`"):
        check_same_model(MODEL, other, "profile.json")
    check_same_model(MODEL, other, "profile.json", allow_stale=True)


def test_every_kind_is_registered_once_and_round_trips(tmp_path):
    """The KINDS table lists every record class the tests know, and each loads back equal, through its kind."""
    assert set(KINDS.values()) == set(MAKERS) and len(KINDS) == len(MAKERS)
    for record, make in MAKERS.items():
        artifact = make()
        assert KINDS[artifact.kind] is record
        assert load_any(save(artifact, tmp_path / "a.json")) == artifact


@pytest.mark.parametrize("record", list(MAKERS), ids=lambda r: r.kind)
def test_every_kind_refuses_another_kind_and_a_newer_version_naming_both(tmp_path, record):
    obj = to_json(MAKERS[record]())
    other = next(k for k in KINDS if k != record.kind)
    with pytest.raises(UsageError, match=f'kind: expected "{record.kind}", got "{other}"'):
        load(record, _write(tmp_path, {**obj, "kind": other}))
    newer = record.version + 1
    with pytest.raises(UsageError, match=f"{record.kind} version {newer} is newer than this mosaic reads "
                                         f"\\({record.version}\\)"):
        load(record, _write(tmp_path, {**obj, "schema_version": newer}))
    with pytest.raises(UsageError, match=f"{record.kind} version 0 is not one this mosaic reads"):
        load(record, _write(tmp_path, {**obj, "schema_version": 0}))
    with pytest.raises(UsageError, match='"mosaic/unknown" is not an artifact kind this mosaic reads'):
        load_any(_write(tmp_path, {**obj, "kind": "mosaic/unknown"}))


def test_a_version_1_profile_loads_with_its_teacher_all_gqa(tmp_path):
    """Version 1 did not record the teacher's operators; its teachers were all gqa. Such a file (as version 1 wrote
    it: no `teacher`) loads as that, and predicts the teacher's latency from its gqa layers as it always did."""
    new = _profile()
    old = to_json(new)
    old.update(schema_version=1)
    del old["teacher"]
    loaded = load_profile(_write(tmp_path, old))
    assert loaded.teacher == (Candidate.of("gqa"),) * 3
    assert loaded == LatencyProfile(**{**vars(new), "teacher": (Candidate.of("gqa"),) * 3})
    assert json.loads(save(loaded, tmp_path / "v3.json").read_text())["schema_version"] == 3


def test_a_version_2_profile_must_list_every_layer_of_its_teacher(tmp_path):
    obj = to_json(_profile())
    obj["teacher"].pop()
    with pytest.raises(UsageError, match="teacher: has 2 entries but model.num_hidden_layers in the same file says 3"):
        load_profile(_write(tmp_path, obj))
    del obj["teacher"]
    with pytest.raises(UsageError, match="teacher: missing field"):
        load_profile(_write(tmp_path, obj))


@pytest.mark.parametrize("make, old", [(_profile, 2), (_plan, 1)], ids=["profile", "plan"])
def test_files_before_the_mlp_axis_load_as_they_are(tmp_path, make, old):
    """Profile 3 and plan 2 added MLP candidates (and the profile its weight bytes); a file of the version before,
    which has neither, loads unchanged and is written back at the current version."""
    new = make()
    loaded = load(type(new), _write(tmp_path, {**to_json(new), "schema_version": old}))
    assert loaded == new
    assert to_json(loaded)["schema_version"] == type(new).version == old + 1


def test_a_layer_with_an_mlp_and_weight_bytes_round_trip(tmp_path):
    mlp = Candidate.of("mlp", {"width": 96})
    plan = _plan((Candidate.of("gqa").with_mlp(mlp), Candidate.of("gqa"), Candidate.of("gdn").with_mlp(
        Candidate.of("nomlp"))))
    assert to_json(plan)["layers"][0] == {"op": "gqa", "params": {}, "mlp": {"op": "mlp", "params": {"width": 96}}}
    assert load_plan(save(plan, tmp_path / "plan.json")) == plan
    prof = LatencyProfile(**{**vars(_profile()), "weight_bytes": ((Candidate.of("gqa"), 1000), (mlp, 600)),
                             "fixed_weight_bytes": 5000})
    assert load_profile(save(prof, tmp_path / "p.json")) == prof
    obj = to_json(prof)
    del obj["fixed_weight_bytes"]
    with pytest.raises(UsageError, match="fixed_weight_bytes: missing field"):
        load_profile(_write(tmp_path, obj))


def test_a_version_1_distill_record_takes_its_model_from_the_plan_beside_it(tmp_path):
    """Version 1 wrote the settings at the top level and no `model`; the folder's plan names the model."""
    record = _record()
    old = {k: v for k, v in to_json(record).items() if k not in ("model", "settings", "env", "inputs")}
    old.update(schema_version=1, **record.settings)
    (tmp_path / RECORD_FILE).write_text(json.dumps(old))
    with pytest.raises(UsageError, match=f"version 1 needs the plan beside it: .*{PLAN_FILE}: no such file"):
        load_distill_record(tmp_path)
    save(_plan(), tmp_path / PLAN_FILE)
    loaded = load_distill_record(tmp_path)
    assert loaded.header.model == MODEL and loaded.settings == record.settings
    assert (loaded.losses, loaded.quality, loaded.trainable_parameters) == (record.losses, record.quality, 7)


def test_distill_record_fields_are_checked(tmp_path):
    obj = to_json(_record())
    obj["losses"][0]["loss"] = "high"
    (tmp_path / RECORD_FILE).write_text(json.dumps(obj))
    with pytest.raises(UsageError, match="losses\\[0\\].loss: expected float, got str"):
        load_distill_record(tmp_path)
    with pytest.raises(UsageError, match="not a model written by mosaic distill: .*no such file"):
        load_distill_record(tmp_path / "elsewhere")
