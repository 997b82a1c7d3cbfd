"""Removal mixers: attention that outputs nothing, and a decoder layer that passes its input through."""

from __future__ import annotations

import torch
from torch import nn

from .cache import layer_cache, mark_stateless
from .paged import is_paged


class NoAttention(nn.Module):
    """Attention removed: the residual stream only goes through the layer's MLP."""

    rolls_back = True
    plain_kv_cache = False  # needs a linear-attention slot (see `mark_stateless`)
    preallocatable = True
    paged_width = 0  # nothing cached: its paged slot stays empty

    def __init__(self, dims=None, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, cache=None,
                **kwargs):
        cache = layer_cache(past_key_values, cache)
        if cache is not None and not is_paged(kwargs):
            mark_stateless(cache, self.layer_idx, hidden_states)
        return torch.zeros_like(hidden_states), None


class SkipLayer(nn.Module):
    """The whole decoder layer skipped (replaces the decoder layer, not its attention)."""

    replaces_layer = True  # installed in place of the decoder layer, not of its self_attn
    rolls_back = True
    plain_kv_cache = False
    preallocatable = True
    paged_width = 0

    def __init__(self, dims=None, layer_idx: int = 0):
        nn.Module.__init__(self)  # not the decoder layer class it may also stand in for (`modeling_mosaic`)
        self.layer_idx = layer_idx

    def forward(self, hidden_states, *args, past_key_values=None, cache=None, **kwargs):
        cache = layer_cache(past_key_values, cache)
        if cache is not None and not is_paged(kwargs):
            mark_stateless(cache, self.layer_idx, hidden_states)
        return hidden_states
