"""Every family added after qwen3 / llama / qwen3_vl, end to end on a tiny random teacher: profile, score, solve,
build, load with trust_remote_code, generate (each cache == no cache), and the teacher's own plan == the teacher.

One chain per family, shared by the tests below (module fixture); Gemma 3 and Mistral teachers slide, so their own
operators are per layer (gqa / swa)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILIES, WorkTimer, cache_for, every_operator, tiny_config

from mosaic_search import builder
from mosaic_search.artifacts.header import Header, save
from mosaic_search.artifacts.plan import LayerPlan, load_plan
from mosaic_search.artifacts.profile import load_profile
from mosaic_search.cli import main
from mosaic_search.hf import surgery
from mosaic_search.hf.models import load_model, model_from_config
from mosaic_search.latency import profiler
from mosaic_search.operators import Candidate
from mosaic_search.quality import scorer
from mosaic_search.search import solver

WINDOW = 4
SEQ = 16
PROMPT, NEW = 6, 10  # decoding runs past the window of every sliding layer (teacher's 6, candidate's 4)
OPS = every_operator(window=WINDOW)
LAYERS = len(OPS)  # one layer per layer choice in the mixed plan


def _config(kind: str):
    """tiny_config(kind) with LAYERS decoder layers (a Gemma 3 pattern re-derived for that depth)."""
    obj = tiny_config(kind).to_dict()
    text = obj["text_config"] if "text_config" in obj else obj
    text["num_hidden_layers"] = LAYERS
    if "sliding_attention" in (text.get("layer_types") or ()):
        text["layer_types"] = ["full_attention" if i % 2 else "sliding_attention" for i in range(LAYERS)]
    else:
        text.pop("layer_types", None)
    return type(tiny_config(kind)).from_dict(obj)


def _load_built(path):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    vision = "vision_config" in json.loads((path / "config.json").read_text())
    return (AutoModelForImageTextToText if vision else AutoModelForCausalLM).from_pretrained(
        path, trust_remote_code=True).eval()


def _ids(n=PROMPT, seed=0):
    return torch.randint(3, 89, (1, n), generator=torch.Generator().manual_seed(seed))


def _mixed():
    """Every layer choice once, in registry order but gdn at layer 6: in the Gemma 3 teachers (local layers even,
    global odd) global layer 1 turns swa and local layer 6 gdn."""
    rest = [c for c in OPS if c.op != "gdn"]
    return rest[:6] + [c for c in OPS if c.op == "gdn"] + rest[6:]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, one_thread):
    """For each family: the teacher directory, its own operators, profile, table, a solved plan and three builds (the
    solved plan, the teacher's own operators, every operator)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for kind in FAMILIES:
        d = root / kind
        model_from_config(_config(kind)).save_pretrained(d / "teacher")
        teacher = str(d / "teacher")
        own = surgery.teacher_ops(load_model(teacher).config)
        prof = profiler.profile(teacher, ops=OPS, workloads=[f"prefill:{SEQ}", f"decode:{SEQ}"], out=d / "p.json",
                                timer=WorkTimer(), rounds=1)
        table = scorer.score(teacher, data="self", ops=OPS, tokens=2 * SEQ, seq_len=SEQ, align_steps=2,
                             out=d / "s.json")
        plan = solver.solve(d / "p.json", d / "s.json", speedup=1.05, out=d / "plan.json")
        ref = load_plan(d / "plan.json").header.model

        def plan_of(layers, name):
            p = LayerPlan(header=Header.new(ref), layers=tuple(layers), predicted={}, objective=0.0,
                          constraints={}, solver={})
            return save(p, d / f"{name}.json")

        builds = {"solved": builder.build(d / "plan.json", out=d / "solved"),
                  "own": builder.build(plan_of(own, "own"), out=d / "own"),
                  "mixed": builder.build(plan_of(_mixed(), "mixed"), library=False, out=d / "mixed")}
        out[kind] = dict(dir=d, teacher=teacher, own=own, profile=prof, table=table, plan=plan, builds=builds)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", FAMILIES)
def test_teacher_operators_are_its_own_per_layer(chain, kind):
    c = chain[kind]
    if kind in ("gemma3_text", "gemma3"):  # local layers slide over the teacher's window, global ones are full
        assert [str(x) for x in c["own"][:2]] == ["swa:window=6", "gqa"]
    elif kind == "mistral":
        assert set(map(str, c["own"])) == {"swa:window=6"}
    else:
        assert set(map(str, c["own"])) == {"gqa"}
    # the profile records them, times them, and its baseline sums them; the table scores each 0 in its own layer
    prof, table = c["profile"], c["table"]
    assert list(prof.teacher) == c["own"]
    w = prof.workloads[0].name
    ms = {(e.layer, e.candidate): e.latency_ms for e in prof.entries if e.workload == w}
    assert prof.teacher_ms(w) == pytest.approx(prof.fixed_ms[w] + sum(ms[i, op] for i, op in enumerate(c["own"])))
    zero = {(e.layer, e.candidate) for e in table.entries if e.kl == 0.0 and e.extra.get("reference")}
    assert zero == set(enumerate(c["own"]))
    assert load_profile(c["dir"] / "p.json").teacher == prof.teacher  # and reads them back


@pytest.mark.slow
@pytest.mark.parametrize("kind", FAMILIES)
def test_teacher_own_operators_build_equals_teacher(chain, kind):
    c = chain[kind]
    teacher, model = load_model(c["teacher"]), _load_built(c["builds"]["own"])
    assert type(model).__name__.startswith("Mosaic")
    ids = _ids(20)  # past the sliding layers' window
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, teacher(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("build", ["solved", "mixed"])
def test_generate_with_either_cache_equals_without(chain, kind, build):
    model = _load_built(chain[kind]["builds"][build])
    kwargs = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        uncached = model.generate(_ids(), use_cache=False, **kwargs)
        for cache in ("static", "dynamic"):
            assert torch.equal(model.generate(_ids(), cache_implementation=cache, **kwargs), uncached)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gemma3_text", "phi3", "qwen2"])
def test_mixed_build_equals_swapped_teacher(chain, kind):
    """A global Gemma 3 layer turned swa and a local one gdn keep their teacher layer's RoPE; Phi-3's fused qkv is
    split into the mixers; Qwen2's q/k/v biases are carried (o_proj has none)."""
    c = chain[kind]
    plan = load_plan(c["builds"]["mixed"] / "mosaic_plan.json")
    if kind == "gemma3_text":
        assert (str(c["own"][1]), str(plan.layers[1]), str(c["own"][6]), str(plan.layers[6])) == \
            ("gqa", f"swa:window={WINDOW}", "swa:window=6", "gdn")
    swapped = load_model(c["teacher"])
    surgery.own_mixers(swapped)
    torch.manual_seed(0)  # the build's default seed: the same fresh gates and decays
    for i, cand in enumerate(plan.layers):
        surgery.swap(swapped, i, cand)
    model = _load_built(c["builds"]["mixed"])
    ids = _ids(20)
    with torch.no_grad():
        want = swapped(ids, use_cache=False).logits
        torch.testing.assert_close(model(ids).logits, want, rtol=1e-5, atol=1e-5)
        # the stages' own text stack (profile, bench) runs the built model's layers with their teacher RoPE too
        torch.testing.assert_close(surgery.text_stack(model).forward(ids), want[:, -1:], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gemma3_vlm_refuses_images_in_one_line(chain):
    model = _load_built(chain["gemma3"]["builds"]["own"])
    with pytest.raises(ValueError, match="bidirectionally") as e:
        model(input_ids=_ids(), pixel_values=torch.zeros(1, 3, 16, 16))
    assert "\n" not in str(e.value)


def test_unsupported_model_type_is_one_line_with_the_nearest_exit_2(tmp_path, capsys):
    from transformers import Qwen2MoeConfig

    Qwen2MoeConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2).save_pretrained(tmp_path / "moe")
    out = tmp_path / "p.json"
    code = main(["profile", "--model", str(tmp_path / "moe"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and 'did you mean "qwen2"' in err and "gemma3_text" in err


@pytest.mark.slow
def test_qwen2_5_vl_images_run_through_the_teachers_tower_and_mrope(chain):
    """An image prompt: the built model equals the swapped teacher, and generates the same with and without cache."""
    c = chain["qwen2_5_vl"]
    ids = torch.tensor([[5, 6, 92, *[90] * 4, 93, 7, 8, 9]])  # a 16x16 image: 4x4 patches of 4 pixels, merged 2x2
    inputs = {"input_ids": ids, "image_grid_thw": torch.tensor([[1, 4, 4]]),
              "pixel_values": torch.randn(16, 3 * 2 * 4 * 4, generator=torch.Generator().manual_seed(1))}
    plan = load_plan(c["builds"]["mixed"] / "mosaic_plan.json")
    swapped = load_model(c["teacher"])
    torch.manual_seed(0)
    for i, cand in enumerate(plan.layers):
        surgery.swap(swapped, i, cand)
    model = _load_built(c["builds"]["mixed"])
    kwargs = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, swapped(**inputs, use_cache=False).logits,
                                   rtol=1e-5, atol=1e-5)
        uncached = model.generate(**inputs, use_cache=False, **kwargs)
        for cache in ("static", "dynamic"):
            assert torch.equal(model.generate(**inputs, cache_implementation=cache, **kwargs), uncached)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["phi3", "gemma3_text"])
def test_check_generation_builds_each_operator_into_a_layer(chain, kind):
    """`mosaic check` on a fused-qkv teacher and on a hybrid one (layer 1 is a Gemma 3 global layer)."""
    rows = builder.check_generation(chain[kind]["teacher"], layer=1, new_tokens=4, candidates=OPS)
    assert [r["candidate"] for r in rows] == [str(c) for c in OPS] and all(r["match"] for r in rows)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # gemma: no nope dims, k_up is empty
@pytest.mark.parametrize("kind", ["phi3", "gemma3_text", "qwen2"])
def test_mla_with_rope_on_every_rotated_dim_at_full_rank_equals_gqa(kind):
    """mla's SVD, key RMS scale and both attention forms are exact for Phi-3's partial RoPE and fused qkv, Gemma 3's
    (1 + w) norms and query scale, and Qwen2's q/k/v biases: with RoPE on every rotated key dim and a full-rank
    latent it is the teacher's attention (layer 1: a Gemma 3 global layer)."""
    from mosaic_search.modeling.attention import LatentAttention
    from mosaic_search.operators.teacher import latent_from_teacher

    model = model_from_config(tiny_config(kind), seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0, 0.5)  # norms of Gemma start at zero and biases at zero: make them matter
    dims = surgery.dims_of(model.config)
    teacher = surgery.decoder_layers(model)[1].self_attn
    nope = dims.head_dim - dims.rope_dims
    full = LatentAttention(dims, 1, rank=min(dims.num_kv_heads * (nope + dims.head_dim), dims.hidden_size),
                           rope_dims=dims.rope_dims)
    latent_from_teacher(full, teacher)
    gqa = surgery.build_mixer(model, 1, Candidate.of("gqa"))
    stack = surgery.text_stack(model)
    x = torch.randn(2, 12, dims.hidden_size)
    pe = stack.layer_pe(stack.position_embeddings(x, 0), 1)
    with torch.no_grad():
        want = gqa(x, position_embeddings=pe)[0]
        torch.testing.assert_close(teacher(x, position_embeddings=pe, attention_mask=None)[0], want,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(full(x, position_embeddings=pe)[0], want, rtol=1e-4, atol=1e-5)
        cache = cache_for(model, Candidate.of("mla", {"rank": 4}))  # then decode steps, in the absorbed form
        full(x[:, :8], position_embeddings=tuple(t[:, :8] for t in pe), cache=cache)
        steps = [full(x[:, i:i + 1], position_embeddings=tuple(t[:, i:i + 1] for t in pe), cache=cache)[0]
                 for i in range(8, 12)]
        torch.testing.assert_close(torch.cat(steps, 1), want[:, 8:], rtol=1e-4, atol=1e-5)
