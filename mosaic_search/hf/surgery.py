"""The only place that knows Hugging Face decoder internals: find layers, read dims, swap mixers and MLPs (how a VLM's
image inputs are built is `vision.py`'s).

The scorer and the builder both call `swap`, so what is scored is exactly what is shipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError, did_you_mean
from ..modeling import architectures as arch_mod
from ..modeling.dims import ModelDims
from ..operators import Candidate, parse_candidates
from .vision import image_tensors


@dataclass(frozen=True)
class Arch:
    """A supported architecture bound to helpers that read a config of it."""

    record: arch_mod.Architecture

    def text(self, config):
        """The text decoder's config."""
        return arch_mod.text_config(config, self.record)


def architecture(config) -> Arch:
    """The supported architecture of a config, or a one-line UsageError (exit 2) naming the supported ones and the
    nearest, or the config field the mixers cannot reproduce exactly."""
    record = arch_mod.find_architecture(config)
    if record is None:
        name = arch_mod.base_model_type(config) or "?"
        supported = ", ".join(sorted(arch_mod.ARCHITECTURES))
        raise UsageError(f'unsupported architecture "{name}"{did_you_mean(name, arch_mod.ARCHITECTURES)}; '
                         f"mosaic supports: {supported}")
    text = arch_mod.text_config(config, record)
    for key, what in record.unsupported:
        if getattr(text, key, None):
            raise UsageError(f"{record.model_type} with {key}={getattr(text, key)!r}: {what}, which mosaic's mixers do "
                             "not reproduce exactly")
    return Arch(record)


def dims_of(config) -> ModelDims:
    """Decoder dimensions of a (teacher or built) config."""
    a = architecture(config)
    return ModelDims.from_text_config(a.text(config), a.record)


def teacher_ops(config) -> list[Candidate]:
    """The teacher's own operator in each decoder layer (`Candidate.teacher`), from its `layer_types`; without
    `layer_types`, a set `sliding_window` slides in every layer (Mistral, Phi-3). A window covering every position
    (`max_position_embeddings`) is full attention. Each scores 0 in its layer and is what the teacher's latency sums.
    Raises UsageError for a layer that is not softmax attention."""
    text = architecture(config).text(config)
    n = text.num_hidden_layers
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None) or n * ["sliding_attention" if window else "full_attention"]
    if window and window >= getattr(text, "max_position_embeddings", 0):
        window = None
    out = []
    for i, kind in enumerate(types):
        try:
            out.append(Candidate.teacher(kind, window))
        except UsageError as e:
            raise UsageError(f"layer {i} of the teacher: {e}") from None
    return out


def candidates(ops, config) -> list[Candidate]:
    """The candidates a stage measures: each layer's own operator (`teacher_ops`: the reference every other is
    measured against, always timed and scored), then `ops` parsed for this model's dimensions, a mixer with an MLP
    (`gqa+mlp:width=256`) as its two parts, since profiles and tables hold each axis alone (`operators.compose`); one
    order for every stage. Raises UsageError for bad `ops`."""
    parts = [p for c in parse_candidates(ops, dims_of(config)) for p in (c.mixer, c.mlp_candidate) if p is not None]
    cands = list(dict.fromkeys(parts))
    return [c for c in dict.fromkeys(teacher_ops(config)) if c not in cands] + cands


def own_mixers(model) -> None:
    """Give every layer whose own operator is not the teacher's full attention (a sliding window) mosaic's mixer of
    that operator, initialised from its attention: the stages run layers without the model's masks
    (`TextStack.run_layer`), which a teacher's sliding-window attention needs and mosaic's mixers do not. Numerically
    the teacher's attention (tests); from then on it is the layer's teacher attention (`teacher_attention`) that swaps
    start from and alignment imitates."""
    full = Candidate.teacher()
    for i, c in enumerate(teacher_ops(model.config)):
        if c != full:
            decoder_layers(model)[i].self_attn = build_mixer(model, i, c)


def decoder_layers(model):
    """The text decoder layers of a loaded model."""
    return architecture(model.config).record.decoder_layers(model)


# The teacher's decoder layers and attentions that swaps replaced, kept as a submodule of the model under this name
# (so `.to()`, `.eval()` and device maps reach them) but out of its state dict (so saving, loading and key checks
# see the model as it is now): the source for initialising any later swap of that layer.
ORIGINALS = "mosaic_originals"


def _originals(model, create: bool = False):
    """The model's ModuleDict {str(layer): ModuleDict(layer=..., attention=...)}, or None before the first swap."""
    box = model._modules.get(ORIGINALS)
    if box is None and create:
        from torch import nn

        box = nn.ModuleDict()
        box.register_state_dict_post_hook(_drop_originals)
        box.register_load_state_dict_post_hook(_not_missing)
        model.add_module(ORIGINALS, box)
    return box


def _drop_originals(module, state_dict, prefix, local_metadata) -> None:
    # not persistent: whoever asks the model for its state dict gets the model as it is
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _not_missing(module, incompatible_keys) -> None:
    # ...and loading a state dict (strict or not) does not ask for the originals' tensors
    keys = incompatible_keys.missing_keys
    keys[:] = [k for k in keys if ORIGINALS not in k.split(".")]


