"""The MLP axis: narrower and removed MLPs as candidates through registry, surgery, scoring, solving and building."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch
from conftest import tiny_model

from mosaic_search import builder
from mosaic_search.artifacts.header import Header, ModelRef, save, to_json
from mosaic_search.artifacts.plan import LayerPlan
from mosaic_search.artifacts.profile import LatencyProfile, ProfileEntry, Workload
from mosaic_search.artifacts.sensitivity import SensitivityEntry, SensitivityTable
from mosaic_search.errors import UsageError
from mosaic_search.hf import data, surgery
from mosaic_search.hf.models import load_config, load_model
from mosaic_search.modeling.dims import ModelDims
from mosaic_search.operators import Candidate, parse_candidates, unbuildable
from mosaic_search.operators.mlp import widths
from mosaic_search.operators.teacher import channel_importance, importance_order
from mosaic_search.quality import scorer
from mosaic_search.quality.library import library_path, load_library_entry
from mosaic_search.search import problem, solver

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grammar_defaults_and_bad_widths():
    """Composite choices print, parse and serialise both ways; the defaults are 3/4, 1/2, 1/4 of the teacher's width
    on the multiple; a width above the teacher's, not positive, or off the multiple is one line naming valid values."""
    c = Candidate.parse("swa:window=128+mlp:width=192")
    assert str(c) == "swa:window=128+mlp:width=192" and c.label == "swa:128+mlp:192"
    assert Candidate.parse(c.label) == c and c.mixer == Candidate.of("swa", {"window": 128})
    assert c.mlp_candidate == Candidate.of("mlp", {"width": 192}) and c.window == 128
    assert c.to_json() == {"op": "swa", "params": {"window": 128}, "mlp": {"op": "mlp", "params": {"width": 192}}}
    assert Candidate.parse("gqa+nomlp").mlp_candidate == Candidate.of("nomlp")
    dims = load_config("tiny")
    tiny = ModelDims(128, 4, 2, 32, 8, 384, 97, True, False, 1e-6)
    assert widths(tiny) == [288, 192, 96]
    assert [str(c) for c in parse_candidates("mlp,nomlp", tiny)] == [
        "mlp:width=288", "mlp:width=192", "mlp:width=96", "nomlp"]
    for text, why in (("mlp:width=512", "at most 384"), ("mlp:width=0", "positive integer"),
                      ("mlp:width=100", "multiple of 32 up to the teacher's 384 (e.g. 288, 192, 96)"),
                      ("drop+mlp:width=96", "drop skips the whole layer"), ("mlp+nomlp", "a mixer with an MLP")):
        with pytest.raises(UsageError, match=why.replace("(", r"\(").replace(")", r"\)")):
            parse_candidates(text, tiny)
    assert dims.intermediate_size == 384
    assert "MLP candidate alone" in unbuildable([Candidate.of("gqa"), Candidate.of("nomlp")])


# ---- solve: both axes in one MIP ------------------------------------------------------------------

G, D, X = Candidate.of("gqa"), Candidate.of("gdn"), Candidate.of("drop")
W, O = Candidate.of("mlp", {"width": 96}), Candidate.of("nomlp")
WL = [Workload("decode-b1-c256", "decode", 1, 256)]


def _tables(layers=3, seed=0):
    import random

    rng = random.Random(seed)
    ref = ModelRef("org/tiny", "cfg", layers)
    lat = {(l, c): (10.0 if c == G else round(rng.uniform(1, 9), 3)) for l in range(layers) for c in (G, D, X, W, O)}
    loss = {(l, c): (0.0 if c == G else round(rng.uniform(0.01, 1), 4)) for l in range(layers) for c in (G, D, X, W, O)}
    cache = {G: 1000, D: 10, X: 0, W: 1000, O: 1000}
    entries = tuple(ProfileEntry(l, c, WL[0].name, lat[l, c], None, None, "ok", cache[c]) for (l, c) in lat)
    prof = LatencyProfile(Header.new(ref), tuple(WL), {WL[0].name: 2 + 10 * layers}, {WL[0].name: 2.0}, entries,
                          teacher=(G,) * layers)
    sens = SensitivityTable(Header.new(ref), "kl", {}, tuple(SensitivityEntry(l, c, loss[l, c], 0.0, 0)
                                                            for (l, c) in loss))
    return prof, sens, lat, loss


