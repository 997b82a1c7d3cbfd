"""The timed model that profile, bench and validation share: decode steps on the shipped static cache, compiled
steps equal to eager ones, layers swapped in place."""

from __future__ import annotations

import pytest
import torch
from conftest import every_operator

from mosaic_search.artifacts.profile import parse_workload
from mosaic_search.latency.harness import load_bench
from mosaic_search.operators import Candidate


def _timed_decode(layers):
    """(the timed decode step at 40 tokens of `layers` in the profiler's bench, the cache it runs on)"""
    _, bench = load_bench("tiny", "cpu")
    bench.assign(layers)
    caches = []
    real = bench.decode_cache
    bench.decode_cache = lambda context: caches.append(real(context)) or caches[-1]
    return bench.model_fn(parse_workload("decode:40")), caches


def test_decode_step_is_timed_on_the_shipped_static_cache():
    """A timed decode step runs on the static cache a built model's generate uses: transformers' own slots, a
    window for SWA, a fixed state for GDN, each attention slot rewound to 40 tokens before every step."""
    layers = [Candidate.of("swa", {"window": 8}), Candidate.of("gdn")] + [Candidate.of("gqa")] * 6
    step, caches = _timed_decode(layers)
    with torch.no_grad():
        step()
        shapes = [s.keys.shape for s in caches[0].layers if getattr(s, "keys", None) is not None]
        step()
    slots = caches[0].layers
    assert [type(s).__name__ for s in slots[:3]] == ["StaticSlidingWindowLayer", "LinearAttentionLayer", "StaticLayer"]
    assert slots[0].keys.shape[-2] == 8 and slots[2].keys.shape[-2] == 41
    assert [s.keys.shape for s in slots if getattr(s, "keys", None) is not None] == shapes
    assert slots[1].recurrent_states[0].shape == (1, 4, 32, 32)
    assert slots[2].get_seq_length() == 41  # the step wrote token 40, after a rewind to 40


def test_a_rewound_full_attention_step_replays_exactly():
    step, _ = _timed_decode([Candidate.of("gqa"), Candidate.of("none")] + [Candidate.of("gqa")] * 6)
    with torch.no_grad():
        torch.testing.assert_close(step(), step(), rtol=0, atol=0)


def _mixed_bench(compile_decode):
    _, bench = load_bench("tiny", "cpu", compile_decode=compile_decode)
    layers = [c for c in every_operator(window=16) if c.spec.fast_path()[0]]
    bench.assign(layers)
    return bench


def _first_step(bench, make):
    torch.manual_seed(5)  # same inputs and same random cache contents for both benches
    fn = make(bench)
    with torch.inference_mode():
        return fn()


@pytest.mark.slow
@pytest.mark.parametrize("part", ["model", "layers", "fixed"])
def test_compiled_decode_step_computes_what_the_eager_step_does(monkeypatch, part):
    """Dynamo's tracing of every part of a decode step (inductor's code generation is the GPU test's)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    w = parse_workload("decode:40")
    make = {"model": lambda b: b.model_fn(w), "layers": lambda b: b.layers_fn(3, w), "fixed": lambda b: b.fixed_fn(w)}
    compiled = _mixed_bench(True)
    got = _first_step(compiled, make[part])
    assert compiled.fallbacks == []
    torch.testing.assert_close(got, _first_step(_mixed_bench(False), make[part]), rtol=0, atol=0)


def test_a_decode_step_that_fails_to_compile_falls_back_to_eager_and_says_so(monkeypatch):
    def broken(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("inductor exploded")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    w = parse_workload("decode:40")
    bench = _mixed_bench(True)
    got = _first_step(bench, lambda b: b.model_fn(w))
    assert bench.fallbacks == ["model decode-b1-c40: inductor exploded"]
    torch.testing.assert_close(got, _first_step(_mixed_bench(False), lambda b: b.model_fn(w)), rtol=0, atol=0)


def test_assign_swaps_only_the_layers_that_change_and_builds_each_mixer_once(monkeypatch):
    from mosaic_search.hf import surgery

    _, bench = load_bench("tiny", "cpu")
    built, installed = [], []
    real_build, real_install = surgery.build_mixer, surgery.install
    monkeypatch.setattr(surgery, "build_mixer", lambda m, i, c, *w: built.append((i, str(c))) or
                        real_build(m, i, c, *w))
    monkeypatch.setattr(surgery, "install", lambda m, i, c, *mods: installed.append((i, str(c))) or
                        real_install(m, i, c, *mods))
    gdn, teacher = Candidate.of("gdn"), list(bench.teacher)
    bench.assign([gdn, gdn])
    assert installed == built == [(0, "gdn"), (1, "gdn")]
    assert bench.current[:2] == [gdn, gdn] and bench.layer_types[:2] == ["linear_attention"] * 2
    bench.assign(teacher)
    bench.assign([gdn, gdn])
    assert built == [(0, "gdn"), (1, "gdn"), (0, "gqa"), (1, "gqa")]  # the gdn mixers were reinstalled, not rebuilt
    assert len(installed) == 6 and bench.current[2:] == teacher[2:]
