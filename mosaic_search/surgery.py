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
    """The teacher's own decoder layer `layer`, even after swaps."""
    return _originals(model).get(layer) or decoder_layers(model)[layer]


def build_mixer(model, layer: int, candidate: Candidate, weights: dict | None = None):
    """A new mixer for `layer`, initialised from the teacher (or loaded from `weights`), on the teacher's
    device and dtype."""
    spec = candidate.spec
    dims = dims_of(model.config)
    original = teacher_layer(model, layer)
    param = next(original.parameters())
    module = spec.build(dims, layer, **candidate.kwargs)
    if weights is not None:
        missing, unexpected = module.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise UsageError(f"weights for layer {layer} {candidate}: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
    else:
        spec.init_from_teacher(module, original.self_attn)
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


def check_swaps(model_id: str, layer: int = 0, new_tokens: int = 8, candidates=None, prompt_len: int = 12,
                seed: int = 0) -> list[dict]:
    """Swap each candidate into `layer` and compare greedy generate() with and without the cache."""
    import torch

    from .models import load_model
    from .operators import default_candidates

    model = load_model(model_id, seed=seed)
    dims = dims_of(model.config)
    if candidates is None:
        # a window shorter than prompt + generation, so decoding runs past it
        candidates = [c if c.op != "swa" else Candidate.of("swa", {"window": 4})
                      for c in dict.fromkeys(default_candidates(dims))]
        candidates = list(dict.fromkeys(candidates))
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, dims.vocab_size, (1, prompt_len), generator=gen)
    results = []
    for cand in candidates:
        swap(model, layer, cand)
        with torch.no_grad():
            kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            cached = model.generate(prompt, use_cache=True, **kwargs)[0, prompt_len:].tolist()
            uncached = model.generate(prompt, use_cache=False, **kwargs)[0, prompt_len:].tolist()
        results.append({"candidate": str(cand), "match": cached == uncached, "tokens": cached})
        restore(model, layer)
    return results
