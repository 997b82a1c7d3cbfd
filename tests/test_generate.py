"""Every mode of `generate` on a built model, for every operator: exactly what the same mode gives without a cache
(greedy and assisted decoding: the plain greedy tokens), or a one-line refusal naming the mode and the operator."""

from __future__ import annotations

import pytest
import torch
from conftest import every_operator, op_key
from test_builder import LAYERS, MIXED, NEW, PROMPT, WINDOW, Teacher, _ids, _load_built

from mosaic_search import builder
from mosaic_search.operators import Candidate

OPERATORS = every_operator(window=WINDOW)
GQA = Candidate.of("gqa")
GREEDY = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """For each operator, a qwen3 build with that operator in layers 0 and 3 (the rest gqa), and under "mixed" one
    with every operator, loaded as users load them."""
    root = tmp_path_factory.mktemp("generate")
    teacher = Teacher("qwen3", root)
    out = {"mixed": _load_built(builder.build(teacher.plan(MIXED, "mixed"), out=root / "mixed"))}
    for c in OPERATORS:
        layers = [c, GQA, GQA, c] + [GQA] * (LAYERS - 4)
        out[op_key(c)] = _load_built(builder.build(teacher.plan(layers, op_key(c)), out=root / op_key(c)))
    return out


def _greedy(model, ids, **kwargs):
    with torch.no_grad():
        return model.generate(ids, **GREEDY, **kwargs)


def _refused(model, op, mode, **kwargs):
    with pytest.raises(ValueError) as e:
        _greedy(model, _ids(), **kwargs)
    message = str(e.value)
    assert "\n" not in message and mode in message and f"({op.split('+')[0].split(':')[0]})" in message
    return message


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("op", [op_key(c) for c in OPERATORS])
def test_greedy_equals_uncached(models, op, cache):
    model = models[op]
    expected = _greedy(model, _ids(), use_cache=False)
    assert expected.shape[1] == PROMPT + NEW > 2 * WINDOW  # decoding runs past the SWA window
    assert torch.equal(_greedy(model, _ids(), cache_implementation=cache), expected)


@pytest.mark.parametrize("op", [op_key(c) for c in OPERATORS])
def test_default_generation_is_the_static_cache_and_exact(models, op):
    model = models[op]
    assert model.generation_config.cache_implementation == "static"
    assert torch.equal(_greedy(model, _ids()), _greedy(model, _ids(), use_cache=False))


@pytest.mark.parametrize("op", [op_key(c) for c in OPERATORS])
def test_seeded_sampling_equals_uncached(models, op):
    model = models[op]
    runs = []
    for kwargs in (dict(use_cache=False), dict(cache_implementation="dynamic"), dict(cache_implementation="static")):
        torch.manual_seed(7)
        with torch.no_grad():
            runs.append(model.generate(_ids(), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True, top_k=20, pad_token_id=0,
                                       **kwargs))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("op", [op_key(c) for c in OPERATORS])
def test_beam_search_equals_uncached(models, op):
    model = models[op]
    expected = _greedy(model, _ids(), num_beams=3, use_cache=False)
    assert torch.equal(_greedy(model, _ids(), num_beams=3), expected)
    assert torch.equal(_greedy(model, _ids(), num_beams=3, cache_implementation="dynamic"), expected)


@pytest.mark.parametrize("op", [op_key(c) for c in OPERATORS])
def test_prompt_lookup_gives_the_greedy_tokens_or_refuses(models, op):
    model = models[op]
    ids = torch.cat([_ids(), _ids()], dim=1)  # a repeated prompt, so lookup drafts
    if not model.mosaic_mixers()[0][2].rolls_back:
        _refused(model, op, "prompt_lookup_num_tokens", prompt_lookup_num_tokens=2)
        return
    assert torch.equal(_greedy(model, ids, prompt_lookup_num_tokens=2), _greedy(model, ids, use_cache=False))


@pytest.mark.parametrize("op", [op_key(c) for c in OPERATORS])
def test_assistant_model_gives_the_greedy_tokens_or_refuses(models, op):
    model, assistant = models[op], models["gqa"]
    if not model.mosaic_mixers()[0][2].rolls_back:
        _refused(model, op, "assistant_model", assistant_model=assistant)
        return
    assert torch.equal(_greedy(model, _ids(), assistant_model=assistant), _greedy(model, _ids(), use_cache=False))


