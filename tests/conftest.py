"""Tiny random teachers of every supported architecture, built from configs (no download)."""

from __future__ import annotations

import os

# the suite never reaches a hub: without this, every hub id tried waits through huggingface_hub's retries
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mosaic_search.cli.terminal import show_notes  # noqa: E402
from mosaic_search.operators import REGISTRY, Candidate  # noqa: E402

# library notes and warnings on stderr, as the command line prints them (tests of library calls read them there)
show_notes()


def tiny_config(kind: str):
    """A small config of one supported architecture."""
    from transformers import (
        Gemma3Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2_5_VLConfig,
        Qwen2Config,
        Qwen3Config,
        Qwen3VLConfig,
    )

    text = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6,
                tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "qwen3":
        return Qwen3Config(**text, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if kind == "llama":
        return LlamaConfig(**text, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if kind == "qwen3_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                                   "mrope_section": [4, 2, 2]}
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=64,
                      deepstack_visual_indexes=[0])
        return Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=90, video_token_id=91,
                             vision_start_token_id=92, vision_end_token_id=93)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if kind == "qwen2":
        return Qwen2Config(**text, rope_parameters=rope)
    if kind == "mistral":  # sliding in every layer, as Mistral-7B-v0.1 (window shorter than the tests' sequences)
        return MistralConfig(**text, rope_parameters=rope, sliding_window=6)
    if kind == "phi3":  # partial RoPE, as Phi-4-mini (0.75 of each head rotates)
        return Phi3Config(**text, rope_parameters={**rope, "partial_rotary_factor": 0.75},
                          sliding_window=None)
    gemma = dict(text, query_pre_attn_scalar=24, sliding_window=6, sliding_window_pattern=2, num_hidden_layers=4,
                 rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    if kind == "gemma3_text":
        return Gemma3TextConfig(**gemma)
    siglip = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=4)
    if kind == "gemma3":
        return Gemma3Config(text_config=gemma, vision_config=siglip, mm_tokens_per_image=4, image_token_index=90,
                            boi_token_index=91, eoi_token_index=92)
    if kind == "qwen2_5_vl":
        text["rope_parameters"] = {**rope, "mrope_section": [2, 3, 3]}
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=16,
                      fullatt_block_indexes=[0])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=90, video_token_id=91,
                                vision_start_token_id=92, vision_end_token_id=93)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0):
    """A float32 random model of `tiny_config(kind)`, in eval mode."""
    from mosaic_search.hf.models import model_from_config

    return model_from_config(tiny_config(kind), seed=seed)


ARCHS = ("qwen3", "llama", "qwen3_vl")
# the families added after the first three: each runs the whole chain once (tests/test_families.py)
FAMILIES = ("qwen2", "mistral", "phi3", "gemma3_text", "gemma3", "qwen2_5_vl")


def every_operator(window: int = 4, width: int = 32) -> list[Candidate]:
    """One layer choice per registered operator (small params), so new operators are tested automatically: every
    mixer with the teacher's MLP, every MLP candidate under gqa (as `gqa+mlp:width=32`), and gqa with fewer KV heads
    (`gqa:kv_heads=1`, of the test models' 2)."""
    params = {"window": window, "rank": 24, "width": width}
    cands = [Candidate.of(name, {p: params[p] for p in spec.params if p not in spec.optional})
             for name, spec in REGISTRY.items()]
    cands.append(Candidate.of("gqa", {"kv_heads": 1}))
    gqa = Candidate.of("gqa")
    return [c if c.spec.axis == "mixer" else gqa.with_mlp(c) for c in cands]


def op_key(c: Candidate) -> str:
    """A test's name for one of `every_operator`'s choices: the op, or the whole choice where it has an MLP or an
    optional param."""
    return str(c) if c.mlp or any(p in c.kwargs for p in c.spec.optional) else c.op


def cache_for(model, cand, layer: int = 1):
    """An empty dynamic cache as a built model with `cand` in `layer` (and full attention elsewhere) gets it: its
    slots follow `layer_types`, as transformers builds them."""
    import copy

    from transformers import DynamicCache

    config = copy.deepcopy(model.config)
    config.layer_types = [cand.spec.layer_type if i == layer else "full_attention"
                          for i in range(config.num_hidden_layers)]
    config.sliding_window = cand.kwargs.get("window")
    return DynamicCache(config=config)


@pytest.fixture(scope="session")
def qwen3():
    return tiny_model("qwen3")


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module: its models are tiny, and a second thread only waits on a core
    another process may hold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA; elsewhere they are skipped, and say why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class WorkTimer:
    """A machine on which time is exactly additive and drifts: a call costs the parameters of every module
    it runs (counted by a global forward hook) times the machine's speed during that measurement, which
    cycles through `speeds` like a shared VM's. Paired (the default), it has `pairs`, and the reference and
    the timed closure of one sample see the same speed, as two runs a millisecond apart do."""

    def __init__(self, paired=True, speeds=(1.0, 3.0, 1.7)):
        self.speeds, self.measurements = speeds, 0
        self.seen = []  # per measured closure: Counter of module class names it ran
        if paired:
            self.pairs = self._pairs

    def _cost(self, fn):
        from collections import Counter

        work, names = 0, Counter()

        def hook(module, args, out):
            nonlocal work
            work += sum(p.numel() for p in module.parameters(recurse=False))
            names[type(module).__name__] += 1

        handle = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            with torch.no_grad():
                fn()
        finally:
            handle.remove()
        return work / 1e4, names

    def _speed(self):
        self.measurements += 1
        return self.speeds[self.measurements % len(self.speeds)]

    def __call__(self, fn, phase):
        speed, (work, names) = self._speed(), self._cost(fn)
        self.seen.append(names)
        return [work * speed] * 3

    def _pairs(self, reference, fn, phase):
        speed, (ref, _), (work, names) = self._speed(), self._cost(reference), self._cost(fn)
        self.seen.append(names)
        return [(ref * speed, work * speed)] * 3


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """A small solved-for profile and sensitivity table (test_solver's `make(4, seed=5)`) saved in a fresh working
    directory: (profile path, table path), for tests of argument and error handling."""
    from test_solver import make, save_pair

    monkeypatch.chdir(tmp_path)
    return save_pair(tmp_path, *make(4, seed=5))