def _kept(model, layer: int):
    """What `install` kept of layer `layer` (a ModuleDict with the teacher's `layer`, `attention` and `mlp`), or
    None."""
    box = _originals(model)
    return box[str(layer)] if box is not None and str(layer) in box else None


def teacher_layer(model, layer: int):
    """The teacher's own decoder layer `layer`, even after swaps (its `self_attn` may be a mixer now)."""
    kept = _kept(model, layer)
    return decoder_layers(model)[layer] if kept is None else kept["layer"]


def teacher_attention(model, layer: int):
    """The teacher's own attention module of `layer`, even after swaps."""
    kept = _kept(model, layer)
    return decoder_layers(model)[layer].self_attn if kept is None else kept["attention"]


def teacher_mlp(model, layer: int):
    """The teacher's own MLP module of `layer`, even after swaps."""
    kept = _kept(model, layer)
    return decoder_layers(model)[layer].mlp if kept is None else kept["mlp"]


MLP_PREFIX = "mlp/"  # a layer's weights hold its MLP's (an MLP candidate's library entry) under this prefix


def split_weights(candidate: Candidate, weights: dict | None) -> tuple[dict | None, dict | None]:
    """(mixer weights, MLP weights) of one layer's `weights`: an MLP candidate's are all its MLP's; a mixer with an
    MLP keeps its MLP's under `MLP_PREFIX` (`library.library_weights` joins them so)."""
    if weights is None:
        return None, None
    if candidate.spec.axis == "mlp":
        return None, weights
    mlp = {k[len(MLP_PREFIX):]: v for k, v in weights.items() if k.startswith(MLP_PREFIX)}
    mixer = {k: v for k, v in weights.items() if not k.startswith(MLP_PREFIX)}
    return mixer or None, mlp or None


def build_mlp(model, layer: int, candidate: Candidate, weights: dict | None = None):
    """The MLP of MLP candidate `candidate` for `layer` (nomlp, or mlp:width=W), on the teacher's device and dtype.

    A narrower MLP keeps the teacher's channels `weights["channels"]` (the first W of the importance order the scorer
    measured on calibration data, as its candidate library stores them); without them, the first W by a data-free
    stand-in (`teacher.channel_importance`). Raises UsageError for channels of another width."""
    from ..modeling.mlps import NoMLP, narrow_mlp
    from ..operators.teacher import channel_importance, importance_order, narrow_from_teacher

    candidate.check_fits(dims_of(model.config))
    if candidate.op == "nomlp":
        return NoMLP()
    teacher = teacher_mlp(model, layer)
    width = candidate.kwargs["width"]
    channels = weights.get("channels") if weights else None
    if channels is None:
        channels = importance_order(channel_importance(teacher))[:width]
    if channels.numel() != width:
        raise UsageError(f"weights for layer {layer} {candidate}: {channels.numel()} channels, not {width}")
    module = narrow_mlp(teacher, architecture(model.config).text(model.config), width)
    narrow_from_teacher(module, teacher, channels)
    return module


def build_mixer(model, layer: int, candidate: Candidate, weights: dict | None = None):
    """A new mixer for `layer`, initialised from the teacher (or loaded from `weights`), on the teacher's
    device and dtype."""
    spec = candidate.spec
    dims = dims_of(model.config)
    candidate.check_fits(dims)
    if spec.axis != "mixer":
        raise UsageError(f"{candidate} is an MLP candidate, not a mixer")
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
    """Replace layer `layer`'s attention (or, for `drop`, the whole decoder layer) with `candidate`, and its MLP with
    the candidate's (an MLP candidate alone keeps the teacher's mixer); return the new module (the MLP's for an MLP
    candidate). `weights` replaces the teacher initialisation, e.g. aligned weights (see `split_weights`)."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise UsageError(f"layer {layer} is out of range: the model has {len(layers)} layers (0..{len(layers) - 1})")
    return install(model, layer, candidate, *build_modules(model, layer, candidate, weights))


def build_modules(model, layer: int, candidate: Candidate, weights: dict | None = None) -> tuple:
    """(module, mlp) of `candidate` at `layer`, initialised from the teacher or loaded from `weights`, for `install`:
    a mixer candidate's mixer and MLP (None: the teacher's), or an MLP candidate's MLP and None."""
    mixer_w, mlp_w = split_weights(candidate, weights)
    mlp = candidate.mlp_candidate
    mlp_module = None if mlp is None else build_mlp(model, layer, mlp, mlp_w)
    if candidate.spec.axis == "mlp":
        return mlp_module, None
    return build_mixer(model, layer, candidate.mixer, mixer_w), mlp_module


