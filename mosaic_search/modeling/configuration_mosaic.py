"""Configs of models built by mosaic: the teacher's config class under model_type 'mosaic_<base>'.

The config carries everything the remote code needs, so a built model loads with torch and transformers only:
`layer_types` (in the text config, transformers' own vocabulary) drives the generation cache, and the
`mosaic` block lists each layer's mixer as `{op, params, mixer, replaces}`.
"""

from __future__ import annotations

from transformers import LlamaConfig, Qwen3Config, Qwen3VLConfig


class MosaicQwen3Config(Qwen3Config):
    """A Qwen3 config whose decoder layers follow `mosaic["layers"]`."""

    model_type = "mosaic_qwen3"


class MosaicLlamaConfig(LlamaConfig):
    """A Llama config whose decoder layers follow `mosaic["layers"]`."""

    model_type = "mosaic_llama"


class MosaicQwen3VLConfig(Qwen3VLConfig):
    """A Qwen3-VL config whose language-model layers follow `mosaic["layers"]` (vision tower untouched)."""

    model_type = "mosaic_qwen3_vl"


# base model_type -> (config class, the auto class it loads through)
CONFIGS = {
    "qwen3": (MosaicQwen3Config, "AutoModelForCausalLM"),
    "llama": (MosaicLlamaConfig, "AutoModelForCausalLM"),
    "qwen3_vl": (MosaicQwen3VLConfig, "AutoModelForImageTextToText"),
}
