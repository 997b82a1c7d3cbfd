"""The one record per supported transformers architecture: where its decoder layers are, and what a mixer must read
from its config to compute exactly what the teacher's attention computes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """One `model_type`: where the text decoder sits, and how its attention differs from plain Llama GQA.

    `qk_norm`: None, "rms" (Qwen3: w * x) or "gemma" (Gemma 3: (1 + w) * x, weights stored around zero), applied per
    head to q and k before RoPE. `bias`: "config" (the config's `attention_bias` on q/k/v/o) or "qkv" (Qwen2: q, k and
    v biased, o not). A fused `qkv_proj` (Phi-3) needs no field: `operators.teacher.teacher_projections` splits it.
    `query_scalar`: the config field whose inverse square root scales the scores (Gemma 3's `query_pre_attn_scalar`;
    None: head_dim). `rope_by_layer_type`: the rotary embedding takes the layer type (Gemma 3: local layers rotate
    with base 10k, global ones with 1M), so each layer keeps its teacher layer's RoPE whatever mixer it gets.
    `masks_by_layer_type`: the text model looks its masks up by `layer_types` (else it builds one causal mask).
    `unsupported`: config fields that must be unset (None / False / 0), with what mosaic's mixers would get wrong.
    """

    model_type: str
    text_path: str  # attribute path of the text model (embeddings, `layers`, norm, rotary) from the top-level model
    text_config: str | None  # attribute of the top-level config holding the text config, None if top-level
    qk_norm: str | None = None
    bias: str = "config"
    query_scalar: str | None = None
    rope_by_layer_type: bool = False
    mrope: bool = False  # 3-D (t, h, w) rotary positions (Qwen-VL)
    image_inputs: bool = False  # images go through its vision tower in `profile --image-tokens` and calibration rows
    masks_by_layer_type: bool = False
    unsupported: tuple[tuple[str, str], ...] = ()

    def text_model(self, model):
        """The module of a loaded model (…ForCausalLM / …ForConditionalGeneration) that owns the decoder layers,
        embeddings, rotary embedding and final norm: the one way every part of mosaic reaches it."""
        obj = model
        for part in self.text_path.split("."):
            obj = getattr(obj, part)
        return obj

    def decoder_layers(self, model):
        """The nn.ModuleList of text decoder layers of a loaded model."""
        return self.text_model(model).layers

    def multimodal_model(self, model):
        """The model around the text model that feeds images through the vision tower (its mRoPE index, DeepStack),
        or None for an architecture whose images mosaic does not feed (`image_inputs`)."""
        if not self.image_inputs:
            return None
        obj = model
        for part in self.text_path.split(".")[:-1]:
            obj = getattr(obj, part)
        return obj


_GEMMA_UNSUPPORTED = (
    ("attn_logit_softcapping", "soft-capped attention scores"),
    ("final_logit_softcapping", "soft-capped logits (the scorer's KL assumes a linear head)"),
    ("use_bidirectional_attention", "bidirectional attention (mosaic's mixers are causal)"),
)

ARCHITECTURES = {a.model_type: a for a in (
    Architecture("qwen3", "model", None, qk_norm="rms", masks_by_layer_type=True),
    Architecture("llama", "model", None),
    Architecture("qwen3_vl", "model.language_model", "text_config", qk_norm="rms", mrope=True,
                 image_inputs=True),
    Architecture("qwen2", "model", None, bias="qkv", masks_by_layer_type=True),
    Architecture("mistral", "model", None),
    Architecture("phi3", "model", None),
    Architecture("gemma3_text", "model", None, qk_norm="gemma", query_scalar="query_pre_attn_scalar",
                 rope_by_layer_type=True, masks_by_layer_type=True, unsupported=_GEMMA_UNSUPPORTED),
    Architecture("gemma3", "model.language_model", "text_config", qk_norm="gemma",
                 query_scalar="query_pre_attn_scalar", rope_by_layer_type=True, masks_by_layer_type=True,
                 unsupported=_GEMMA_UNSUPPORTED),
    Architecture("qwen2_5_vl", "model.language_model", "text_config", bias="qkv", mrope=True,
                 masks_by_layer_type=True),
)}


# a model mosaic built has model_type "mosaic_<its teacher's model_type>"
BUILT_PREFIX = "mosaic_"


def is_built(config) -> bool:
    """Whether a config is that of a model mosaic built (the one test of it, for the package and the remote code)."""
    return getattr(config, "model_type", "").startswith(BUILT_PREFIX)


def base_model_type(config) -> str:
    """The teacher's model_type, also for a model built by mosaic (model_type 'mosaic_<base>')."""
    model_type = getattr(config, "model_type", "")
    return model_type[len(BUILT_PREFIX):] if is_built(config) else model_type


def find_architecture(config) -> Architecture | None:
    """The architecture record for this config, or None if unsupported."""
    return ARCHITECTURES.get(base_model_type(config))


def architecture_of(config) -> Architecture:
    """The architecture record of a supported (teacher or built) config: the remote code's one lookup."""
    return ARCHITECTURES[base_model_type(config)]


def text_config(config, arch: Architecture):
    """The config that describes the text decoder."""
    return getattr(config, arch.text_config) if arch.text_config else config


def rope_layer_types(config, arch: Architecture) -> list | None:
    """Per decoder layer, the layer type whose RoPE it rotates with (the teacher's `layer_types`, which a built model
    keeps in `mosaic["rope_layer_types"]`), or None when every layer shares one rotary embedding."""
    if not arch.rope_by_layer_type:
        return None
    mosaic = getattr(config, "mosaic", None)
    if mosaic and mosaic.get("rope_layer_types"):
        return list(mosaic["rope_layer_types"])
    return list(text_config(config, arch).layer_types)


def teacher_rotary(model, arch: Architecture, kinds: list):
    """A rotary embedding of the teacher's layer types `kinds` (`rope_layer_types`), built like the model's own (which,
    in a built model, follows the plan's types: no local RoPE once every local layer became gdn)."""
    import copy

    inner = arch.text_model(model)
    cfg = copy.copy(inner.config)
    cfg.layer_types = list(kinds)
    rotary = type(inner.rotary_emb)(cfg)
    param = next(model.parameters())
    return rotary.to(param.device)


def image_architectures() -> list[str]:
    """The model types whose vision tower mosaic feeds (`Architecture.image_inputs`)."""
    return sorted(a.model_type for a in ARCHITECTURES.values() if a.image_inputs)
