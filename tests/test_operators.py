"""Correctness of every registered operator on CPU (parametrized over the registry)."""

from __future__ import annotations

import pytest
import torch
from conftest import cache_for, every_operator

from mosaic_search.hf import surgery
from mosaic_search.modeling.delta_rule import chunked_delta_rule, recurrent_delta_rule
from mosaic_search.operators import Candidate

OPS = every_operator()


def _rotary(model, positions):
    text = model.model
    x = torch.zeros(1, positions.shape[-1], model.config.hidden_size)
    return text.rotary_emb(x, positions)


def _run(model, mixer, x, start=0, cache=None):
    """Run one mixer on hidden states x at absolute positions start..start+T-1."""
    pos = torch.arange(start, start + x.shape[1])[None]
    out = mixer(x, position_embeddings=_rotary(model, pos), cache=cache)
    return out[0] if isinstance(out, tuple) else out


def _mixer(model, cand, layer=1):
    torch.manual_seed(1)
    module = surgery.build_mixer(model, layer, cand)
    if cand.op in ("gdn", "kda"):
        with torch.no_grad():  # exercise the gates and convolutions, not just their identity init
            module.q_conv.weight.normal_(0, 0.5)
            module.v_conv.weight.normal_(0, 0.5)
            for proj, std in ((module.g_proj, 0.1), (module.a_proj, 0.5), (module.b_proj, 0.5)):
                for w in (m.weight for m in proj.modules() if isinstance(m, torch.nn.Linear)):
                    w.normal_(0, std)
    return module


@pytest.mark.parametrize("cand", OPS, ids=str)
def test_causal(qwen3, cand):
    mixer = _mixer(qwen3, cand)
    x = torch.randn(2, 20, qwen3.config.hidden_size)
    y = x.clone()
    y[:, 11:] = torch.randn_like(y[:, 11:])
    with torch.no_grad():
        a, b = _run(qwen3, mixer, x), _run(qwen3, mixer, y)
    torch.testing.assert_close(a[:, :11], b[:, :11], rtol=1e-6, atol=1e-6)
    if cand.op not in ("none", "drop"):
        assert not torch.allclose(a[:, 11:], b[:, 11:]), "later inputs should change later outputs"


