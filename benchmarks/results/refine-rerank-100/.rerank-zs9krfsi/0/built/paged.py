"""Continuous batching (transformers' `generate_batch`, `transformers serve --continuous-batching`) on a built model.

transformers packs the tokens of every scheduled request into one row and hands each layer its `PagedAttentionCache`
with the requests' boundaries (`cu_seq_lens_q`, and per layer type `cu_seq_lens_k`) and cache indices;
`PagedAttentionCache.update` stores the new keys and values and returns, request after request, the cached ones
followed by the new. The attention mixers then attend request by request with the code `generate` runs, so every
request gets the tokens `generate` gives it alone. The paged cache has full and sliding slots only: a recurrent state
(gdn, kda) has no place in it and such a mix is refused before any request is taken; `none` and `drop` keep nothing
and get a full slot they never touch; `mla` stores its latent and rotary key part in a K/V page, unpacked on read.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F


def is_paged(kwargs: dict) -> bool:
    """Whether a layer is called by continuous batching (its keywords carry the paged cache's request boundaries)."""
    return "cu_seq_lens_q" in kwargs and "read_index" in kwargs


def paged_update(cache, layer_idx: int, key: torch.Tensor, value: torch.Tensor, kwargs: dict):
    """Store one layer's new keys and values ([1, Hkv, T, D], every request's tokens packed) in the paged cache.

    Returns (keys, values, spans): every request's cached then new entries, packed as [1, Hkv, Tk, D], and per request
    ((query start, query end), (key start, key end)) into the packed rows. `kwargs` is left as it was."""
    kwargs = dict(kwargs)  # `update` replaces the per-layer-type entries with this layer's
    key, value = cache.update(key, value, layer_idx, kwargs)
    q_bounds, k_bounds = kwargs["cu_seq_lens_q"].tolist(), kwargs["cu_seq_lens_k"].tolist()
    spans = [((qs, qe), (ks, ke)) for qs, qe, ks, ke in zip(q_bounds, q_bounds[1:], k_bounds, k_bounds[1:]) if qe > qs]
    return key, value, spans


def per_request(spans, tokens: int, attend_one) -> torch.Tensor:
    """`attend_one(q_slice, k_slice)` for each request's spans, written back into its query rows ([1, H, tokens, D]);
    rows past the last request (padding for static shapes) are zeros."""
    outs = [(qs, qe, attend_one(slice(qs, qe), slice(ks, ke))) for (qs, qe), (ks, ke) in spans]
    first = outs[0][2]
    out = first.new_zeros(*first.shape[:-2], tokens, first.shape[-1])
    for qs, qe, o in outs:
        out[..., qs:qe, :] = o
    return out


def pack_latent(latent: torch.Tensor, side: torch.Tensor, heads: int, head_dim: int):
    """An MLA layer's per-token cache (latent [1, 1, T, r] and side [1, 1, T, s]) as a key and a value of the shape
    the paged cache stores ([1, heads, T, head_dim] each), zero-padded; `unpack_latent` reverses it."""
    both = torch.cat([latent, side], dim=-1)[:, 0]  # [1, T, r + s]
    both = F.pad(both, (0, 2 * heads * head_dim - both.shape[-1]))
    k, v = both.view(1, both.shape[1], 2, heads, head_dim).unbind(2)
    return k.transpose(1, 2), v.transpose(1, 2)


def unpack_latent(key: torch.Tensor, value: torch.Tensor, rank: int, side: int):
    """(latent [1, 1, Tk, rank], side [1, 1, Tk, side]) from the keys and values `pack_latent` made."""
    both = torch.cat([key.transpose(1, 2).flatten(2), value.transpose(1, 2).flatten(2)], dim=-1).unsqueeze(1)
    return both[..., :rank], both[..., rank:rank + side]


def check_servable(mixers, text_config) -> None:
    """Refuse, in one line naming the layer and its operator, a mix the paged cache cannot hold.

    `mixers`: (layer index, op, mixer module) per decoder layer; a mixer serves continuous batching when it has a
    `paged_width` (numbers cached per token in the paged cache; 0 for none) that fits the two K/V pages of a token,
    and, for plain K/V (`plain_kv_cache`), fills them: the paged cache writes K/V heads as the config counts them, so
    an attention with fewer KV heads is refused rather than served wrong."""
    heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    for i, op, mixer in mixers:
        width = getattr(mixer, "paged_width", None)
        if width is None:
            raise ValueError(f"continuous batching: layer {i} ({op}) keeps a recurrent state, which transformers' paged "
                             "cache cannot hold; serve this model with generate (e.g. `transformers serve` without "
                             "--continuous-batching)")
        if getattr(mixer, "plain_kv_cache", False) and width != 2 * heads * head_dim:
            raise ValueError(f"continuous batching: layer {i} ({op}) keeps {mixer.num_kv_heads} K/V heads, but "
                             f"transformers' paged cache lays out {heads} per layer; serve this model with generate")
        if width > 2 * heads * head_dim:
            raise ValueError(f"continuous batching: layer {i} ({op}) caches {width} numbers per token, more than a "
                             f"paged K/V slot holds ({2 * heads * head_dim}); serve this model with generate")


@contextlib.contextmanager
def paged_slots(text_config):
    """`layer_types` as continuous batching is to see them while it sizes and makes its paged cache: layers that keep
    nothing (`linear_attention` for none and drop, which `check_servable` has let through) get a full-attention slot
    they never write. The model keeps its own `layer_types` for `generate` the rest of the time."""
    kept = text_config.layer_types
    text_config.layer_types = ["full_attention" if t == "linear_attention" else t for t in kept]
    try:
        yield
    finally:
        text_config.layer_types = kept


def serving_config(continuous_batching_config):
    """The continuous-batching config without the decode fast path, which lets a flash kernel read and write the
    cache behind the mixers' back (by block table) where the mixers must do both themselves, and without CUDA graphs:
    the mixers read the requests' boundaries on the host, which a captured graph would replay stale."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = copy.deepcopy(continuous_batching_config) if continuous_batching_config is not None \
        else ContinuousBatchingConfig()
    config.max_blocks_per_request = 0
    config.use_cuda_graph = False
    return config
