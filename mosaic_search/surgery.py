"""The only place that knows Hugging Face decoder internals: find layers, read dims, swap mixers.

The scorer and the builder both call `swap`, so what is scored is exactly what is shipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError
from .modeling import architectures as arch_mod
from .modeling.dims import ModelDims
from .operators import Candidate


@dataclass(frozen=True)
class Arch:
    """A supported architecture bound to helpers that read a config of it."""

    record: arch_mod.Architecture

    def text(self, config):
        """The text decoder's config."""
        return arch_mod.text_config(config, self.record)


def architecture(config) -> Arch:
    """The supported architecture of a config, or a one-line error listing the supported ones."""
    record = arch_mod.find_architecture(config)
    if record is None:
        supported = ", ".join(sorted(arch_mod.ARCHITECTURES))
        raise UsageError(f'unsupported architecture "{getattr(config, "model_type", "?")}"; '
                         f"mosaic supports: {supported}")
    return Arch(record)


def dims_of(config) -> ModelDims:
    """Decoder dimensions of a (teacher or built) config."""
    a = architecture(config)
    return ModelDims.from_text_config(a.text(config), qk_norm=a.record.qk_norm)


def decoder_layers(model):
    """The text decoder layers of a loaded model."""
    return arch_mod.decoder_layers(model, architecture(model.config).record)


def _originals(model) -> dict:
    # Teacher decoder layers we replaced, by index: the source for initialising any later swap of that layer.
    if "_mosaic_originals" not in model.__dict__:
        model.__dict__["_mosaic_originals"] = {}
    return model.__dict__["_mosaic_originals"]


def teacher_layer(model, layer: int):
    """The teacher's own decoder layer `layer`, even after swaps (its `self_attn` may be a mixer now)."""
    return _originals(model).get(layer) or decoder_layers(model)[layer]


def teacher_attention(model, layer: int):
    """The teacher's own attention module of `layer`, even after swaps."""
    original = teacher_layer(model, layer)
    return original.__dict__.get("_mosaic_teacher_attn", original.self_attn)