@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("op", [op_key(c) for c in OPERATORS])
def test_continuing_a_conversation_from_its_cache(models, op, kind):
    """A second turn passes the first turn's cache back: the same tokens as generating the whole text uncached."""
    from transformers import DynamicCache, StaticCache

    model = models[op]
    cache = DynamicCache(config=model.config) if kind == "dynamic" else StaticCache(config=model.config,
                                                                                      max_cache_len=64)
    with torch.no_grad():
        first = model.generate(_ids(), cache=cache, **GREEDY)
        second_prompt = torch.cat([first, _ids(4, seed=3)], dim=1)
        mask = torch.ones_like(second_prompt)  # generated tokens may equal the pad id: no padding here
        second = model.generate(second_prompt, attention_mask=mask, cache=cache, **GREEDY)
        assert torch.equal(first, _greedy(model, _ids(), use_cache=False))
        assert torch.equal(second, _greedy(model, second_prompt, attention_mask=mask, use_cache=False))


def test_a_returned_static_cache_too_small_for_the_next_turn_is_refused(models):
    model = models["gdn"]
    with torch.no_grad():
        first = model.generate(_ids(), return_dict_in_generate=True, **GREEDY)  # the default: a static cache
        with pytest.raises(ValueError, match=r"holds \d+ tokens .* needs 30") as e:  # the older keyword too
            model.generate(torch.cat([first.sequences, _ids(4)], 1), past_key_values=first.past_key_values, **GREEDY)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("op", [op_key(c) for c in OPERATORS])
def test_a_cache_that_cannot_hold_the_mix_is_refused(models, op):
    message = _refused(models[op], op, "cache_implementation='quantized'", cache_implementation="quantized")
    assert "layer 0" in message


def test_static_cache_holds_a_window_and_fixed_states_however_long(models):
    from transformers import StaticCache

    def slots(op, steps):
        model = models[op]
        cache = StaticCache(config=model.config, max_cache_len=PROMPT + steps)
        ids = _ids(PROMPT + steps)
        with torch.no_grad():
            model(ids[:, :PROMPT], cache=cache, use_cache=True)
            for i in range(PROMPT, ids.shape[1]):
                model(ids[:, i:i + 1], cache=cache, use_cache=True)
        return cache.layers[0]

    for steps in (4, 40):
        swa = slots("swa", steps)
        assert swa.keys.shape[-2] == WINDOW and swa.get_seq_length() == PROMPT + steps
        for op in ("gdn", "kda"):
            state = slots(op, steps).recurrent_states[0]
            assert state.shape == (1, 4, 16, 16)  # batch, heads, head_dim x head_dim: no token axis
        gqa = slots("gqa", steps)
        assert gqa.keys.shape[-2] == PROMPT + steps


@pytest.mark.slow
def test_decode_step_compiles_without_graph_breaks_and_matches_eager(models):
    """The static-cache decode step of a model with every operator: one graph (no break, as transformers needs to
    capture it in a CUDA graph), and inductor's compiled step gives the eager logits."""
    from transformers import StaticCache

    model = models["mixed"]
    ids = _ids(PROMPT + 3)

    def prefilled():
        cache = StaticCache(config=model.config, max_cache_len=PROMPT + 4)
        with torch.no_grad():
            model(ids[:, :PROMPT], cache=cache, use_cache=True)
        return cache

    def step(token, cache):
        return model(token, cache=cache, use_cache=True).logits

    with torch.no_grad():
        explained = torch._dynamo.explain(step)(ids[:, PROMPT:PROMPT + 1], prefilled())
        assert explained.graph_break_count == 0, explained.break_reasons
        eager, compiled_cache = prefilled(), prefilled()
        compiled = torch.compile(step, fullgraph=True, backend="inductor")
        for i in range(PROMPT, PROMPT + 3):
            token = ids[:, i:i + 1]
            torch.testing.assert_close(compiled(token, compiled_cache), step(token, eager), rtol=1e-4, atol=1e-4)