def test_choices_compose_both_axes_and_the_mip_is_exact():
    """Each layer offers every mixer and every mixer but drop with every MLP; a choice's loss is the sum of its axes'
    scores, its latency mixer + MLP - teacher, its cache the mixer's; the MIP's answer equals exhaustive search; with
    --ops naming no MLP, the space is the mixers alone."""
    prof, sens, lat, loss = _tables()
    p = problem.prepare(prof, sens, speedup=1.0, max_cache_bytes=10 ** 9)
    for l, cs in enumerate(p.choices):
        assert {ch.candidate for ch in cs} == {G, D, X, G.with_mlp(W), D.with_mlp(W), G.with_mlp(O), D.with_mlp(O)}
        ch = p.choice(l, D.with_mlp(O))
        assert ch.loss == loss[l, D] + loss[l, O] and ch.cache_bytes == 10
        assert ch.latency_ms[WL[0].name] == pytest.approx(lat[l, D] + lat[l, O] - lat[l, G])
    for target in (1.3, 2.0, 3.0):
        q = p.with_speedups(speedup=target)
        chosen, info = solver.run_mip(q)
        best = None
        for combo in itertools.product(*q.allowed):
            if unbuildable(combo) or problem.violations(q, list(combo), 1e-9):
                continue
            obj = sum(q.choice(l, c).loss for l, c in enumerate(combo))
            best = obj if best is None else min(best, obj)
        got = solver.verify(q, chosen, info.get("objective"))
        assert (chosen is None) == (best is None) and got["objective"] == pytest.approx(best, abs=1e-9)
    mixers = problem.prepare(prof, sens, speedup=1.0, ops="gqa,gdn,drop")
    assert all(ch.candidate.mlp_candidate is None for cs in mixers.choices for ch in cs)
    # a mixer with an MLP in --ops stands for its two parts, as in profile and score
    both = problem.prepare(prof, sens, speedup=1.0, ops="gdn+mlp:width=96,drop")
    assert [{ch.candidate for ch in cs} for cs in both.choices] == [{D, X, D.with_mlp(W)}] * 3
    plan = solver.solve(prof, sens, speedup=2.0, write=False)
    assert any(c.mlp for c in plan.layers) and to_json(plan)["layers"][0].keys() >= {"op", "params"}


# ---- surgery: every family's MLP narrows exactly ---------------------------------------------------

@pytest.mark.parametrize("kind", ["qwen3", "llama", "phi3", "gemma3_text", "qwen3_vl"])
def test_narrow_mlp_keeps_exactly_the_chosen_channels(kind):
    """At the teacher's full width, any channel order gives the teacher's logits (gate/up rows and down columns move
    together, Phi-3's fused gate_up_proj included); a narrower MLP computes the teacher's MLP over its channels only;
    nomlp adds nothing."""
    model = tiny_model(kind)
    full = surgery.teacher_mlp(model, 1)
    width = surgery.dims_of(model.config).intermediate_size
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits
        perm = torch.randperm(width, generator=torch.Generator().manual_seed(1))
        surgery.swap(model, 1, Candidate.of("mlp", {"width": width}), weights={"channels": perm})
        torch.testing.assert_close(model(ids).logits, want, rtol=1e-5, atol=1e-5)
        keep = perm[:32]
        mlp = surgery.swap(model, 1, Candidate.of("mlp", {"width": 32}), weights={"channels": keep})
        x = torch.randn(3, surgery.dims_of(model.config).hidden_size)
        drop = torch.ones(width, dtype=torch.bool)
        drop[keep] = False
        hook = full.down_proj.register_forward_pre_hook(lambda m, a: (a[0].masked_fill(drop, 0.0),))
        torch.testing.assert_close(mlp(x), full(x), rtol=1e-5, atol=1e-6)
        hook.remove()
        surgery.swap(model, 1, Candidate.parse("gqa+nomlp"))
        assert float(surgery.decoder_layers(model)[1].mlp(x).abs().max()) == 0.0
        surgery.restore(model, 1)
        torch.testing.assert_close(model(ids).logits, want, rtol=0, atol=0)


