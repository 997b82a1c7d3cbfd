"""Where each supported transformers architecture keeps its text decoder layers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """How to reach the decoder layers and the text config of one `model_type`."""

    model_type: str
    layers_path: str  # attribute path from the top-level model (…ForCausalLM / …ForConditionalGeneration)
    text_config: str | None  # attribute of the top-level config holding the text config, None if top-level
    qk_norm: bool  # Qwen3 normalises q and k per head before RoPE; Llama does not
    vision: bool


ARCHITECTURES = {a.model_type: a for a in (
    Architecture("qwen3", "model.layers", None, qk_norm=True, vision=False),
    Architecture("llama", "model.layers", None, qk_norm=False, vision=False),
    Architecture("qwen3_vl", "model.language_model.layers", "text_config", qk_norm=True, vision=True),
)}


def base_model_type(config) -> str:
    """The teacher's model_type, also for a model built by mosaic (model_type 'mosaic_<base>')."""
    model_type = getattr(config, "model_type", "")
    return model_type[len("mosaic_"):] if model_type.startswith("mosaic_") else model_type


def find_architecture(config) -> Architecture | None:
    """The architecture record for this config, or None if unsupported."""
    return ARCHITECTURES.get(base_model_type(config))


def text_config(config, arch: Architecture):
    """The config that describes the text decoder."""
    return getattr(config, arch.text_config) if arch.text_config else config


def decoder_layers(model, arch: Architecture):
    """The nn.ModuleList of text decoder layers."""
    obj = model
    for part in arch.layers_path.split("."):
        obj = getattr(obj, part)
    return obj