def test_each_sliding_layer_caches_its_own_window(tmp_path):
    """Two SWA windows in one model: each layer's cache slot (dynamic or static) holds its own window, not the
    largest, and generation stays exact past both."""
    from transformers import DynamicCache, StaticCache

    teacher = Teacher("llama", tmp_path)
    small, large = Candidate.of("swa", {"window": 3}), Candidate.of("swa", {"window": 5})
    layers = [small, GQA, large, small] + [GQA] * (LAYERS - 4)
    model = _load_built(builder.build(teacher.plan(layers, "windows"), out=tmp_path / "windows"))
    assert model.config.sliding_window == 5
    for cache in (DynamicCache(config=model.config), StaticCache(config=model.config, max_cache_len=PROMPT + NEW)):
        with torch.no_grad():
            model.generate(_ids(), cache=cache, **GREEDY)
        windows = [s.keys.shape[-2] for s in cache.layers[:4]]
        # a dynamic sliding slot keeps window - 1 tokens between steps, a static one window; full attention: all
        assert windows[0] == windows[3] in (2, 3) and windows[2] == windows[0] + 2 and windows[1] >= PROMPT + NEW - 1
    assert torch.equal(_greedy(model, _ids()), _greedy(model, _ids(), use_cache=False))


def test_a_cache_not_made_from_the_models_config_is_refused(models):
    from transformers import DynamicCache

    with pytest.raises(ValueError, match=r"no linear-attention slot for layer 0 \(gdn\).*DynamicCache\(config=") as e:
        _greedy(models["gdn"], _ids(), cache=DynamicCache())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("op", ["swa", "gqa"])
def test_assisted_decoding_on_an_explicit_static_cache_is_refused(models, op):
    message = _refused(models[op], op, "prompt_lookup_num_tokens", prompt_lookup_num_tokens=2,
                       cache_implementation="static")
    assert "dynamic cache" in message


def test_a_returned_static_cache_shorter_than_a_window_is_refused_for_the_next_turn(tmp_path):
    """Every layer a window longer than the first call: its static slots hold the call's tokens only, and reused for a
    second turn they would drop tokens the window still sees."""
    teacher = Teacher("qwen3", tmp_path)
    layers = [Candidate.of("swa", {"window": 64})] * LAYERS
    model = _load_built(builder.build(teacher.plan(layers, "long-window"), out=tmp_path / "long-window"))
    with torch.no_grad():
        first = model.generate(_ids(), return_dict_in_generate=True, **GREEDY)
        with pytest.raises(ValueError, match=r"holds \d+ tokens .* needs 30"):
            model.generate(torch.cat([first.sequences, _ids(4)], 1), cache=first.past_key_values, **GREEDY)


def test_padded_batches_are_refused_even_with_one_token_prompts(models):
    ids, mask = torch.tensor([[5], [0]]), torch.tensor([[1], [0]])
    with pytest.raises(ValueError, match="padded batches"):
        models["gqa"].generate(ids, attention_mask=mask, max_new_tokens=3)


def test_chunked_prefill_is_refused_for_a_latent_cache(models):
    _refused(models["mla"], "mla", "prefill_chunk_size", prefill_chunk_size=4)
    assert torch.equal(_greedy(models["gdn"], _ids(), prefill_chunk_size=4), _greedy(models["gdn"], _ids(),
                                                                                      use_cache=False))


def test_a_too_small_static_cache_is_refused_for_embeddings_too(models):
    from transformers import StaticCache

    model = models["gqa"]
    embeds = model.get_input_embeddings()(_ids())
    with pytest.raises(ValueError, match="holds 8 tokens .* needs 16"):
        model.generate(inputs_embeds=embeds, cache=StaticCache(config=model.config, max_cache_len=8), **GREEDY)


@pytest.mark.parametrize("op", ["none", "drop"])
def test_early_exit_drafting_gives_the_greedy_tokens_and_leaves_the_model_whole(models, op):
    model = models[op]
    expected = _greedy(model, _ids(), use_cache=False)
    assert torch.equal(_greedy(model, _ids(), assistant_early_exit=4), expected)
    assert model.config.num_hidden_layers == LAYERS and torch.equal(_greedy(model, _ids()), expected)
