"""How mixers keep their state in transformers' own `Cache`, through its public API only.

A built model's cache is built by transformers from `layer_types` (dynamic or static): attention mixers (`gqa`,
`swa`, `mla`) go through `Cache.update` on a full or sliding slot, the delta-rule mixers through
`update_conv_state` / `update_recurrent_state` on a linear-attention slot, updated in place, so beam reordering,
cropping and CUDA-graph capture are transformers' own. transformers hands the cache to a layer as `cache`, or under
its older name `past_key_values` (deprecated, still accepted until 5.40); the mixers take either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_cache(past_key_values=None, cache=None):
    """The cache handed to a layer under either of transformers' names for it (None without caching)."""
    return cache if cache is not None else past_key_values


def tokens_seen(cache, layer_idx: int):
    """Tokens this attention layer's slot held before the current forward: an int, or a 0-d tensor for a static
    full-attention slot (its count lives on the device, so a compiled decode step replays for every position)."""
    if cache is None:
        return 0
    seen = cache.get_seq_length(layer_idx)
    # a static slot returns its live counter, which its `update` then advances in place
    return seen.clone() if isinstance(seen, torch.Tensor) else seen


def _linear_slot(cache, layer_idx: int) -> None:
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    slot = cache.layers[layer_idx] if layer_idx < len(cache.layers) else None
    if not isinstance(slot, LinearAttentionCacheLayerMixin):
        raise ValueError(f"layer {layer_idx} keeps a linear-attention state but its cache slot is "
                         f"{type(slot).__name__}: make the cache from the model's config, e.g. "
                         "DynamicCache(config=model.config) (a teacher with mixers swapped in memory keeps its own "
                         "cache layout: run it with use_cache=False)")


def conv_context(cache, layer_idx: int, x: torch.Tensor, width: int) -> torch.Tensor:
    """The `width` inputs before x for a causal short convolution, stored back through the cache.

    x: [B, C, T] (channels first, as transformers' linear-attention slots store them); returns [B, C, width], zeros
    before the first token. A slot recording its past for assisted decoding returns more than `width` columns
    before x; the last `width` are the context either way.
    """
    fresh = not cache.has_previous_state(layer_idx)
    full = cache.update_conv_state(x, layer_idx, conv_kernel_size=width)
    if fresh:
        return x.new_zeros(*x.shape[:-1], width)
    ctx = full[..., : full.shape[-1] - x.shape[-1]][..., -width:]
    return F.pad(ctx, (width - ctx.shape[-1], 0)) if ctx.shape[-1] < width else ctx


def recurrent_state(cache, layer_idx: int):
    """The recurrent state stored by the previous forward, or None before the first one."""
    _linear_slot(cache, layer_idx)
    if not cache.has_previous_state(layer_idx):
        return None
    return cache.layers[layer_idx].recurrent_states[0]


def mark_stateless(cache, layer_idx: int, hidden_states: torch.Tensor) -> None:
    """Record an empty (zero-channel) conv state in a layer that keeps nothing (`none`, `drop`).

    transformers leaves such a slot uninitialised, and an uninitialised linear-attention slot cannot be cropped,
    which assisted decoding does to every slot after each draft; a zero-width state costs no memory and makes the
    slot behave as "nothing to roll back".
    """
    _linear_slot(cache, layer_idx)
    b, t = hidden_states.shape[:2]
    cache.update_conv_state(hidden_states.new_zeros(b, 0, t), layer_idx, conv_kernel_size=1)