def install(model, layer: int, candidate: Candidate, module, mlp=None):
    """Put already-built modules of `candidate` into `layer`, keeping the teacher's layer for later restores; return
    `module`. For a mixer candidate `module` is its mixer and `mlp` its MLP (None: the teacher's); for an MLP
    candidate `module` is the MLP and the layer keeps the teacher's mixer."""
    from torch import nn

    from ..modeling.mixers import replaces_layer, stand_in

    layers = decoder_layers(model)
    box = _originals(model, create=True)
    if str(layer) not in box:
        # the teacher's attention and MLP too: the decoder layer object is reused for attention and MLP swaps
        box[str(layer)] = nn.ModuleDict({"layer": layers[layer], "attention": layers[layer].self_attn,
                                         "mlp": layers[layer].mlp})
    kept = box[str(layer)]
    original = kept["layer"]
    layers[layer] = original
    original.self_attn, original.mlp = kept["attention"], kept["mlp"]
    if candidate.spec.axis == "mlp":
        original.mlp = module
    elif replaces_layer(module):
        layers[layer] = stand_in(module, original)
    else:
        original.self_attn = module
        if mlp is not None:
            original.mlp = mlp
    return module


def restore(model, layer: int) -> None:
    """Put the teacher's own decoder layer and attention back into `layer`."""
    kept = _kept(model, layer)
    if kept is not None:
        del _originals(model)[str(layer)]
        kept["layer"].self_attn, kept["layer"].mlp = kept["attention"], kept["mlp"]
        decoder_layers(model)[layer] = kept["layer"]


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
    rope_kinds: tuple | None = None  # per layer, the teacher layer type whose RoPE it takes (Gemma 3), else None

    def position_embeddings(self, hidden, start: int):
        """Rotary cos/sin for tokens start..start+T-1 (Qwen-VL's mRoPE takes t/h/w positions; text uses t=h=w); with
        RoPE per layer type, a dict {layer type: (cos, sin)} that `layer_pe` picks from."""
        import torch

        b, t = hidden.shape[:2]
        pos = torch.arange(start, start + t, device=hidden.device)[None].expand(b, t)
        if self.rope_kinds is not None:
            return {kind: self.rotary(hidden, pos, kind) for kind in sorted(set(self.rope_kinds))}
        return self.rotary(hidden, pos[None].expand(3, b, t) if self.mrope else pos)

    def layer_pe(self, position_embeddings, index: int | None):
        """The cos/sin decoder layer `index` takes from `position_embeddings` (see `position_embeddings`)."""
        if not isinstance(position_embeddings, dict):
            return position_embeddings
        if index is None:
            raise ValueError("this model rotates each layer with its own RoPE: pass the layer index")
        return position_embeddings[self.rope_kinds[index]]

    def inputs(self, ids, images=None):
        """(hidden states entering layer 0, rotary cos/sin, DeepStack or None) for token ids [b, T] and, per row,
        None or the image processor's {"pixel_values", "image_grid_thw"} of the images in it. With images this is
        Qwen3-VL's own forward up to the decoder: the vision tower's features replace the image tokens'
        embeddings and positions are its 3-D mRoPE index; the vision tower is never swapped."""
        import torch

        hidden = self.embed(ids)
        tensors = image_tensors(images or (), hidden.device)
        if tensors is None:
            return hidden, self.position_embeddings(hidden, 0), None
        pixels, grid = tensors
        out = self.vlm.get_image_features(pixels, grid, return_dict=True)
        mask = ids == self.vlm.config.image_token_id
        hidden = hidden.masked_scatter(mask[..., None], torch.cat(out.pooler_output).to(hidden.dtype))
        positions, _ = self.vlm.get_rope_index(ids, mm_token_type_ids=mask.int(), image_grid_thw=grid)
        # one tensor per DeepStack level, its images' rows in order (the vision tower splits them per image)
        features = [torch.cat(level) for level in out.deepstack_features]
        return hidden, self.rotary(hidden, positions), DeepStack(mask, features)

    def run_layer(self, layer, hidden, position_embeddings, cache=None, index: int | None = None):
        """One decoder layer (whatever mixer it holds) on hidden states; `index`, its position in the stack, picks
        its RoPE where layers differ (`layer_pe`)."""
        return layer(hidden, attention_mask=None, position_embeddings=self.layer_pe(position_embeddings, index),
                     cache=cache, use_cache=cache is not None)

    def head(self, hidden):
        """Final norm and LM head on the last position only (what generation computes)."""
        return self.lm_head(self.norm(hidden[:, -1:]))

    def forward(self, ids, cache=None, start: int = 0):
        """Embeddings -> every layer -> norm -> last-token logits, with masks done by the mixers."""
        hidden = self.embed(ids)
        pe = self.position_embeddings(hidden, start)
        for i, layer in enumerate(self.layers):
            hidden = self.run_layer(layer, hidden, pe, cache, i)
        return self.head(hidden)


def text_stack(model) -> TextStack:
    """The text path of a supported model (the language model inside a VLM)."""
    record = architecture(model.config).record
    inner = record.text_model(model)
    kinds = arch_mod.rope_layer_types(model.config, record)  # a built model's rotary is the teacher's (modeling_mosaic)
    return TextStack(embed=inner.embed_tokens, rotary=inner.rotary_emb, layers=inner.layers, norm=inner.norm,
                     lm_head=model.lm_head, mrope=record.mrope, vlm=record.multimodal_model(model),
                     rope_kinds=None if kinds is None else tuple(kinds))
