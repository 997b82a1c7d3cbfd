"""Models built by mosaic: the teacher's class with each decoder layer's mixer taken from `config.mosaic`.

Shipped as remote code inside every built model directory and loaded with `trust_remote_code=True`;
imports only torch, transformers and the sibling files of this folder.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    LlamaForCausalLM,
    MistralForCausalLM,
    Phi3ForCausalLM,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
    Qwen3VLForConditionalGeneration,
)

from .architectures import BUILT_PREFIX, architecture_of, rope_layer_types, teacher_rotary, text_config
from .configuration_mosaic import (
    MOSAIC_FORMAT,
    FalseWarnings,
    MosaicGemma3Config,
    MosaicGemma3TextConfig,
    MosaicLlamaConfig,
    MosaicMistralConfig,
    MosaicPhi3Config,
    MosaicQwen2_5_VLConfig,
    MosaicQwen2Config,
    MosaicQwen3Config,
    MosaicQwen3VLConfig,
)
from .dims import ModelDims
from .generation import check_unpadded, generate_kwargs
from .mixers import mixer_for, replaces_layer, stand_in
from .mlps import mlp_for
from .paged import check_servable, paged_slots, serving_config


def install_mixers(model) -> None:
    """Replace each decoder layer's attention (or, for a mixer that `replaces_layer`, the whole layer) with the mixer
    of its `config.mosaic["layers"]` entry ({op, params}; older entries' extra keys are ignored), and its MLP with the
    entry's `mlp` where it has one (`mlps.mlp_for`)."""
    config = model.config
    record = architecture_of(config)
    dims = ModelDims.from_text_config(text_config(config, record), record)
    layers = record.decoder_layers(model)
    entries = config.mosaic["layers"]
    if config.mosaic.get("format", 1) > MOSAIC_FORMAT:
        raise ValueError(f"config.mosaic has format {config.mosaic['format']}, newer than this code reads "
                         f"({MOSAIC_FORMAT}); load it with the remote code saved beside it")
    if len(entries) != len(layers):
        raise ValueError(f"config.mosaic lists {len(entries)} layers but the model has {len(layers)}")
    text = text_config(config, record)
    for idx, entry in enumerate(entries):
        module = mixer_for(entry, dims, idx)
        if replaces_layer(module):
            layers[idx] = stand_in(module, layers[idx])
            continue
        layers[idx].self_attn = module
        mlp = mlp_for(entry, layers[idx].mlp, text)
        if mlp is not None:
            layers[idx].mlp = mlp


def install_teacher_rope(model) -> None:
    """Where the rotary embedding depends on the layer type (Gemma 3: local 10k, global 1M bases), make each decoder
    layer rotate with its teacher layer's RoPE (`mosaic["rope_layer_types"]`), whatever its type in the plan.

    The text model's rotary embedding is rebuilt for the teacher's layer types (same class and buffer names as the
    teacher's, so loading fills it as it filled the teacher's). The text model still asks it for each *built* type
    and hands layer i that type's cos/sin; a forward pre-hook on each layer replaces them with its teacher type's,
    computed once per forward (a pre-hook on the text model empties the memo). A built type the teacher lacks
    (linear_attention) is answered with a teacher type's tables, which no layer reads."""
    record = architecture_of(model.config)
    kinds = rope_layer_types(model.config, record)
    if kinds is None:
        return
    inner = record.text_model(model)
    inner.rotary_emb = teacher_rotary(model, record, kinds)
    memo: dict = {}

    def forget(module, args, kwargs):
        memo.clear()

    def teacher_type(module, args):
        if len(args) > 2 and args[2] not in kinds:
            return (*args[:2], kinds[0], *args[3:])
        return args

    def rope_of(kind):
        def hook(module, args, kwargs):
            if kwargs.get("position_ids") is None:  # called directly (mosaic's TextStack): its RoPE is already per layer
                return None
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            key = (kind, id(kwargs["position_ids"]))
            if key not in memo:
                memo[key] = inner.rotary_emb(hidden, kwargs["position_ids"], kind)
            return args, {**kwargs, "position_embeddings": memo[key]}
        return hook

    inner.register_forward_pre_hook(forget, with_kwargs=True)
    inner.rotary_emb.register_forward_pre_hook(teacher_type)
    for layer, kind in zip(record.decoder_layers(model), kinds):
        layer.register_forward_pre_hook(rope_of(kind), with_kwargs=True)


def _masks_done_by_mixers(masks_by_layer_type: bool):
    """A forward pre-hook on the text model: every mixer does its own causal / window masking, so the model's
    masks are replaced by ones it treats as already prepared (saving their O(T^2) construction, and avoiding
    mask code that knows nothing of linear-attention layers)."""

    def hook(module, args, kwargs):
        if kwargs.get("output_attentions", module.config.output_attentions):
            raise ValueError("output_attentions: mosaic's mixers never materialise attention weights (and gdn, kda, "
                             "none and drop layers have none), so none can be returned per layer; request "
                             "output_hidden_states instead")
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


@contextlib.contextmanager
def _teacher_built_quietly(teacher_class):
    """While the teacher class builds its layers (and its attention classes, replaced right after by mixers that do
    their own windowing), drop the warnings `FalseWarnings` names from the logger of the teacher's module: some (Qwen2-VL
    family) say sliding windows are not implemented for sdpa, which is false of the mixers."""
    logger, quiet = logging.getLogger(teacher_class.__module__), FalseWarnings()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _MosaicMixin:
    """Builds the teacher, then swaps in the mixers of `config.mosaic`, takes over masking and checks that each
    `generate` call asks for a mode the mix serves exactly (`generation.generate_kwargs`). Listed first among the
    bases, so its `__init__` runs around the teacher class's."""

    def __init__(self, config):
        teacher_class = next(c for c in type(self).__mro__ if c.__module__.startswith("transformers.models."))
        with _teacher_built_quietly(teacher_class):
            super().__init__(config)
        self._install_mosaic()

    def _install_mosaic(self) -> None:
        install_mixers(self)
        install_teacher_rope(self)
        # whether the text model looks its masks up by `layer_types` (Qwen3) or builds one causal mask (Llama)
        record = architecture_of(self.config)
        record.text_model(self).register_forward_pre_hook(_masks_done_by_mixers(record.masks_by_layer_type),
                                                          with_kwargs=True)

    @staticmethod
    def create_masks_for_generate(attention_mask=None, **kwargs):
        """The 2-D mask as it is: generate would otherwise build per-layer-type 4-D masks for a static cache, which
        the mixers do not read (and which transformers cannot size for linear-attention layers)."""
        return attention_mask

    def mosaic_mixers(self) -> list:
        """(layer index, op, mixer module) for every decoder layer, as `config.mosaic` lists them."""
        layers = architecture_of(self.config).decoder_layers(self)
        return [(i, entry["op"], layers[i] if replaces_layer(layers[i]) else layers[i].self_attn)
                for i, entry in enumerate(self.config.mosaic["layers"])]

    def generate(self, *args, **kwargs):
        """transformers' `generate`, refused in one line for a mode this mix cannot serve exactly (see
        `generation.generate_kwargs`); pass `generation_config` by keyword."""
        return super().generate(*args, **generate_kwargs(self, self.mosaic_mixers(), args, kwargs))

    def init_continuous_batching(self, generation_config=None, continuous_batching_config=None, **kwargs):
        """transformers' continuous batching (what `generate_batch` and `transformers serve --continuous-batching` run),
        refused in one line before any request for a mix its paged cache cannot hold (`paged.check_servable`)."""
        text = self.config.get_text_config(decoder=True)
        check_servable(self.mosaic_mixers(), text)
        with paged_slots(text):
            manager = super().init_continuous_batching(generation_config, serving_config(continuous_batching_config),
                                                       **kwargs)
        if not getattr(manager, "_mosaic_slots", False):
            create = manager._create_batch_processor  # makes the paged cache, at warmup or when the loop starts

            def create_with_paged_slots():
                with paged_slots(text):
                    return create()

            manager._create_batch_processor, manager._mosaic_slots = create_with_paged_slots, True
        return manager


class MosaicQwen3ForCausalLM(_MosaicMixin, Qwen3ForCausalLM):
    """Qwen3 causal LM with per-layer mosaic mixers."""

    config_class = MosaicQwen3Config


class MosaicLlamaForCausalLM(_MosaicMixin, LlamaForCausalLM):
    """Llama causal LM with per-layer mosaic mixers."""

    config_class = MosaicLlamaConfig


class MosaicQwen3VLForConditionalGeneration(_MosaicMixin, Qwen3VLForConditionalGeneration):
    """Qwen3-VL with mosaic mixers in its language model; vision tower, mRoPE and DeepStack are the teacher's."""

    config_class = MosaicQwen3VLConfig


class MosaicQwen2ForCausalLM(_MosaicMixin, Qwen2ForCausalLM):
    """Qwen2 / Qwen2.5 causal LM with per-layer mosaic mixers."""

    config_class = MosaicQwen2Config


class MosaicMistralForCausalLM(_MosaicMixin, MistralForCausalLM):
    """Mistral causal LM with per-layer mosaic mixers."""

    config_class = MosaicMistralConfig


class MosaicPhi3ForCausalLM(_MosaicMixin, Phi3ForCausalLM):
    """Phi-3 / Phi-4-mini causal LM with per-layer mosaic mixers (q/k/v split from the teacher's fused qkv_proj)."""

    config_class = MosaicPhi3Config


class MosaicGemma3ForCausalLM(_MosaicMixin, Gemma3ForCausalLM):
    """Gemma 3 causal LM with per-layer mosaic mixers, each layer keeping its teacher layer's RoPE."""

    config_class = MosaicGemma3TextConfig


class MosaicGemma3ForConditionalGeneration(_MosaicMixin, Gemma3ForConditionalGeneration):
    """Gemma 3 with mosaic mixers in its language model; vision tower and projector are the teacher's.

    Text only: Gemma 3 attends bidirectionally among an image's tokens, and the mixers are causal, so a call with
    images is refused rather than answered differently from the teacher."""

    config_class = MosaicGemma3Config

    def forward(self, *args, pixel_values=None, **kwargs):
        if pixel_values is not None:
            raise ValueError("images: Gemma 3 attends bidirectionally within an image and mosaic's mixers are causal, "
                             "so a mosaic Gemma 3 model reads text only")
        return super().forward(*args, **kwargs)


class MosaicQwen2_5_VLForConditionalGeneration(_MosaicMixin, Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL with mosaic mixers in its language model; vision tower and mRoPE are the teacher's."""

    config_class = MosaicQwen2_5_VLConfig


# base model_type -> model class, keyed by the config each class reads (`configuration_mosaic.CONFIGS`: same keys)
MODELS = {cls.config_class.model_type[len(BUILT_PREFIX):]: cls for cls in (
    MosaicQwen3ForCausalLM, MosaicLlamaForCausalLM, MosaicQwen3VLForConditionalGeneration, MosaicQwen2ForCausalLM,
    MosaicMistralForCausalLM, MosaicPhi3ForCausalLM, MosaicGemma3ForCausalLM, MosaicGemma3ForConditionalGeneration,
    MosaicQwen2_5_VLForConditionalGeneration)}
