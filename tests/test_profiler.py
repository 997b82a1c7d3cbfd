"""The profiler: workloads, entries for every layer, OOM handling, validation and bad input (injected timers)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import WorkTimer

from mosaic_search.artifacts.profile import load_profile, parse_workload, workload_from_name
from mosaic_search.cli import main
from mosaic_search.errors import UsageError
from mosaic_search.latency import harness, profiler
from mosaic_search.operators import REGISTRY, Candidate


class ParamTimer:
    """Deterministic: runs the closure once, then reports a time proportional to the parameters it touched.

    Which module ran is recovered from the closure's cell contents, so costs differ by candidate."""

    def __init__(self, oom_for=None):
        self.oom_for = oom_for
        self.calls = []

    def __call__(self, fn, phase):
        with torch.no_grad():
            fn()
        layer = _module_in_closure(fn)  # a decoder layer, or the run of layers a sample holds
        first = layer[0] if isinstance(layer, torch.nn.ModuleList) else layer
        self.calls.append((type(getattr(first, "self_attn", first)).__name__, phase))
        if self.oom_for and self.calls[-1][0] == self.oom_for:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        size = sum(p.numel() for p in layer.parameters()) if layer is not None else 1000
        return [size / 1e5, size / 1e5 * 1.02, size / 1e5 * 0.99]


def _module_in_closure(fn, depth=3):
    """The first nn.Module among fn's closure cells, looking through closures of closed-over functions."""
    for cell in fn.__closure__ or ():
        value = cell.cell_contents
        if isinstance(value, torch.nn.Module):
            return value
        if callable(value) and getattr(value, "__closure__", None) and depth:
            found = _module_in_closure(value, depth - 1)
            if found is not None:
                return found
    return None


OPS = "gqa,swa:window=16,gdn,none,drop"


def test_parse_workloads():
    w = parse_workload("decode:96k:b8")
    assert (w.name, w.phase, w.batch_size, w.seq_len) == ("decode-b8-c96k", "decode", 8, 98304)
    assert parse_workload("prefill:300").name == "prefill-b1-p300"
    assert workload_from_name("prefill-b8-p4k") == parse_workload("prefill:4k:b8")
    for bad in ("prefil:4k", "decode:4k:8", "decode:", "decode:0"):
        with pytest.raises(UsageError):
            parse_workload(bad)


def test_profile_records_every_layer_candidate_and_workload(tmp_path):
    out = tmp_path / "p.json"
    prof = profiler.profile("tiny", ops=OPS, workloads=["prefill:32", "decode:64"], out=out, timer=ParamTimer())
    n = prof.header.model.num_hidden_layers
    assert len(prof.entries) == n * 5 * 2
    assert {(e.layer, str(e.candidate), e.workload) for e in prof.entries} == {
        (layer, c, w) for layer in range(n) for c in OPS.split(",") for w in ("prefill-b1-p32", "decode-b1-c64")}
    assert load_profile(out) == prof
    lat = {(str(e.candidate), e.workload): e.latency_ms for e in prof.entries if e.layer == 3}
    # the timer's cost is the layer's parameter count: a skipped layer costs nothing, no attention is cheaper
    assert lat[("drop", "decode-b1-c64")] == 0 < lat[("none", "decode-b1-c64")] < lat[("gqa", "decode-b1-c64")]
    assert set(prof.baseline_ms) == set(prof.fixed_ms) == {"prefill-b1-p32", "decode-b1-c64"}
    cache = {str(e.candidate): e.cache_bytes for e in prof.entries if e.layer == 0 and e.workload == "decode-b1-c64"}
    assert cache["gqa"] > cache["swa:window=16"] > 0 == cache["none"] == cache["drop"]
    assert prof.header.env["device"] == "cpu" and prof.header.env["torch"] == torch.__version__


def test_a_window_covering_the_context_takes_gqas_timing(tmp_path):
    """swa:window=64 at decode c64 attends to 65 tokens: measured; at prefill p32 it is full attention: gqa's
    entry, not a second noisy measurement of the same work (which could win a plan a layer on noise)."""
    calls = []

    def timer(fn, kind):
        calls.append(kind)
        return [float(len(calls))]  # every sample differs: equal entries can only be shared ones

    prof = profiler.profile("tiny", ops="gqa,swa:window=64", workloads=["prefill:32", "decode:64"],
                            out=tmp_path / "p.json", timer=timer, rounds=1)
    ms = {(str(e.candidate), e.workload): e.latency_ms for e in prof.entries if e.layer == 0}
    assert ms["swa:window=64", "prefill-b1-p32"] == ms["gqa", "prefill-b1-p32"]
    assert ms["swa:window=64", "decode-b1-c64"] != ms["gqa", "decode-b1-c64"]
    assert profiler.covers_context(Candidate.of("swa", {"window": 65}), parse_workload("decode:64"))


