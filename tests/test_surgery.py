"""Swapping mixers into tiny random Qwen3, Llama and Qwen3-VL teachers."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, every_operator, tiny_config, tiny_model

from mosaic_search.errors import UsageError
from mosaic_search.hf import surgery
from mosaic_search.operators import Candidate


def _ids(model, n=14, seed=0):
    vocab = surgery.dims_of(model.config).vocab_size
    return torch.randint(3, vocab - 10, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_dims_and_layers(arch):
    model = tiny_model(arch)
    dims = surgery.dims_of(model.config)
    assert (dims.num_layers, dims.num_heads, dims.num_kv_heads, dims.head_dim) == (3, 4, 2, 16)
    assert len(surgery.decoder_layers(model)) == 3
    assert dims.qk_norm == (arch != "llama")


@pytest.mark.parametrize("arch", ARCHS)
def test_swap_to_gqa_leaves_logits_unchanged(arch):
    model = tiny_model(arch)
    ids = _ids(model)
    with torch.no_grad():
        before = model(ids).logits
        for layer in range(3):
            surgery.swap(model, layer, Candidate.of("gqa"))
        after = model(ids).logits
    assert type(surgery.decoder_layers(model)[0].self_attn).__name__ == "Attention"
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cand", every_operator(), ids=str)
def test_every_operator_generates_same_with_and_without_cache(arch, cand):
    """The swap as the built model class (in memory): generate with its default static cache, the dynamic cache and
    no cache agree, and a cached prefill + decode gives the full forward's logits token by token."""
    from transformers import DynamicCache

    from mosaic_search import builder

    model = tiny_model(arch)
    surgery.swap(model, 0, cand)
    model = builder.as_built(model, [cand] + [Candidate.of("gqa")] * 2)
    ids = _ids(model, n=6)[:1]
    with torch.no_grad():
        kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
        cached = model.generate(ids, **kwargs)
        assert torch.equal(cached, model.generate(ids, cache_implementation="dynamic", **kwargs))
        assert torch.equal(cached, model.generate(ids, use_cache=False, **kwargs))
        full = model(cached).logits
        cache = DynamicCache(config=model.config)
        steps = [model(cached[:, :6], cache=cache, use_cache=True).logits]
        for i in range(6, cached.shape[1]):
            steps.append(model(cached[:, i:i + 1], cache=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_swapped_layer_changes_logits_and_restore_brings_them_back(qwen3):
    ids = _ids(qwen3)
    with torch.no_grad():  # a swapped teacher keeps its cache layout, so it runs without a cache
        before = qwen3(ids, use_cache=False).logits
        surgery.swap(qwen3, 1, Candidate.of("drop"))
        dropped = qwen3(ids, use_cache=False).logits
        surgery.swap(qwen3, 1, Candidate.of("none"))  # a second swap still starts from the teacher
        surgery.restore(qwen3, 1)
        after = qwen3(ids, use_cache=False).logits
    assert not torch.allclose(dropped, before)
    assert torch.equal(after, before)


def test_swap_rejects_out_of_range_layer(qwen3):
    with pytest.raises(UsageError, match="out of range"):
        surgery.swap(qwen3, 3, Candidate.of("gqa"))


def test_unsupported_architecture_lists_supported():
    from transformers import Gemma3TextConfig, GPT2Config

    with pytest.raises(UsageError, match="supports: gemma3, gemma3_text, llama, mistral, phi3, qwen2, qwen2_5_vl, "
                                         "qwen3, qwen3_vl$"):
        surgery.dims_of(GPT2Config())
    # a supported family with a feature the mixers would get wrong is refused too, naming it
    with pytest.raises(UsageError, match="attn_logit_softcapping=50.0: soft-capped attention scores"):
        surgery.dims_of(Gemma3TextConfig(attn_logit_softcapping=50.0))


def test_vl_swap_keeps_vision_tower():
    model = tiny_model("qwen3_vl")
    vision = {k: v.clone() for k, v in model.model.visual.state_dict().items()}
    surgery.swap(model, 0, Candidate.of("gdn"))
    assert all(torch.equal(v, model.model.visual.state_dict()[k]) for k, v in vision.items())
    assert tiny_config("qwen3_vl").model_type == "qwen3_vl"


@pytest.mark.parametrize("arch", ARCHS)
def test_text_stack_reproduces_the_models_last_logits(arch):
    model = tiny_model(arch)
    for layer in range(3):  # the stack leaves masking to the mixers, as in every built model
        surgery.swap(model, layer, Candidate.of("gqa"))
    ids = _ids(model)
    with torch.no_grad():
        torch.testing.assert_close(surgery.text_stack(model).forward(ids), model(ids).logits[:, -1:],
                                   rtol=1e-5, atol=1e-5)


def test_repeated_swaps_of_one_layer_always_start_from_the_teacher():
    model = tiny_model("qwen3")
    ids = _ids(model)
    with torch.no_grad():
        before = model(ids).logits
        for cand in every_operator():
            surgery.swap(model, 1, cand)
        surgery.swap(model, 1, Candidate.of("gqa"))
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_swap_after_to_takes_the_new_dtype():
    """The teacher's replaced layers move with the model: swap gdn, `.to(float64)`, swap mla in the same layer -> the
    new mixer starts from the moved teacher attention, is float64, and the forward runs."""
    model = tiny_model("qwen3")
    surgery.swap(model, 0, Candidate.of("gdn"))
    model.to(torch.float64)
    mixer = surgery.swap(model, 0, Candidate.parse("mla:rank=8"))
    assert next(mixer.parameters()).dtype == torch.float64
    assert next(surgery.teacher_attention(model, 0).parameters()).dtype == torch.float64
    with torch.no_grad():
        assert model(_ids(model), use_cache=False).logits.dtype == torch.float64


def test_kept_originals_are_not_in_the_state_dict():
    """The teacher's layers a swap keeps are registered (so `.to()` moves them) but not persistent: the state dict is
    the model as it is, and loads back strictly."""
    model = tiny_model("qwen3")
    teacher_keys = list(model.state_dict())
    for layer in range(3):
        surgery.swap(model, layer, Candidate.of("gqa"))
    state = model.state_dict()
    assert list(state) == teacher_keys
    model.load_state_dict(state)  # strict: the kept originals are not missing
    surgery.swap(model, 1, Candidate.of("drop"))
    assert not [k for k in model.state_dict() if surgery.ORIGINALS in k]
    surgery.restore(model, 1)
    assert list(model.state_dict()) == teacher_keys


def test_teacher_operators_come_from_the_registry():
    from mosaic_search.modeling.mixers import MIXERS
    from mosaic_search.operators import REGISTRY

    # the remote code's table names a class for every mixer, and no other (MLPs: modeling/mlps.py)
    assert set(MIXERS) == {op for op, spec in REGISTRY.items() if spec.axis == "mixer"}
    assert surgery.teacher_ops(tiny_config("qwen3")) == [Candidate.teacher()] * 3 == [Candidate.of("gqa")] * 3
    assert Candidate.teacher("sliding_attention", 8) == Candidate.of("swa", {"window": 8})
    with pytest.raises(UsageError, match='layer type "linear_attention": mosaic starts from softmax-attention'):
        Candidate.teacher("linear_attention")
