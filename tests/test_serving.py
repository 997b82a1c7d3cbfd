"""Continuous batching (transformers' `generate_batch`, what `transformers serve --continuous-batching` runs) on a
built model, for every operator: each request gets exactly the tokens `generate` gives it alone, or the mix is
refused in one line naming the layer and its operator before any request is taken."""

from __future__ import annotations

import pytest
import torch
from conftest import op_key
from test_generate import OPERATORS, models  # noqa: F401  (its fixture: one build per operator, for the slow tests)

# prompts longer than the SWA window and than a batch (`max_batch_tokens`): prefills are split across steps
PROMPTS = [torch.randint(3, 89, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (6, 21, 3, 9)]
NEW = 12
SERVABLE = ("gqa", "swa", "mla", "none", "drop")


def _serving(**kwargs):
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    # greedy to max_new_tokens; eos 2 is a token the tiny models produce, so requests also end early
    config = GenerationConfig(max_new_tokens=NEW, do_sample=False, eos_token_id=2, pad_token_id=0)
    return config, ContinuousBatchingConfig(num_blocks=32, max_batch_tokens=16, **kwargs)


def _candidates(model):
    from mosaic_search.operators import Candidate

    return [Candidate.of(e["op"], e.get("params", {})) for e in model.config.mosaic["layers"]]


@pytest.fixture(scope="module")
def mixes(tmp_path_factory):
    """Three qwen3 builds: every operator the paged cache holds, in one model; gdn, kda among gqa layers; and gqa
    with one KV head."""
    from test_builder import LAYERS, MIXED, Teacher, _load_built

    from mosaic_search import builder
    from mosaic_search.operators import Candidate

    root = tmp_path_factory.mktemp("serving")
    teacher, gqa = Teacher("qwen3", root), Candidate.of("gqa")
    layers = [c for c in MIXED if _servable(c)]
    recurrent = [gqa, *(c for c in MIXED if c.op not in SERVABLE)]
    fewer_kv = [gqa, Candidate.of("gqa", {"kv_heads": 1})]
    return {name: _load_built(builder.build(teacher.plan(mix + [gqa] * (LAYERS - len(mix)), name), out=root / name))
            for name, mix in (("servable", layers), ("recurrent", recurrent), ("fewer_kv", fewer_kv))}


def _servable(c) -> bool:
    """Whether continuous batching serves an operator: not a recurrent one, nor attention with fewer KV heads (the
    paged cache lays out the config's heads)."""
    return c.op in SERVABLE and "kv_heads" not in dict(c.params)


# a model per operator is slow (each generate_batch starts and stops a serving thread): the unit suite serves every
# servable operator at once in one model and refuses a recurrent mix; the slow suite serves each operator's build
@pytest.mark.parametrize("op", [pytest.param(op_key(c), marks=pytest.mark.slow) for c in OPERATORS]
                         + ["servable", "recurrent", "fewer_kv"])
def test_continuous_batching_gives_each_request_the_tokens_of_generate(request, mixes, op):
    model = mixes[op] if op in mixes else request.getfixturevalue("models")[op]
    config, serving = _serving()
    if not all(map(_servable, _candidates(model))):
        with pytest.raises(ValueError) as refused:
            model.generate_batch(PROMPTS, generation_config=config, continuous_batching_config=serving)
        assert model.config.layer_types == [c.spec.layer_type for c in _candidates(model)]
        i, first = next((i, c) for i, c in enumerate(_candidates(model)) if not _servable(c))
        why = "keeps a recurrent state" if first.op not in SERVABLE else "keeps 1 K/V heads, but transformers'"
        assert str(refused.value).startswith(f"continuous batching: layer {i} ({first.op}) {why}")
        assert "\n" not in str(refused.value)
        return
    with torch.no_grad():
        served = model.generate_batch(PROMPTS, generation_config=config, continuous_batching_config=serving)
        alone = [model.generate(torch.tensor([p]), generation_config=config)[0, len(p):].tolist() for p in PROMPTS]
    assert [r.generated_tokens for r in served.values()] == alone
    # none / drop layers had full slots in the paged cache only: generate still gets linear-attention slots for them
    assert model.config.layer_types == [c.spec.layer_type for c in _candidates(model)]
    assert sum(map(len, alone)) > 2 * len(PROMPTS)  # decoding ran, not only the prefill
