"""Models built by mosaic: the teacher's class with each decoder layer's mixer taken from `config.mosaic`.

Shipped as remote code inside every built model directory and loaded with `trust_remote_code=True`;
imports only torch, transformers and the sibling files of this folder.
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM, Qwen3ForCausalLM, Qwen3VLForConditionalGeneration

from .architectures import ARCHITECTURES, base_model_type, decoder_layers, text_config
from .configuration_mosaic import MosaicLlamaConfig, MosaicQwen3Config, MosaicQwen3VLConfig
from .dims import ModelDims
from .generation import check_unpadded, generate_kwargs
from .mixers import mixer_class

# transformers' remote-code loader copies only the files this module imports by a `from .x import` line, and
# `mixer_class` imports by name at run time: every file that defines a mixer must be named here.
from .attention import Attention, LatentAttention  # noqa: E402,F401
from .linear_attention import GatedDeltaNet, KimiDeltaAttention  # noqa: E402,F401
from .removal import NoAttention, SkipLayer  # noqa: E402,F401


def install_mixers(model) -> None:
    """Replace each decoder layer's attention (or, for `replaces == "layer"`, the whole layer) as the config says."""
    config = model.config
    record = ARCHITECTURES[base_model_type(config)]
    dims = ModelDims.from_text_config(text_config(config, record), qk_norm=record.qk_norm)
    layers = decoder_layers(model, record)
    specs = config.mosaic["layers"]
    if len(specs) != len(layers):
        raise ValueError(f"config.mosaic lists {len(specs)} layers but the model has {len(layers)}")
    for idx, spec in enumerate(specs):
        module = mixer_class(spec["mixer"])(dims, idx, **spec.get("params", {}))
        if spec.get("replaces", "attention") == "layer":
            layers[idx] = module
        else:
            layers[idx].self_attn = module


def text_model(model):
    """The module that owns the decoder layers (the language model inside a VLM)."""
    obj = model
    for part in ARCHITECTURES[base_model_type(model.config)].layers_path.split(".")[:-1]:
        obj = getattr(obj, part)
    return obj


def _masks_done_by_mixers(masks_by_layer_type: bool):
    """A forward pre-hook on the text model: every mixer does its own causal / window masking, so the model's
    masks are replaced by ones it treats as already prepared (saving their O(T^2) construction, and avoiding
    mask code that knows nothing of linear-attention layers)."""

    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        # checked on prompts only: generation extends an unpadded mask with ones (and a check per step would sync)
        prompt = inputs is not None and inputs.shape[1] > 1
        if prompt:
            check_unpadded(mask)
        if masks_by_layer_type:
            # a dict is taken as masks already built per layer type; the mixers ignore them
            prepared = dict.fromkeys(module.config.layer_types)
        else:
            # a 4D mask is returned as is by create_causal_mask; this one is never read
            prepared = torch.ones(1, 1, 1, 1, dtype=torch.bool)
        if len(args) > 1:
            args = (args[0], prepared, *args[2:])
        else:
            kwargs["attention_mask"] = prepared
        return args, kwargs

    return hook


class _MosaicMixin:
    """Builds the teacher, then swaps in the mixers of `config.mosaic`, takes over masking and checks that each
    `generate` call asks for a mode the mix serves exactly (`generation.generate_kwargs`)."""

    # whether the text model looks its masks up by `layer_types` (Qwen3) or builds one causal mask (Llama, Qwen3-VL)
    masks_by_layer_type = False

    def _install_mosaic(self) -> None:
        install_mixers(self)
        text_model(self).register_forward_pre_hook(_masks_done_by_mixers(self.masks_by_layer_type), with_kwargs=True)

    @staticmethod
    def create_masks_for_generate(attention_mask=None, **kwargs):
        """The 2-D mask as it is: generate would otherwise build per-layer-type 4-D masks for a static cache, which
        the mixers do not read (and which transformers cannot size for linear-attention layers)."""
        return attention_mask

    def mosaic_mixers(self) -> list:
        """(layer index, op, mixer module) for every decoder layer, as `config.mosaic` lists them."""
        layers = decoder_layers(self, ARCHITECTURES[base_model_type(self.config)])
        return [(i, spec["op"], layers[i] if spec.get("replaces") == "layer" else layers[i].self_attn)
                for i, spec in enumerate(self.config.mosaic["layers"])]

    def generate(self, *args, **kwargs):
        """transformers' `generate`, refused in one line for a mode this mix cannot serve exactly (see
        `generation.generate_kwargs`); pass `generation_config` by keyword."""
        return super().generate(*args, **generate_kwargs(self, self.mosaic_mixers(), args, kwargs))


class MosaicQwen3ForCausalLM(_MosaicMixin, Qwen3ForCausalLM):
    """Qwen3 causal LM with per-layer mosaic mixers."""

    config_class = MosaicQwen3Config
    masks_by_layer_type = True

    def __init__(self, config):
        super().__init__(config)
        self._install_mosaic()


class MosaicLlamaForCausalLM(_MosaicMixin, LlamaForCausalLM):
    """Llama causal LM with per-layer mosaic mixers."""

    config_class = MosaicLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self._install_mosaic()


class MosaicQwen3VLForConditionalGeneration(_MosaicMixin, Qwen3VLForConditionalGeneration):
    """Qwen3-VL with mosaic mixers in its language model; vision tower, mRoPE and DeepStack are the teacher's."""

    config_class = MosaicQwen3VLConfig

    def __init__(self, config):
        super().__init__(config)
        self._install_mosaic()


# base model_type -> model class
MODELS = {
    "qwen3": MosaicQwen3ForCausalLM,
    "llama": MosaicLlamaForCausalLM,
    "qwen3_vl": MosaicQwen3VLForConditionalGeneration,
}
