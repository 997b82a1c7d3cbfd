"""How mixers keep their state in a transformers `Cache`, whatever layer types the cache was built for.

A model built by mosaic gets a cache whose slot types follow its `layer_types`; a teacher swapped in memory
keeps the teacher's all-full-attention cache. Mixers therefore never rely on a slot's class: attention
mixers go through `Cache.update` (which any slot accepts), and the others keep their state as an attribute
of their slot and, where the slot counts tokens, advance its count so `get_seq_length()` stays right.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin


def slot(cache, layer_idx: int):
    """This layer's slot in `cache`, creating lazily-replicated slots on demand."""
    while len(cache.layers) <= layer_idx:
        cache.layers.append(cache.layer_class_to_replicate())
    return cache.layers[layer_idx]


def advance(cache, layer_idx: int, hidden_states: torch.Tensor) -> None:
    """Count the new tokens in a token-counting slot (one scalar per token), so positions stay right."""
    s = slot(cache, layer_idx)
    if isinstance(s, CacheLayerMixin):
        b, t = hidden_states.shape[:2]
        marker = hidden_states.new_zeros(b, 1, t, 1)
        cache.update(marker, marker, layer_idx)


def get_state(cache, layer_idx: int):
    """The mixer state stored in this layer's slot, or None before the first forward."""
    return getattr(slot(cache, layer_idx), "mosaic_state", None)


def set_state(cache, layer_idx: int, state) -> None:
    """Store the mixer state in this layer's slot."""
    slot(cache, layer_idx).mosaic_state = state