# ---- score and build: what is scored is what is shipped --------------------------------------------

SEQ = 32


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A 3-layer random Qwen3 teacher scored for a narrower and a removed MLP (and gdn, aligned)."""
    path = tmp_path_factory.mktemp("teacher") / "qwen3"
    tiny_model("qwen3").save_pretrained(path)
    out = path.parent / "s.json"
    table = scorer.score(str(path), data="self", ops="mlp:width=64,nomlp,gdn", tokens=2 * SEQ, seq_len=SEQ,
                         align_steps=2, out=out)
    return str(path), table, out


def test_scored_channels_are_the_measured_importance_prefix(scored):
    """The library keeps, per layer, the first 64 channels of the order |x_i| * ||W_down[:, i]|| with x the MLP's
    activation on the alignment windows; rebuilt from them the model scores what the table says; nomlp stores
    nothing."""
    teacher, table, out = scored
    model = load_model(teacher)
    n = 2
    windows = data.sample_from_teacher(model, n + scorer.ALIGN_WINDOWS, SEQ, 0)
    ids, align = windows[:n], windows[n:]
    sums, counts = {}, {}

    def hook(i):
        def fn(module, args):
            x = args[0].abs().double().reshape(-1, args[0].shape[-1])
            sums[i], counts[i] = sums.get(i, 0) + x.sum(0), counts.get(i, 0) + x.shape[0]
        return fn

    mlps = [surgery.teacher_mlp(model, i) for i in range(3)]
    handles = [m.down_proj.register_forward_pre_hook(hook(i)) for i, m in enumerate(mlps)]
    with torch.no_grad():
        model(align)
    for h in handles:
        h.remove()
    library = library_path(out)
    with torch.no_grad():
        p = torch.log_softmax(model(ids).logits[:, :-1].float(), -1)
        for layer in range(3):
            cand = Candidate.of("mlp", {"width": 64})
            weights = load_library_entry(library, layer, cand)
            want = importance_order(channel_importance(mlps[layer], sums[layer] / counts[layer]))[:64]
            assert torch.equal(weights["channels"], want)
            assert load_library_entry(library, layer, Candidate.of("nomlp")) is None
            surgery.swap(model, layer, cand, weights=weights)
            q = torch.log_softmax(model(ids, use_cache=False).logits[:, :-1].float(), -1)
            surgery.restore(model, layer)
            kl = float((p.exp() * (p - q)).sum(-1).mean())
            entry = next(e for e in table.entries if e.layer == layer and e.candidate == cand)
            assert kl == pytest.approx(entry.kl, rel=1e-3, abs=1e-7) and entry.kl > 0


def test_built_model_ships_the_scored_mlps_and_old_configs_still_load(scored, tmp_path):
    """A plan mixing both axes builds with the library it was scored with: the config's mosaic block carries each
    layer's MLP (format 2), the model loads with trust_remote_code, equals the swapped teacher, generates the same
    with and without a cache, and saves and reloads; a format-1 block (no MLP) loads as before."""
    from transformers import AutoModelForCausalLM

    teacher, table, out = scored
    layers = (Candidate.parse("gdn+mlp:width=64"), Candidate.parse("gqa+nomlp"), Candidate.parse("gqa"))
    plan = LayerPlan(header=Header.new(table.header.model), layers=layers, predicted={}, objective=0.0,
                            constraints={}, solver={})
    library = library_path(out)
    built = builder.build(save(plan, tmp_path / "plan.json"), teacher=teacher, library=library,
                          out=tmp_path / "built")
    config = json.loads((built / "config.json").read_text())
    assert config["mosaic"]["format"] == 2 and [e.get("mlp") for e in config["mosaic"]["layers"]] == [
        {"op": "mlp", "params": {"width": 64}}, {"op": "nomlp", "params": {}}, None]
    shipped = AutoModelForCausalLM.from_pretrained(built, trust_remote_code=True).eval()
    assert shipped.model.layers[0].mlp.down_proj.in_features == 64
    model = load_model(teacher)
    for layer, cand in enumerate(layers):
        weights = load_library_entry(library, layer, cand.mixer) or {}
        mlp = load_library_entry(library, layer, cand.mlp_candidate) if cand.mlp else None
        weights.update({surgery.MLP_PREFIX + k: v for k, v in (mlp or {}).items()})
        surgery.swap(model, layer, cand, weights=weights or None)
    ids = torch.randint(3, 90, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(shipped(ids).logits, model(ids, use_cache=False).logits, rtol=1e-5, atol=1e-5)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
        assert shipped.generate(ids, **kw).tolist() == shipped.generate(ids, use_cache=False, **kw).tolist()
    shipped.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again", trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, shipped(ids).logits, rtol=0, atol=0)
    # a format-1 block: no "format", no "mlp"
    plain = dataclasses.replace(plan, layers=(Candidate.of("gqa"), Candidate.of("none"), Candidate.of("gqa")))
    old_dir = builder.build(plain, teacher=teacher, library=False, out=tmp_path / "old")
    old = json.loads((old_dir / "config.json").read_text())
    del old["mosaic"]["format"]
    assert all("mlp" not in e for e in old["mosaic"]["layers"])
    (old_dir / "config.json").write_text(json.dumps(old))
    first = AutoModelForCausalLM.from_pretrained(old_dir, trust_remote_code=True)
    assert [layer.mlp.down_proj.in_features for layer in first.model.layers] == [128] * 3


# ---- fewer KV heads ---------------------------------------------------------------------------------

def test_fewer_kv_heads_pool_each_group_and_shrink_the_cache():
    """gqa:kv_heads=1 of 2 teacher heads: K/V rows the mean of both heads' rows, q/o and norms the teacher's, a cache
    half the size, aligned like any derived mixer; kv_heads that does not divide the teacher's is one line naming the
    valid values; at the teacher's count it is the teacher exactly."""
    model = tiny_model("qwen3")
    dims = surgery.dims_of(model.config)
    teacher = surgery.teacher_attention(model, 0)
    ids = torch.randint(3, 90, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits
        one = surgery.swap(model, 0, Candidate.parse("gqa:kv_heads=1"))
        for name in ("k_proj", "v_proj"):
            w = getattr(teacher, name).weight
            torch.testing.assert_close(getattr(one, name).weight, w.view(2, 16, -1).mean(0), rtol=0, atol=1e-7)
        for name in ("q_proj", "o_proj", "q_norm", "k_norm"):
            assert all(torch.equal(a, b) for a, b in zip(getattr(one, name).state_dict().values(),
                                                         getattr(teacher, name).state_dict().values()))
        surgery.swap(model, 0, Candidate.parse("gqa:kv_heads=2"))
        torch.testing.assert_close(model(ids).logits, want, rtol=0, atol=0)
    c = Candidate.parse("swa:window=64:kv_heads=1")
    assert c.aligned and not Candidate.of("gqa").aligned and c.label == "swa:64:kv_heads=1"
    assert c.spec.cache_bytes(dims, 512, 2, **c.kwargs) * 2 == Candidate.of("swa", {"window": 64}).spec.cache_bytes(
        dims, 512, 2, window=64)
    with pytest.raises(UsageError, match="kv_heads must divide the teacher's 2 KV heads: one of 1, 2; got 3"):
        parse_candidates("gqa:kv_heads=3", dims)


@pytest.mark.parametrize("command", ["profile", "score"])
@pytest.mark.parametrize("ops, why", [("mlp:width=1000", "at most 384"), ("mlp:width=100", "a multiple of 32"),
                                      ("gqa:kv_heads=3", "one of 1, 2")])
def test_bad_widths_and_kv_heads_exit_2_in_one_line_writing_nothing(command, ops, why, tmp_path, capsys):
    from mosaic_search.cli import main

    assert main([command, "--ops", ops, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert why in err and "\n" not in err and not list(tmp_path.iterdir())
