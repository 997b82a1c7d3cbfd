"""Configs of models built by mosaic: the teacher's config class under model_type 'mosaic_<base>'.

The config carries everything the remote code needs, so a built model loads with torch and transformers only:
`layer_types` (in the text config, transformers' own vocabulary) drives the generation cache, and the
`mosaic` block lists each layer's operator as `{op, params}` (`mixers.MIXERS` maps op to its class).
"""

from __future__ import annotations

import logging

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


# the `mosaic` block's format: 2 adds a layer's "mlp" ({op, params}) and its mixer's "kv_heads" param; a block without
# "format" is 1, which this code reads as it is
MOSAIC_FORMAT = 2


class FalseWarnings(logging.Filter):
    """transformers' warnings that are false for a mosaic model. A built config's windows differ per layer: it
    allows reading the global `sliding_window` (the largest, which is what the caches that read it need), yet
    transformers' own config validation reads it and warns; the mixers never read it. And a teacher class's
    attention, replaced right after by a mixer that does its own windowing, may say windows are not implemented."""

    FALSE = ("Sliding Window Attention is enabled but not implemented", "per-layer attribute `sliding_window`")

    def filter(self, record) -> bool:
        return not any(phrase in record.getMessage() for phrase in self.FALSE)


# installed as the first mosaic config class is imported (before any mosaic config is made), once per process
# however many built models' copies of this file are imported
_HETEROGENEITY = logging.getLogger("transformers.integrations.heterogeneity.configuration_utils")
if not any(type(f).__name__ == "FalseWarnings" for f in _HETEROGENEITY.filters):
    _HETEROGENEITY.addFilter(FalseWarnings())


class MosaicQwen3Config(Qwen3Config):
    """A Qwen3 config whose decoder layers follow `mosaic["layers"]`."""

    model_type = "mosaic_qwen3"


class MosaicLlamaConfig(LlamaConfig):
    """A Llama config whose decoder layers follow `mosaic["layers"]`."""

    model_type = "mosaic_llama"


class MosaicQwen3VLConfig(Qwen3VLConfig):
    """A Qwen3-VL config whose language-model layers follow `mosaic["layers"]` (vision tower untouched)."""

    model_type = "mosaic_qwen3_vl"


class MosaicQwen2Config(Qwen2Config):
    """A Qwen2 / Qwen2.5 config whose decoder layers follow `mosaic["layers"]`."""

    model_type = "mosaic_qwen2"


class MosaicMistralConfig(MistralConfig):
    """A Mistral config whose decoder layers follow `mosaic["layers"]`."""

    model_type = "mosaic_mistral"


class MosaicPhi3Config(Phi3Config):
    """A Phi-3 / Phi-4-mini config whose decoder layers follow `mosaic["layers"]`."""

    model_type = "mosaic_phi3"


class MosaicGemma3TextConfig(Gemma3TextConfig):
    """A Gemma 3 text config whose decoder layers follow `mosaic["layers"]`."""

    model_type = "mosaic_gemma3_text"


class MosaicGemma3Config(Gemma3Config):
    """A Gemma 3 config whose language-model layers follow `mosaic["layers"]` (vision tower untouched)."""

    model_type = "mosaic_gemma3"


class MosaicQwen2_5_VLConfig(Qwen2_5_VLConfig):
    """A Qwen2.5-VL config whose language-model layers follow `mosaic["layers"]` (vision tower untouched)."""

    model_type = "mosaic_qwen2_5_vl"


def rope_by_layer(text: dict, kinds: list) -> dict:
    """For a model whose rotary embedding is keyed by layer type (Gemma 3): `rope_parameters` with an entry for every
    type of the built `text["layer_types"]`, which transformers requires. Each layer rotates with its teacher layer's
    type `kinds[i]` instead (`modeling_mosaic`), so a new type (linear_attention) borrows any teacher entry unread."""
    rope = {k: dict(v) for k, v in text["rope_parameters"].items()}
    for kind in text["layer_types"]:
        rope.setdefault(kind, dict(rope[kinds[0]]))
    return {"rope_parameters": rope}


# base model_type -> (config class, the auto class it loads through)
CONFIGS = {
    "qwen3": (MosaicQwen3Config, "AutoModelForCausalLM"),
    "llama": (MosaicLlamaConfig, "AutoModelForCausalLM"),
    "qwen3_vl": (MosaicQwen3VLConfig, "AutoModelForImageTextToText"),
    "qwen2": (MosaicQwen2Config, "AutoModelForCausalLM"),
    "mistral": (MosaicMistralConfig, "AutoModelForCausalLM"),
    "phi3": (MosaicPhi3Config, "AutoModelForCausalLM"),
    "gemma3_text": (MosaicGemma3TextConfig, "AutoModelForCausalLM"),
    "gemma3": (MosaicGemma3Config, "AutoModelForImageTextToText"),
    "qwen2_5_vl": (MosaicQwen2_5_VLConfig, "AutoModelForImageTextToText"),
}