def test_out_of_memory_is_recorded_and_profiling_goes_on(tmp_path):
    prof = profiler.profile("tiny", ops="gqa,gdn,none", workloads=["decode:64"], out=tmp_path / "p.json",
                            timer=ParamTimer(oom_for="GatedDeltaNet"))
    status = {str(e.candidate): (e.status, e.latency_ms, e.reason) for e in prof.entries if e.layer == 0}
    assert status["gdn"][0] == "oom" and status["gdn"][1] is None and "out of memory" in status["gdn"][2]
    assert status["gqa"][0] == status["none"][0] == "ok"


@pytest.mark.slow
def test_default_candidates_and_cpu_workloads(tmp_path):
    timer = ParamTimer()
    prof = profiler.profile("tiny", out=tmp_path / "p.json", timer=timer)
    ops = {e.candidate.op for e in prof.entries}
    assert ops == set(REGISTRY)  # every registered operator, both axes
    assert [w.name for w in prof.workloads] == [parse_workload(s).name for s in profiler.CPU_WORKLOADS]


def test_validation_compares_prediction_with_whole_model(tmp_path):
    timer = ParamTimer()
    prof = profiler.profile("tiny", ops="gqa,none", workloads=["decode:32"], out=tmp_path / "p.json", timer=timer)
    rows = profiler.validate(prof, "tiny", timer=timer)
    assert {r["assignment"] for r in rows} == {"teacher (all gqa)", "mix A", "mix B"}
    for r in rows:
        assert r["error_pct"] == pytest.approx(100 * (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"])


@pytest.mark.parametrize("paired", [True, False])
def test_paired_timing_cancels_a_drifting_machine(tmp_path, paired):
    """Speed changing 3x between measurements: timed against the teacher a moment earlier, fixed + sum of
    layers predicts every whole model exactly; timed apart, the prediction is off by the drift."""
    prof = profiler.profile("tiny", ops="gqa,none,swa:window=16", workloads=["prefill:32", "decode:64"],
                            out=tmp_path / "p.json", timer=WorkTimer(paired=paired), rounds=2, validate=True)
    assert prof.header.env["paired"] is paired
    assert {r["assignment"] for r in prof.validation} == {"teacher (all gqa)", "mix A", "mix B"}
    assert len(prof.validation) == 3 * 2 and load_profile(tmp_path / "p.json") == prof
    worst = max(abs(r["error_pct"]) for r in prof.validation)
    if paired:
        assert worst < 1e-6
        for w in prof.workloads:  # the teacher is its fixed part plus its layers, at the reference's scale
            assert prof.teacher_ms(w.name) == pytest.approx(prof.baseline_ms[w.name])
    else:
        assert worst > 10  # the CPU target


def test_validating_a_profile_later_uses_its_scale(tmp_path):
    """`validate` of an existing profile: the whole models, timed against a teacher a moment earlier, come
    out on the profile's scale however fast the machine is now."""
    prof = profiler.profile("tiny", ops="gqa,none", workloads=["decode:32"], out=tmp_path / "p.json",
                            timer=WorkTimer())
    rows = profiler.validate(prof, "tiny", timer=WorkTimer(speeds=(5.0, 0.5)))
    assert {r["assignment"] for r in rows} == {"teacher (all gqa)", "mix A", "mix B"}
    for r in rows:
        assert r["error_pct"] == pytest.approx(100 * (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"])
        assert abs(r["error_pct"]) < 1e-6


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_each_sample_runs_the_candidate_in_that_many_layers(tmp_path, depth):
    timer = WorkTimer(paired=False, speeds=(1.0,))
    prof = profiler.profile("tiny", ops="gqa,gdn", workloads=["decode:32"], out=tmp_path / "p.json", timer=timer,
                            rounds=1, layers_per_sample=depth)
    assert prof.header.env["layers_per_sample"] == depth
    assert sorted(seen["GatedDeltaNet"] for seen in timer.seen) == [0, 0, 0, depth]  # baseline, fixed, gqa, gdn
    lat = {str(e.candidate): e.latency_ms for e in prof.entries if e.layer == 0}
    one = WorkTimer(paired=False, speeds=(1.0,))
    profiler.profile("tiny", ops="gqa,gdn", workloads=["decode:32"], out=tmp_path / "one.json", timer=one,
                     rounds=1, layers_per_sample=1)
    assert lat == pytest.approx({str(e.candidate): e.latency_ms for e in load_profile(tmp_path / "one.json")
                                 .entries if e.layer == 0})  # an entry is one layer's cost whatever the depth


def test_call_counts_fill_their_time_within_bounds():
    from mosaic_search.latency.timing import calls_to_fill, sample_count

    assert calls_to_fill(0.003, 20, 1.0, cap=1000) == 333  # a CUDA-graph replay of a dropped layer
    assert calls_to_fill(0.1, 20, 1.0, cap=1000) == 20  # a real layer already spans the minimum
    assert calls_to_fill(0.0, 20, 1.0, cap=1000) == 1000
    assert calls_to_fill(80.0, 0, 50.0, cap=1000) == 0  # a long first call is warm-up enough
    assert sample_count(100.0, 9, 500.0) == 5 and sample_count(1000.0, 9, 500.0) == 3 and sample_count(1.0, 9, 500.0) == 9


def test_cpu_timer_pairs_alternate_reference_and_step():
    from mosaic_search.latency.timing import CpuTimer

    calls = []
    pairs = CpuTimer(repeats=4, warm_ms=0).pairs(lambda: calls.append("ref"), lambda: calls.append("fn"))
    assert len(pairs) == 4 and all(ref > 0 and ms > 0 for ref, ms in pairs)
    assert calls == ["ref", "fn"] * 5  # the first pair, then the samples
    calls.clear()
    alone = CpuTimer(repeats=4, warm_ms=0)(lambda: calls.append("fn"))
    assert len(alone) == 4 and all(ms > 0 for ms in alone) and calls == ["fn"] * 5


@pytest.mark.parametrize("args,message", [
    (["--ops", "gqa,swq"], 'unknown operator "swq" (did you mean "swa"?)'),
    (["--ops", "swa:window=0"], "window must be a positive integer"),
    (["--ops", "mla:rnk=4"], 'unknown param "rnk"'),
    (["--workload", "decode:lots"], 'cannot parse workload "decode:lots"'),
    (["--device", "cuda"], "device cuda is not available"),
    (["--device", "tpu"], 'unknown device "tpu"'),
    (["--layers-per-sample", "9"], "--layers-per-sample must be 1..8 (the model's layers), got 9"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "p.json"
    assert main(["profile", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_profile_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mosaic_search.latency.timing.default_timer", lambda device: ParamTimer())
    out = tmp_path / "p.json"
    assert main(["profile", "--ops", "gqa,none", "--workload", "decode:32", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == str(out)
    assert load_profile(out).entries


def test_cli_profile_validate_reports_and_stores_the_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mosaic_search.latency.timing.default_timer", lambda device: WorkTimer())
    out = tmp_path / "p.json"
    args = ["profile", "--ops", "gqa,none", "--workload", "decode:32", "--out", str(out), "--validate"]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["validation"]
    assert [r["assignment"] for r in rows] == ["teacher (all gqa)", "mix A", "mix B"]
    assert [r["pattern"] for r in rows][0] == "GGGGGGGG" and list(load_profile(out).validation) == rows
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "additivity: fixed + sum of layers vs whole model" in text and "GGGGGGGG" in text


def test_rounds_pool_samples_so_one_slow_pass_does_not_decide(tmp_path):
    """A machine slow for the whole first pass (a noisy neighbour) is outvoted by the later passes."""
    per_round = 2 * (2 + 2)  # workloads x (baseline, fixed, 2 candidates)
    calls = []

    def timer(fn, phase):
        calls.append(phase)
        return [50.0] if len(calls) <= per_round else [1.0]

    prof = profiler.profile("tiny", ops="gqa,none", workloads=["prefill:32", "decode:64"], out=tmp_path / "p.json",
                            timer=timer, rounds=3, layers_per_sample=1)
    assert len(calls) == 3 * per_round and prof.header.env["rounds"] == 3
    assert {e.latency_ms for e in prof.entries} == {1.0} and set(prof.baseline_ms.values()) == {1.0}
    assert {e.p80_ms for e in prof.entries} == {50.0}  # the slow pass still shows in the spread


def test_a_vlm_prefill_includes_encoding_the_stated_image(tmp_path):
    """Qwen3-VL: the fixed part and the whole model of a prefill also run the vision tower, on exactly the
    stated number of image tokens per sequence; decode and the layers do not."""
    from conftest import tiny_config

    from mosaic_search.hf.models import model_from_config

    teacher = tmp_path / "vl"
    model_from_config(tiny_config("qwen3_vl")).save_pretrained(teacher)
    _, bench = harness.load_bench(str(teacher), "cpu", image_tokens=6)
    seen = []
    inner = bench.model.model
    real = inner.get_image_features
    inner.get_image_features = lambda pixels, grid: seen.append(grid.tolist()) or real(pixels, grid)
    w = parse_workload("prefill:16:b2")
    with torch.no_grad():
        bench.fixed_fn(w)()
        bench.model_fn(w)()
        bench.layers_fn(1, w)()
        bench.model_fn(parse_workload("decode:16"))()
    merge = bench.model.config.vision_config.spatial_merge_size
    assert len(seen) == 2  # fixed part and whole-model prefill only
    for grids in seen:
        assert len(grids) == 2 and all(t * h * w_ // merge ** 2 == 6 for t, h, w_ in grids)
    prof = profiler.profile(str(teacher), ops="gqa", workloads=["prefill:16"], out=tmp_path / "p.json",
                            timer=ParamTimer(), image_tokens=6)
    assert prof.header.env["image_tokens"] == 6


def test_image_tokens_for_a_text_only_model_is_one_line_exit_2(tmp_path, capsys):
    assert main(["profile", "--image-tokens", "64", "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "text-only" in err and not (tmp_path / "p.json").exists()


def test_weight_bytes_are_counted_on_the_meta_device_exactly():
    """tiny (hidden 128, 4 query / 2 KV heads of 32, MLP 384, vocab 259, tied head): every candidate's layer weights
    and the fixed part, at bf16, are its parameter count x 2, and a float32 model built for real counts the same
    parameters (x 4)."""
    ops = "gqa,gqa:kv_heads=1,none,drop,nomlp,mlp:width=96"
    weights, fixed = profiler.count_weight_bytes("tiny", ops, dtype="bfloat16")
    attn = 128 * 128 + 2 * 128 * 64 + 128 * 128 + 2 * 32  # q, k, v, o, q/k norms
    norms, mlp = 2 * 128, 3 * 128 * 384
    params = {"gqa": attn + norms + mlp, "gqa:kv_heads=1": attn - 2 * 128 * 32 + norms + mlp, "none": norms + mlp,
              "drop": 0, "nomlp": attn + norms, "mlp:width=96": attn + norms + 3 * 128 * 96}
    assert {str(c): n for c, n in weights} == {k: 2 * v for k, v in params.items()}
    assert fixed == 2 * (259 * 128 + 128)  # tied embedding once, final norm
    _, bench = harness.load_bench("tiny", "cpu", "float32")
    real, real_fixed = profiler.weight_bytes(bench, [c for c, _ in weights])
    assert [2 * n for _, n in weights] == [n for _, n in real] and 2 * fixed == real_fixed


def test_a_vlms_fixed_weight_bytes_hold_its_vision_tower(tmp_path):
    from conftest import tiny_config

    from mosaic_search.hf.models import model_from_config

    model = model_from_config(tiny_config("qwen3_vl"))
    model.save_pretrained(tmp_path / "vl")
    layers = {id(p) for layer in model.model.language_model.layers for p in layer.parameters()}
    rest = sum(p.numel() for p in model.parameters() if id(p) not in layers)  # parameters() yields a tied one once
    assert sum(p.numel() for p in model.model.visual.parameters()) > 0
    assert profiler.count_weight_bytes(str(tmp_path / "vl"), "gqa")[1] == 2 * rest


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_count_weight_bytes_refuses_an_unknown_dtype(dtype):
    with pytest.raises(UsageError, match=f'^dtype must be one of float32, bfloat16, float16, got "{dtype}"'):
        profiler.count_weight_bytes("tiny", "gqa", dtype=dtype)
