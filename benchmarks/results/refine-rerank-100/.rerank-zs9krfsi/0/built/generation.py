"""Which `generate` modes a built model's mix of mixers serves exactly, and which cache each mode gets.

Every mode either equals the same mode with `use_cache=False` or is refused here in one line naming the mode and
the layer that cannot serve it. transformers builds the cache itself from `layer_types` ("dynamic" or "static");
other cache implementations (quantized, offloaded) hold plain K/V per token only and are refused. Assisted and
prompt-lookup decoding crop the cache after every draft, which a recurrent state (gdn, kda) cannot undo.
"""

from __future__ import annotations

import copy

import torch

CACHES = ("dynamic", "static")
ASSISTED = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")


def generate_kwargs(model, mixers, args: tuple, kwargs: dict) -> dict:
    """`kwargs` of a `generate(*args, **kwargs)` call adjusted for this model, or ValueError for a mode it cannot serve
    exactly.

    `mixers`: (layer index, op, mixer module) per decoder layer. The model's default static cache (its generation
    config) gives way to a cache the caller passes (continuing a conversation), to `use_cache=False` and to assisted
    decoding, which crops the cache (the main model's and the assistant's); a `cache_implementation` keyword is kept
    as asked.
    """
    given = kwargs.get("generation_config")
    config = given if given is not None else model.generation_config

    def setting(key):
        return kwargs[key] if key in kwargs else getattr(config, key, None)

    # a config passed in without a cache implementation gets the model's own (transformers fills unset values in)
    cache = setting("cache_implementation") or model.generation_config.cache_implementation
    if cache not in (None, *CACHES):
        idx, op = next(((i, op) for i, op, m in mixers if not m.plain_kv_cache), (0, mixers[0][1]))
        raise ValueError(f"cache_implementation={cache!r} is not supported by mosaic models (it cannot hold layer "
                         f"{idx} ({op}) exactly); use one of {', '.join(CACHES)}")
    check_unpadded(kwargs.get("attention_mask"))
    if setting("prefill_chunk_size"):
        latent = next(((i, op) for i, op, m in mixers if not m.preallocatable), None)
        if latent:
            raise ValueError(f"prefill_chunk_size: chunked prefill pre-allocates static slots shaped as K/V heads, and "
                             f"layer {latent[0]} ({latent[1]}) caches a latent or fewer K/V heads instead; generate "
                             "without it")
    assisted = next((key for key in ASSISTED if setting(key) is not None), None)
    if assisted:
        stuck = next(((i, op) for i, op, m in mixers if not m.rolls_back), None)
        if stuck:
            raise ValueError(f"{assisted}: assisted decoding rolls the cache back after each draft, and layer {stuck[0]} "
                             f"({stuck[1]}) keeps a recurrent state that cannot be rolled back; generate without it")
        if "cache_implementation" in kwargs and cache == "static":
            # a full static window cannot be rolled back, and drafts run past the static buffer's end
            i, op = next(((i, op) for i, op, m in mixers if getattr(m, "window", None)), mixers[0][:2])
            raise ValueError(f"{assisted} with cache_implementation='static': the static cache of layer {i} ({op}) "
                             "cannot take back rejected drafts; use the dynamic cache (the default for assisted "
                             "decoding)")
    own_cache = kwargs.get("cache", kwargs.get("past_key_values"))
    # transformers' own drafting calls (`is_assistant`, e.g. early exit, which truncates this very model while it
    # drafts and restores it only on success) manage their cache themselves: never refuse in the middle of one
    if own_cache is not None and not setting("is_assistant"):
        _check_slots(own_cache, mixers, model)
        _check_room(own_cache, mixers, args, kwargs, setting)
    # an assistant model (called by transformers with `is_assistant` set) is cropped after every draft, too; a
    # None would be filled in again from the model's own generation config, so the dynamic cache is named
    cropped = assisted or setting("is_assistant")
    if cache is not None and "cache_implementation" not in kwargs:
        if own_cache is not None or setting("use_cache") is False:
            wanted = None
        elif cropped:
            wanted = "dynamic"
        else:
            wanted = cache
        if wanted != cache and given is not None and wanted is not None:
            given = copy.deepcopy(given)  # in the config passed (an assistant's), not beside it
            given.cache_implementation = wanted
            kwargs = {**kwargs, "generation_config": given}
        elif wanted != cache:  # a keyword: a None in a config would be filled in again from the model's
            kwargs = {**kwargs, "cache_implementation": wanted}
    return kwargs


def check_unpadded(mask) -> None:
    """Refuse a 2-D attention mask with padding: the mixers do their own causal masking and ignore it."""
    if isinstance(mask, torch.Tensor) and mask.ndim == 2 and not bool(mask.all()):
        raise ValueError("mosaic models do not support padded batches: the mixers ignore the attention mask")


def _check_slots(cache, mixers, model) -> None:
    """A cache passed in must have a linear-attention slot wherever this model keeps a recurrent or empty state."""
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    types = model.config.get_text_config(decoder=True).layer_types
    for (i, op, _), kind in zip(mixers, types):
        slot = cache.layers[i] if i < len(cache.layers) else None
        if kind == "linear_attention" and not isinstance(slot, LinearAttentionCacheLayerMixin):
            raise ValueError(f"the cache passed in has no linear-attention slot for layer {i} ({op}): make it from the "
                             "model's config, e.g. DynamicCache(config=model.config)")


def _check_room(cache, mixers, args: tuple, kwargs: dict, setting) -> None:
    """A static cache passed back in (e.g. the one an earlier call returned) must hold this call's tokens too: a
    static slot holds at most its length, unless it is a sliding window at least as long as its layer's window."""
    from transformers.cache_utils import StaticLayer

    prompt = next((x for x in (args[0] if args else None, kwargs.get("input_ids"), kwargs.get("inputs"),
                               kwargs.get("inputs_embeds")) if x is not None), None)
    rooms = [slot.get_max_length() for (_, _, mixer), slot in zip(mixers, cache.layers)
             if isinstance(slot, StaticLayer) and slot.get_max_length() < (getattr(mixer, "window", None) or 1 << 62)]
    if not rooms or prompt is None:
        return
    room = min(rooms)
    new = setting("max_new_tokens")
    needed = prompt.shape[1] + new if new is not None else setting("max_length")  # ids [B, T] or embeds [B, T, H]
    if needed is not None and needed > room:
        raise ValueError(f"the cache passed in holds {room} tokens (a static cache sized by an earlier call) but this "
                         f"call needs {needed}; pass a DynamicCache, or a StaticCache with max_cache_len >= {needed}")