@pytest.mark.parametrize("cand", OPS, ids=str)
def test_prefill_then_decode_equals_longer_prefill(qwen3, cand):
    mixer = _mixer(qwen3, cand)
    t, k = 37, 6  # 37 is not a multiple of the chunk size; 6 steps run past the window of 4
    x = torch.randn(2, t + k, qwen3.config.hidden_size)
    with torch.no_grad():
        full = _run(qwen3, mixer, x, cache=cache_for(qwen3, cand))
        cache = cache_for(qwen3, cand)
        steps = [_run(qwen3, mixer, x[:, :t], cache=cache)]
        for i in range(t, t + k):
            steps.append(_run(qwen3, mixer, x[:, i:i + 1], start=i, cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cand", OPS, ids=str)
def test_chunked_prefill_continues_fromcache_for(qwen3, cand):
    """Two prefills of 20 and 13 tokens equal one of 33 (the cache carries every kind of state)."""
    mixer = _mixer(qwen3, cand)
    x = torch.randn(1, 33, qwen3.config.hidden_size)
    with torch.no_grad():
        full = _run(qwen3, mixer, x)
        cache = cache_for(qwen3, cand)
        parts = [_run(qwen3, mixer, x[:, :20], cache=cache), _run(qwen3, mixer, x[:, 20:], start=20, cache=cache)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_channel", [False, True], ids=["gdn", "kda"])
@pytest.mark.parametrize("strength", [0.1, 8.0], ids=["weak-decay", "strong-decay"])
def test_chunked_equals_recurrent(per_channel, strength):
    b, t, h, d = 2, 75, 3, 8
    q, k = (torch.nn.functional.normalize(torch.randn(b, t, h, d), dim=-1) for _ in range(2))
    v = torch.randn(b, t, h, d)
    g = -strength * torch.rand(b, t, h, d) if per_channel else -strength * torch.rand(b, t, h)
    beta = torch.rand(b, t, h)
    s0 = torch.randn(b, h, d, d)
    o_rec, s_rec = recurrent_delta_rule(q, k, v, g, beta, 0.7, s0)
    o_chk, s_chk = chunked_delta_rule(q, k, v, g, beta, 0.7, s0, chunk_size=16)
    torch.testing.assert_close(o_chk, o_rec, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_chk, s_rec, rtol=1e-4, atol=1e-5)


def test_swa_with_window_covering_the_sequence_equals_gqa_exactly(qwen3):
    x = torch.randn(2, 30, qwen3.config.hidden_size)
    with torch.no_grad():
        gqa = _run(qwen3, _mixer(qwen3, Candidate.of("gqa")), x)
        swa = _run(qwen3, _mixer(qwen3, Candidate.of("swa", {"window": 30})), x)
        narrow = _run(qwen3, _mixer(qwen3, Candidate.of("swa", {"window": 8})), x)
    assert torch.equal(gqa, swa)
    assert torch.equal(gqa[:, :8], narrow[:, :8])
    assert not torch.allclose(gqa[:, 8:], narrow[:, 8:])


def test_swa_sees_exactly_window_tokens(qwen3):
    """Changing the token `window` steps back changes nothing; changing `window - 1` back does."""
    mixer = _mixer(qwen3, Candidate.of("swa", {"window": 5}))
    x = torch.randn(1, 12, qwen3.config.hidden_size)
    with torch.no_grad():
        base = _run(qwen3, mixer, x)[:, -1]
        far, near = x.clone(), x.clone()
        far[:, -6] += 1.0
        near[:, -5] += 1.0
        assert torch.equal(_run(qwen3, mixer, far)[:, -1], base)
        assert not torch.allclose(_run(qwen3, mixer, near)[:, -1], base)


def test_mla_caches_what_its_cache_bytes_say(qwen3):
    cand = Candidate.of("mla", {"rank": 24})
    cache = cache_for(qwen3, cand)
    with torch.no_grad():
        _run(qwen3, _mixer(qwen3, cand), torch.randn(1, 30, qwen3.config.hidden_size), cache=cache)
    slot = cache.layers[1]
    held = sum(t.numel() * t.element_size() for t in (slot.keys, slot.values))
    assert held == cand.spec.cache_bytes(surgery.dims_of(qwen3.config), 30, 4, **cand.kwargs)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # no nope dims: k_up is empty
@pytest.mark.parametrize("kind", ["qwen3", "llama-bias"])
def test_mla_with_rope_on_every_dim_at_full_rank_equals_gqa(kind):
    """The SVD, the key RMS scale and both attention forms are exact: with RoPE kept on every key dim (no
    decoupling) and a full-rank latent, mla is the teacher's attention, in prefill and in absorbed decode."""
    from conftest import tiny_model

    from mosaic_search.modeling.attention import LatentAttention
    from mosaic_search.operators.teacher import latent_from_teacher

    model = tiny_model("qwen3") if kind == "qwen3" else _biased_llama()
    dims = surgery.dims_of(model.config)
    full = LatentAttention(dims, 1, rank=min(dims.kv_dim, dims.hidden_size), rope_dims=dims.head_dim)
    latent_from_teacher(full, model.model.layers[1].self_attn)
    low = _mixer(model, Candidate.of("mla", {"rank": 4}))
    x = torch.randn(2, 25, model.config.hidden_size)
    with torch.no_grad():
        gqa = _run(model, _mixer(model, Candidate.of("gqa")), x)
        torch.testing.assert_close(_run(model, full, x), gqa, rtol=1e-4, atol=1e-5)
        cache = cache_for(model, Candidate.of("mla", {"rank": 4}))
        _run(model, full, x[:, :20], cache=cache)
        steps = torch.cat([_run(model, full, x[:, i:i + 1], start=i, cache=cache) for i in range(20, 25)], 1)
        torch.testing.assert_close(steps, gqa[:, 20:], rtol=1e-4, atol=1e-5)
        assert (_run(model, low, x) - gqa).abs().max() > 1e-3


def _biased_llama():
    """A tiny Llama teacher with q/k/v/o biases and no q/k norm (the other arithmetic mla must absorb)."""
    from conftest import tiny_config

    from mosaic_search.hf.models import model_from_config

    cfg = tiny_config("llama")
    cfg.attention_bias = True
    model = model_from_config(cfg, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 and p.abs().sum() == 0:
                p.normal_(0, 0.5)  # biases start at zero: make them matter
    return model.eval()


def test_linear_mixers_start_from_the_teacher_projections(qwen3):
    """gdn/kda copy q/k/v/o as they are: each KV head serves its query group, as in the teacher."""
    teacher = qwen3.model.layers[1].self_attn
    for op in ("gdn", "kda"):
        mixer = surgery.build_mixer(qwen3, 1, Candidate.of(op))
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert torch.equal(getattr(mixer, name).weight, getattr(teacher, name).weight), name


@pytest.mark.parametrize("op", ["gdn", "kda"])
def test_a_linear_mixer_holds_about_the_teacher_attentions_weights(op):
    """What a decode step reads: at Qwen3-VL-4B's dimensions gdn / kda hold at most 8% more weights than the GQA
    attention they replace (gates and decays are per head or low rank; K/V are not expanded)."""
    from mosaic_search.modeling.dims import ModelDims

    dims = ModelDims(hidden_size=2560, num_heads=32, num_kv_heads=8, head_dim=128, num_layers=36,
                     intermediate_size=9728, vocab_size=151936, qk_norm=True, attention_bias=False, rms_norm_eps=1e-6)
    with torch.device("meta"):
        ours = sum(p.numel() for p in Candidate.of(op).spec.build(dims, 0).parameters())
        gqa = sum(p.numel() for p in Candidate.of("gqa").spec.build(dims, 0).parameters())
    assert ours <= 1.08 * gqa, (ours, gqa)  # gdn +4%, kda +7%: the low-rank gate and decay


def test_cache_bytes_follow_the_operator():
    from mosaic_search.modeling.dims import ModelDims

    dims = ModelDims(hidden_size=2560, num_heads=32, num_kv_heads=8, head_dim=128, num_layers=36,
                     intermediate_size=9728, vocab_size=151936, qk_norm=True, attention_bias=False, rms_norm_eps=1e-6)
    bytes_at = {str(c): c.spec.cache_bytes(dims, 98304, 2, **c.kwargs)
                for c in (Candidate.of("gqa"), Candidate.of("swa", {"window": 4096}), Candidate.of("mla", {"rank": 512}),
                          Candidate.of("gdn"), Candidate.of("none"), Candidate.of("drop"))}
    assert bytes_at["gqa"] == 2 * 1024 * 98304 * 2
    assert bytes_at["swa:window=4096"] == 2 * 1024 * 4096 * 2
    assert bytes_at["mla:rank=512"] == (512 + 8 * (64 + 1)) * 98304 * 2  # latent + per KV head: 64 rope dims, 1 scale
    assert bytes_at["gdn"] < bytes_at["swa:window=4096"]
    assert bytes_at["none"] == bytes_at["drop"] == 0
    # the linear state does not grow with context
    assert Candidate.of("kda").spec.cache_bytes(dims, 1024, 2) == Candidate.of("kda").spec.cache_bytes(dims, 10**6, 2)


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
@pytest.mark.parametrize("offset", [0, 37])
def test_flex_window_equals_the_blocked_reference(monkeypatch, offset):
    """The CUDA prefill path of a window (FlexAttention, run here uncompiled) gives the CPU reference's output."""
    from torch.nn.attention.flex_attention import flex_attention

    from mosaic_search.modeling import attention

    monkeypatch.setattr(attention, "_flex_attention", lambda: flex_attention)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 300, 16, generator=gen)
    k, v = (torch.randn(2, 2, 300 + offset, 16, generator=gen) for _ in range(2))
    for window in (7, 128, 200):
        want = attention.attend(q, k, v, window, 0.25)
        torch.testing.assert_close(attention.windowed_flex(q, k, v, window, 0.25, offset), want, rtol=1e-5, atol=1e-5)


def test_short_labels_parse_back_and_every_operator_has_its_own_colour():
    from mosaic_search.operators import REGISTRY, plot_color

    for cand in (*every_operator(), Candidate.of("swa", {"window": 1024}), Candidate.of("mla", {"rank": 256})):
        assert Candidate.parse(cand.label) == cand == Candidate.parse(str(cand))
    assert Candidate.of("swa", {"window": 1024}).label == "swa:1024" and Candidate.of("gqa").label == "gqa"
    colours = [plot_color(op) for op in REGISTRY]
    assert len(set(colours)) == len(colours) and plot_color("gqa") == "#1f77b4"  # matplotlib's first colour


@pytest.mark.parametrize("kv_dim", [16, 32, 64, 128, 1024])
def test_default_candidates_are_distinct_for_every_operator_at_every_size(kv_dim):
    """At tiny sizes two default rules can give one value (mla's rank floor): each candidate is listed once. A bare
    operator name stands for its defaults, unless all its params are optional (gqa's kv_heads): then for itself."""
    from mosaic_search.modeling.dims import ModelDims
    from mosaic_search.operators import REGISTRY, default_candidates, parse_candidates
    from mosaic_search.operators.registry import _required

    heads = max(1, kv_dim // 16)
    dims = ModelDims(hidden_size=4 * kv_dim, num_heads=2 * heads, num_kv_heads=heads, head_dim=16, num_layers=4,
                     intermediate_size=8 * kv_dim, vocab_size=97, qk_norm=True, attention_bias=False,
                     rms_norm_eps=1e-6)
    every = default_candidates(dims)
    assert len(every) == len(set(every)) and {c.op for c in every} == set(REGISTRY)
    for name, spec in REGISTRY.items():
        bare = spec.defaults(dims) if _required(spec) else [{}]
        assert [c.kwargs for c in parse_candidates(name, dims)] == bare
        assert len({str(p) for p in spec.defaults(dims)}) == len(spec.defaults(dims))
    # the rule that collapsed, max(16, kv_dim // 2) and max(16, kv_dim // 4): one rank where both give 16
    assert REGISTRY["mla"].defaults(dims) == {16: [{"rank": 16}], 32: [{"rank": 16}], 64: [{"rank": 32}, {"rank": 16}],
                                              128: [{"rank": 64}, {"rank": 32}],
                                              1024: [{"rank": 512}, {"rank": 256}]}[kv_dim]


def test_the_registry_keeps_its_documented_order():
    """Registration order is the order of every table, profile and plot (and of the MIP's candidates): a sorted
    import in operators/__init__.py must not reorder it."""
    from mosaic_search.operators import REGISTRY

    assert list(REGISTRY) == ["gqa", "swa", "mla", "gdn", "kda", "none", "drop", "mlp", "nomlp"]


def test_a_shipped_data_file_is_named_by_its_path_in_the_package():
    from mosaic_search.hf.data import TINY_HELDOUT, display_name

    assert display_name(TINY_HELDOUT) == "mosaic_search/assets/tiny/heldout.txt"
    assert display_name("/somewhere/on/this/machine/notes.txt") == "notes.txt"