def build_mixer(model, layer: int, candidate: Candidate, weights: dict | None = None):
    """A new mixer for `layer`, initialised from the teacher (or loaded from `weights`), on the teacher's
    device and dtype."""
    spec = candidate.spec
    dims = dims_of(model.config)
    candidate.check_fits(dims)
    teacher = teacher_attention(model, layer)
    param = next(teacher.parameters())
    module = spec.build(dims, layer, **candidate.kwargs)
    if weights is not None:
        missing, unexpected = module.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise UsageError(f"weights for layer {layer} {candidate}: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
    else:
        spec.init_from_teacher(module, teacher)
    return module.to(device=param.device, dtype=param.dtype)


def swap(model, layer: int, candidate: Candidate, weights: dict | None = None):
    """Replace layer `layer`'s attention (or, for `drop`, the whole decoder layer) with `candidate`; return
    the new module. `weights` (a state dict) replaces the teacher initialisation, e.g. aligned weights."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise UsageError(f"layer {layer} is out of range: the model has {len(layers)} layers (0..{len(layers) - 1})")
    module = build_mixer(model, layer, candidate, weights)
    return install(model, layer, candidate, module)


def install(model, layer: int, candidate: Candidate, module):
    """Put an already-built mixer into `layer`, keeping the teacher's layer for later restores."""
    layers = decoder_layers(model)
    originals = _originals(model)
    if layer not in originals:
        originals[layer] = layers[layer]
        # keep the teacher's attention too: the decoder layer object is reused for attention swaps
        originals[layer].__dict__["_mosaic_teacher_attn"] = layers[layer].self_attn
    original = originals[layer]
    if candidate.spec.replaces == "layer":
        layers[layer] = module
    else:
        layers[layer] = original
        original.self_attn = module
    return module


def restore(model, layer: int) -> None:
    """Put the teacher's own decoder layer and attention back into `layer`."""
    originals = _originals(model)
    if layer in originals:
        original = originals.pop(layer)
        original.self_attn = original.__dict__.pop("_mosaic_teacher_attn")
        decoder_layers(model)[layer] = original


@dataclass(frozen=True)
class DeepStack:
    """Qwen3-VL's DeepStack injection for a batch: after decoder layer k < len(features), features[k] (one row per
    image token, in row-major order) is added to the hidden states of the image tokens (`mask`, [b, T])."""

    mask: object
    features: list

    def after(self, layer: int, hidden):
        """The hidden states leaving decoder layer `layer`, with its visual features added if it has any."""
        if layer >= len(self.features):
            return hidden
        mask = self.mask.to(hidden.device)
        hidden = hidden.clone()
        hidden[mask] = hidden[mask] + self.features[layer].to(hidden.device, hidden.dtype)
        return hidden


@dataclass(frozen=True)
class TextStack:
    """The pieces of a loaded model's text path, so stages can run and time it layer by layer."""

    embed: object
    rotary: object
    layers: object
    norm: object
    lm_head: object
    mrope: bool
    vlm: object = None  # Qwen3-VL's inner model (vision tower, mRoPE index) when the model has one

    def position_embeddings(self, hidden, start: int):
        """Rotary cos/sin for tokens start..start+T-1 (Qwen3-VL's mRoPE takes t/h/w positions; text uses t=h=w)."""
        import torch

        b, t = hidden.shape[:2]
        pos = torch.arange(start, start + t, device=hidden.device)[None].expand(b, t)
        return self.rotary(hidden, pos[None].expand(3, b, t) if self.mrope else pos)

    def inputs(self, ids, images=None):
        """(hidden states entering layer 0, rotary cos/sin, DeepStack or None) for token ids [b, T] and, per row,
        None or the image processor's {"pixel_values", "image_grid_thw"} of the images in it. With images this is
        Qwen3-VL's own forward up to the decoder: the vision tower's features replace the image tokens'
        embeddings and positions are its 3-D mRoPE index; the vision tower is never swapped."""
        import torch

        hidden = self.embed(ids)
        rows = [im for im in images or () if im is not None]
        if not rows:
            return hidden, self.position_embeddings(hidden, 0), None
        pixels = torch.cat([im["pixel_values"] for im in rows]).to(hidden.device)
        grid = torch.cat([im["image_grid_thw"] for im in rows]).to(hidden.device)
        out = self.vlm.get_image_features(pixels, grid, return_dict=True)
        mask = ids == self.vlm.config.image_token_id
        hidden = hidden.masked_scatter(mask[..., None], torch.cat(out.pooler_output).to(hidden.dtype))
        positions, _ = self.vlm.get_rope_index(ids, mm_token_type_ids=mask.int(), image_grid_thw=grid)
        # one tensor per DeepStack level, its images' rows in order (the vision tower splits them per image)
        features = [torch.cat(level) for level in out.deepstack_features]
        return hidden, self.rotary(hidden, positions), DeepStack(mask, features)

    def run_layer(self, layer, hidden, position_embeddings, cache=None):
        """One decoder layer (whatever mixer it holds) on hidden states."""
        return layer(hidden, attention_mask=None, position_embeddings=position_embeddings, cache=cache,
                     use_cache=cache is not None)

    def head(self, hidden):
        """Final norm and LM head on the last position only (what generation computes)."""
        return self.lm_head(self.norm(hidden[:, -1:]))

    def forward(self, ids, cache=None, start: int = 0):
        """Embeddings -> every layer -> norm -> last-token logits, with masks done by the mixers."""
        hidden = self.embed(ids)
        pe = self.position_embeddings(hidden, start)
        for layer in self.layers:
            hidden = self.run_layer(layer, hidden, pe, cache)
        return self.head(hidden)


def text_stack(model) -> TextStack:
    """The text path of a supported model (the language model inside a VLM)."""
    record = architecture(model.config).record
    layers = decoder_layers(model)
    text_model = model.model.language_model if record.vision else model.model
    return TextStack(embed=text_model.embed_tokens, rotary=text_model.rotary_emb, layers=layers,
                     norm=text_model.norm, lm_head=model.lm_head, mrope=record.vision,
                     vlm=model.model if record.vision else None)
