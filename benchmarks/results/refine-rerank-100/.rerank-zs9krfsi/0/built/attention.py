"""Softmax attention mixers: full / sliding-window GQA and low-rank latent attention (MLA-style).

Both compute their own causal (and window) masking from the cache length, so they behave the same inside
the teacher (whose masks know nothing of windows) and inside a built model. Padded batches are not
supported: attention masks from the model are ignored.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .cache import layer_cache, tokens_seen
from .dims import ModelDims, mla_rope_dims
from .norm import RMSNorm
from .paged import is_paged, pack_latent, paged_update, per_request, unpack_latent

# Queries from which a CUDA window goes through FlexAttention: fewer fit in one of its 128-row blocks, where the
# blocked SDPA below already reads only the window, and decode steps would build a block mask per position.
FLEX_MIN_QUERIES = 128


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dim: the rotary embedding's sin partner."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on [B, H, T, D] with cos/sin of shape [B, T, R] (any RoPE variant, mRoPE included): the
    first R <= D dims rotate, the rest pass through (partial RoPE, Phi-3)."""
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat([apply_rotary(x[..., :r], cos, sin), x[..., r:]], dim=-1)
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def qk_norms(dims: ModelDims) -> tuple[nn.Module, nn.Module]:
    """The per-head q and k norms of the teacher's flavour (`dims.qk_norm`, `dims.norm_offset`), or identities."""
    if not dims.qk_norm:
        return nn.Identity(), nn.Identity()
    return (RMSNorm(dims.head_dim, dims.rms_norm_eps, dims.norm_offset),
            RMSNorm(dims.head_dim, dims.rms_norm_eps, dims.norm_offset))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, scale: float,
           past=None) -> torch.Tensor:
    """Causal softmax attention of q.shape[-2] new tokens over a cache slot's keys, optionally windowed.

    q: [B, Hq, Tq, D]; k, v: [B, Hkv, Tk, D] as a cache slot returns them. `past`: tokens seen before the queries
    (default Tk - Tq: no cache, or a slot returning exactly the tokens so far). A slot returns either the most recent
    tokens, the queries' own last (dynamic slots, a full sliding window), or a static buffer whose first past + Tq
    entries are filled and the rest empty. Window w: a query sees the w most recent tokens, itself included.
    With an int `past`, queries run in blocks of w so a window costs O(T * w), not O(T^2); a 0-d tensor `past`
    (a static full-attention slot under torch.compile) masks the whole buffer instead, with static shapes.
    """
    tq, tk = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    if past is None:
        past = tk - tq
    if isinstance(past, torch.Tensor):
        qpos = past + torch.arange(tq, device=q.device)[:, None]
        kpos = torch.arange(tk, device=q.device)[None, :]  # a static full slot keeps token i at index i
        mask = kpos <= qpos
        if window is not None:
            mask = mask & (kpos > qpos - window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    if past + tq < tk:  # a static buffer not yet full: only its first past + tq entries are tokens
        k, v = k[..., :past + tq, :], v[..., :past + tq, :]
        tk = past + tq
    offset = tk - tq
    if window is not None and window >= tk:
        window = None  # the window covers everything cached: exactly full attention, same code path
    if window is not None and q.is_cuda and tq >= FLEX_MIN_QUERIES:
        return windowed_flex(q, k, v, window, scale, offset)
    if window is None:
        if tq == 1 or offset == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=tq > 1, scale=scale, enable_gqa=gqa)
        window = tk  # several new tokens after a cached prefix: causal with an offset
    block = max(window, 128)
    outs = []
    for s in range(0, tq, block):
        e = min(s + block, tq)
        lo = max(0, offset + s - window + 1)
        hi = offset + e
        qpos = torch.arange(offset + s, offset + e, device=q.device)[:, None]
        kpos = torch.arange(lo, hi, device=q.device)[None, :]
        mask = (kpos <= qpos) & (kpos > qpos - window)
        outs.append(F.scaled_dot_product_attention(q[..., s:e, :], k[..., lo:hi, :], v[..., lo:hi, :],
                                                   attn_mask=mask, scale=scale, enable_gqa=gqa))
    return torch.cat(outs, dim=-2)


def windowed_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float,
                  offset: int) -> torch.Tensor:
    """`attend`'s windowed case on FlexAttention (torch.nn.attention.flex_attention, compiled): the kernel skips
    every block outside the window, so a prefill costs about window/context of full attention. Shapes as in
    `attend`; `offset`: tokens cached before the first query. The CUDA path; on CPU the blocked SDPA in `attend`
    is the exact reference."""
    mask = _window_block_mask(q.shape[-2], k.shape[-2], window, offset, str(q.device))
    return _flex_attention()(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


@functools.lru_cache(maxsize=16)
def _window_block_mask(tq: int, tk: int, window: int, offset: int, device: str):
    """One block mask per (lengths, window, offset, device), built once and shared by every SWA layer of a step."""
    from torch.nn.attention.flex_attention import create_block_mask

    def visible(b, h, q_idx, kv_idx):
        pos = q_idx + offset
        return (kv_idx <= pos) & (kv_idx > pos - window)

    return create_block_mask(visible, None, None, tq, tk, device=device)


@functools.lru_cache(maxsize=1)
def _flex_attention():
    """flex_attention compiled once per process: uncompiled it materialises the whole score matrix."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


class Attention(nn.Module):
    """Grouped-query attention with the teacher's projections; `window=None` is full attention; `kv_heads` (default
    the teacher's) key/value heads, each serving num_heads / kv_heads query heads."""

    rolls_back = True  # a cache crop drops the last tokens' K/V
    plain_kv_cache = True  # one K and one V per token: any transformers cache can hold it

    def __init__(self, dims: ModelDims, layer_idx: int, window: int | None = None, kv_heads: int | None = None):
        super().__init__()
        self.layer_idx, self.window, self.dims = layer_idx, window, dims
        self.num_heads, self.num_kv_heads, self.head_dim = dims.num_heads, kv_heads or dims.num_kv_heads, dims.head_dim
        # transformers may pre-allocate a static slot from the config's K/V heads, which fewer heads do not fill
        self.preallocatable = self.num_kv_heads == dims.num_kv_heads
        self.scaling = dims.softmax_scale
        bias = dims.attention_bias
        self.q_proj = nn.Linear(dims.hidden_size, dims.num_heads * dims.head_dim, bias=bias)
        self.k_proj = nn.Linear(dims.hidden_size, self.num_kv_heads * dims.head_dim, bias=bias)
        self.v_proj = nn.Linear(dims.hidden_size, self.num_kv_heads * dims.head_dim, bias=bias)
        self.o_proj = nn.Linear(dims.num_heads * dims.head_dim, dims.hidden_size, bias=dims.out_bias)
        self.q_norm, self.k_norm = qk_norms(dims)
        self.paged_width = 2 * self.num_kv_heads * dims.head_dim  # one K and one V per token (`paged.check_servable`)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, cache=None,
                **kwargs):
        cache = layer_cache(past_key_values, cache)
        b, t, _ = hidden_states.shape
        q = self.q_norm(self.q_proj(hidden_states).view(b, t, -1, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden_states).view(b, t, -1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(hidden_states).view(b, t, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if is_paged(kwargs):  # continuous batching: requests packed in one row, each attends to its own keys
            k, v, spans = paged_update(cache, self.layer_idx, k, v, kwargs)
            out = per_request(spans, t, lambda qs, ks: attend(q[..., qs, :], k[..., ks, :], v[..., ks, :],
                                                              self.window, self.scaling))
            return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), None
        past = tokens_seen(cache, self.layer_idx)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = attend(q, k, v, self.window, self.scaling, past)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), None


def split_rope(x: torch.Tensor, rope_dims: int, rotary: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(nope, rope) parts of [..., head_dim] in rotate_half's layout, where dims i and i + rotary/2 form the
    rotary pair of frequency i (`rotary`: the rotated width, default the whole last dim; dims past it never rotate):
    rope = the `rope_dims / 2` fastest pairs, nope = the rest."""
    half, h = (x.shape[-1] if rotary is None else rotary) // 2, rope_dims // 2
    rope = torch.cat([x[..., :h], x[..., half:half + h]], dim=-1)
    nope = torch.cat([x[..., h:half], x[..., half + h:]], dim=-1)
    return nope, rope


class LatentAttention(nn.Module):
    """Low-rank latent attention with decoupled RoPE (MLA, DeepSeek-V2), derived from the teacher's GQA.

    Per KV head, the `mla_rope_dims` highest-frequency key dims keep RoPE (partial RoPE, the high-frequency
    choice of MHA2MLA, Ji et al. 2025) and come from their own projection; the other key dims and every value
    dim are decoded from one rank-r latent shared by all heads. Per token the cache holds the latent, the rotated
    rope part of each KV head's key and each KV head's key RMS scale (the teacher's k_norm, kept exact):
    r + Hkv * (rope_dims + 1) numbers, against 2 * Hkv * head_dim for GQA.

    Many queries (prefill) decode K and V from the latents and use SDPA (expanded form); few queries (decode)
    attend in the latent space (absorbed form, DeepSeek-V3 `attn_impl="absorb"`): each query goes through W_UK,
    one read of the cached latents gives the scores and the output, W_UV after. Both forms are the same math.
    """

    rolls_back = True
    plain_kv_cache = False  # the slot holds latents, not K/V: a quantizing cache would not be exact
    preallocatable = False  # a latent is not shaped as the config's K/V heads

    def __init__(self, dims: ModelDims, layer_idx: int, rank: int, rope_dims: int | None = None):
        super().__init__()
        self.layer_idx, self.rank, self.dims = layer_idx, rank, dims
        self.num_heads, self.num_kv_heads, self.head_dim = dims.num_heads, dims.num_kv_heads, dims.head_dim
        self.rope_dims = mla_rope_dims(dims) if rope_dims is None else rope_dims
        self.rotary = dims.rope_dims
        self.nope_dims = dims.head_dim - self.rope_dims
        self.scaling = dims.softmax_scale
        bias = dims.attention_bias
        self.q_proj = nn.Linear(dims.hidden_size, dims.num_heads * dims.head_dim, bias=bias)
        self.kv_down = nn.Linear(dims.hidden_size, rank, bias=False)
        self.k_rope = nn.Linear(dims.hidden_size, dims.num_kv_heads * self.rope_dims, bias=bias)
        self.k_up = nn.Linear(rank, dims.num_kv_heads * self.nope_dims, bias=bias)
        self.v_up = nn.Linear(rank, dims.kv_dim, bias=bias)
        self.o_proj = nn.Linear(dims.num_heads * dims.head_dim, dims.hidden_size, bias=dims.out_bias)
        self.q_norm, self.k_norm = qk_norms(dims)
        self.paged_width = rank + dims.num_kv_heads * (self.rope_dims + 1)  # latent + side (`paged.pack_latent`)

    def _norm_weights(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The k_norm weight split as (nope, rope); ones when the teacher has no k_norm."""
        if isinstance(self.k_norm, nn.Identity):
            return like.new_ones(self.nope_dims), like.new_ones(self.rope_dims)
        return split_rope(self.k_norm.gain, self.rope_dims, self.rotary)

    def _key_scale(self, k_nope: torch.Tensor, k_rope: torch.Tensor) -> torch.Tensor:
        """Each key's RMS-norm factor over the whole head ([..., 1], float32), as the teacher's k_norm computes it;
        1 without a k_norm."""
        if isinstance(self.k_norm, nn.Identity):
            return k_nope.new_ones(*k_nope.shape[:-1], 1, dtype=torch.float32)
        sq = k_nope.float().pow(2).sum(-1, keepdim=True) + k_rope.float().pow(2).sum(-1, keepdim=True)
        return torch.rsqrt(sq / self.head_dim + self.k_norm.variance_epsilon)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, cache=None,
                **kwargs):
        cache = layer_cache(past_key_values, cache)
        b, t, _ = hidden_states.shape
        hkv, dr = self.num_kv_heads, self.rope_dims
        cos, sin = (split_rope(x, dr)[1] for x in position_embeddings)
        q_nope, q_rope = split_rope(self.q_norm(self.q_proj(hidden_states).view(b, t, -1, self.head_dim)), dr,
                                     self.rotary)
        q_rope = apply_rotary(q_rope.transpose(1, 2), cos, sin)
        q_nope = q_nope.transpose(1, 2)  # [B, H, T, nope]
        latent = self.kv_down(hidden_states)  # [B, T, r]
        key_nope = self.k_up(latent).view(b, t, hkv, self.nope_dims)
        key_rope = self.k_rope(hidden_states).view(b, t, hkv, dr)
        scale = self._key_scale(key_nope, key_rope)
        _, g_rope = self._norm_weights(latent)
        key_rope = apply_rotary((g_rope * (key_rope.float() * scale).to(key_rope.dtype)).transpose(1, 2), cos, sin)
        side = torch.cat([key_rope.transpose(1, 2), scale.to(key_rope.dtype)], dim=-1)  # [B, T, Hkv, rope + 1]
        latent, side = latent.unsqueeze(1), side.reshape(b, 1, t, -1)
        if is_paged(kwargs):  # continuous batching: requests packed in one row, each attends to its own latents
            width = side.shape[-1]
            k, v, spans = paged_update(cache, self.layer_idx, *pack_latent(latent, side, hkv, self.head_dim), kwargs)
            latent, side = unpack_latent(k, v, self.rank, width)
            out = per_request(spans, t, lambda qs, ks: self._attend(q_nope[..., qs, :], q_rope[..., qs, :],
                                                                    latent[..., ks, :], side[..., ks, :], None))
            return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), None
        past = tokens_seen(cache, self.layer_idx)
        if cache is not None:
            latent, side = cache.update(latent, side, self.layer_idx)
        out = self._attend(q_nope, q_rope, latent, side, past)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), None

    def _attend(self, q_nope, q_rope, latent, side, past) -> torch.Tensor:
        """Attention of the queries (q_nope [B, H, T, nope], q_rope [B, H, T, rope]) over cached latents [B, 1, Tk, r]
        and sides [B, 1, Tk, Hkv * (rope + 1)]; `past`: tokens before the queries (None: Tk - T). [B, H, T, head_dim]."""
        b, _, t, _ = q_nope.shape
        hkv, dr = self.num_kv_heads, self.rope_dims
        g_nope, _ = self._norm_weights(latent)
        if past is None:
            past = latent.shape[-2] - t
        tk = latent.shape[-2]
        side = side[:, 0].reshape(b, tk, hkv, dr + 1).transpose(1, 2)  # [B, Hkv, Tk, rope + 1]
        key_rope, scale = side[..., :dr], side[..., dr:]
        if 2 * self.num_heads * t <= hkv * (self.nope_dims + self.head_dim):  # fewer FLOPs than decoding K and V
            return self._absorbed(q_nope * g_nope, q_rope, latent[:, 0], key_rope, scale, past)
        k_nope = g_nope * (self.k_up(latent[:, 0]).view(b, tk, hkv, -1).transpose(1, 2) * scale).to(q_nope.dtype)
        v = self.v_up(latent[:, 0]).view(b, tk, hkv, self.head_dim).transpose(1, 2)
        return attend(torch.cat([q_nope, q_rope], -1), torch.cat([k_nope, key_rope], -1), v, None, self.scaling, past)

    def _absorbed(self, q_nope, q_rope, latent, key_rope, scale, past) -> torch.Tensor:
        """Attention in the latent space. q_nope: [B, H, T, nope] (k_norm weight applied), q_rope: [B, H, T, rope],
        latent: [B, Tk, r], key_rope: [B, Hkv, Tk, rope], scale: [B, Hkv, Tk, 1]; returns [B, H, T, head_dim]."""
        b, h, t, _ = q_nope.shape
        hkv, tk = self.num_kv_heads, latent.shape[1]
        if not isinstance(past, torch.Tensor) and past + t < tk:  # a static buffer not yet full
            latent, key_rope, scale, tk = latent[:, :past + t], key_rope[:, :, :past + t], scale[:, :, :past + t], \
                past + t
        g = h // hkv
        w_uk = self.k_up.weight.view(hkv, self.nope_dims, self.rank)
        q_nope, q_rope = q_nope.reshape(b, hkv, g, t, -1), q_rope.reshape(b, hkv, g, t, -1)
        q_lat = torch.einsum("bjgtd,jdr->bjgtr", q_nope, w_uk)
        scores = torch.einsum("bjgtr,bsr->bjgts", q_lat, latent)
        if self.k_up.bias is not None:
            scores = scores + (q_nope * self.k_up.bias.view(hkv, 1, 1, -1)).sum(-1, keepdim=True)
        scores = scores * scale.to(scores.dtype).transpose(-1, -2).unsqueeze(2)  # [B, Hkv, 1, 1, Tk]
        scores = scores + torch.einsum("bjgtd,bjsd->bjgts", q_rope, key_rope)
        qpos = past + torch.arange(t, device=latent.device)[:, None]
        visible = torch.arange(tk, device=latent.device)[None, :] <= qpos  # causal; unfilled static entries too
        scores = (scores.float() * self.scaling).masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(latent.dtype)
        out = torch.einsum("bjgtr,jdr->bjgtd", torch.einsum("bjgts,bsr->bjgtr", probs, latent),
                           self.v_up.weight.view(hkv, self.head_dim, self.rank))
        if self.v_up.bias is not None:  # the probabilities sum to one
            out = out + self.v_up.bias.view(hkv, 1, 1, -1)
        return out.reshape(b, h, t, self.head_dim)
