"""Softmax attention mixers: full / sliding-window GQA and low-rank latent attention (MLA-style).

Both compute their own causal (and window) masking from the cache length, so they behave the same inside
the teacher (whose masks know nothing of windows) and inside a built model. Padded batches are not
supported: attention masks from the model are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import layer_cache, tokens_seen
from .dims import ModelDims
from .norm import RMSNorm


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dim: the rotary embedding's sin partner."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on [B, H, T, D] with cos/sin of shape [B, T, D] (any RoPE variant, mRoPE included)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


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


class Attention(nn.Module):
    """Grouped-query attention with the teacher's projections; `window=None` is full attention."""

    rolls_back = True  # a cache crop drops the last tokens' K/V
    preallocatable = True  # transformers may pre-allocate its static slot from the config's K/V heads
    plain_kv_cache = True  # one K and one V per token: any transformers cache can hold it

    def __init__(self, dims: ModelDims, layer_idx: int, window: int | None = None):
        super().__init__()
        self.layer_idx, self.window = layer_idx, window
        self.num_heads, self.num_kv_heads, self.head_dim = dims.num_heads, dims.num_kv_heads, dims.head_dim
        self.scaling = dims.head_dim ** -0.5
        bias = dims.attention_bias
        self.q_proj = nn.Linear(dims.hidden_size, dims.num_heads * dims.head_dim, bias=bias)
        self.k_proj = nn.Linear(dims.hidden_size, dims.kv_dim, bias=bias)
        self.v_proj = nn.Linear(dims.hidden_size, dims.kv_dim, bias=bias)
        self.o_proj = nn.Linear(dims.num_heads * dims.head_dim, dims.hidden_size, bias=bias)
        self.q_norm = RMSNorm(dims.head_dim, dims.rms_norm_eps) if dims.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dims.head_dim, dims.rms_norm_eps) if dims.qk_norm else nn.Identity()

    @torch.no_grad()
    def load_teacher(self, teacher: nn.Module) -> None:
        """Copy the teacher attention's projections and q/k norms as they are."""
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
            mine = getattr(self, name)
            if not isinstance(mine, nn.Identity):
                mine.load_state_dict(getattr(teacher, name).state_dict())

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, cache=None,
                **kwargs):
        cache = layer_cache(past_key_values, cache)
        b, t, _ = hidden_states.shape
        q = self.q_norm(self.q_proj(hidden_states).view(b, t, -1, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden_states).view(b, t, -1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(hidden_states).view(b, t, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = tokens_seen(cache, self.layer_idx)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = attend(q, k, v, self.window, self.scaling, past)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), None


class LatentAttention(nn.Module):
    """Low-rank latent attention: K and V are decoded from a rank-r latent, which is all that is cached
    (with each token's rotary cos/sin, so keys decoded later are rotated for their own positions)."""

    rolls_back = True
    plain_kv_cache = False  # the slot holds latents, not K/V: a quantizing cache would not be exact
    preallocatable = False  # a latent is not shaped as the config's K/V heads

    def __init__(self, dims: ModelDims, layer_idx: int, rank: int):
        super().__init__()
        self.layer_idx, self.rank = layer_idx, rank
        self.num_heads, self.num_kv_heads, self.head_dim = dims.num_heads, dims.num_kv_heads, dims.head_dim
        self.scaling = dims.head_dim ** -0.5
        bias = dims.attention_bias
        self.q_proj = nn.Linear(dims.hidden_size, dims.num_heads * dims.head_dim, bias=bias)
        self.kv_down = nn.Linear(dims.hidden_size, rank, bias=False)
        self.k_up = nn.Linear(rank, dims.kv_dim, bias=bias)
        self.v_up = nn.Linear(rank, dims.kv_dim, bias=bias)
        self.o_proj = nn.Linear(dims.num_heads * dims.head_dim, dims.hidden_size, bias=bias)
        self.q_norm = RMSNorm(dims.head_dim, dims.rms_norm_eps) if dims.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dims.head_dim, dims.rms_norm_eps) if dims.qk_norm else nn.Identity()

    @torch.no_grad()
    def load_teacher(self, teacher: nn.Module) -> None:
        """Truncated SVD of [W_k; W_v]: kv_down = sqrt(S) V^T, k_up/v_up = U sqrt(S); the rest copied."""
        for name in ("q_proj", "o_proj", "q_norm", "k_norm"):
            mine = getattr(self, name)
            if not isinstance(mine, nn.Identity):
                mine.load_state_dict(getattr(teacher, name).state_dict())
        w = torch.cat([teacher.k_proj.weight, teacher.v_proj.weight]).double()
        u, s, vt = torch.linalg.svd(w, full_matrices=False)
        r = min(self.rank, s.numel())
        root = s[:r].sqrt()
        down = torch.zeros_like(self.kv_down.weight, dtype=torch.float64)
        down[:r] = root[:, None] * vt[:r]
        up = torch.zeros(w.shape[0], self.rank, dtype=torch.float64)
        up[:, :r] = u[:, :r] * root[None, :]
        kv = self.k_up.out_features
        self.kv_down.weight.copy_(down)
        self.k_up.weight.copy_(up[:kv])
        self.v_up.weight.copy_(up[kv:])
        if teacher.k_proj.bias is not None:
            self.k_up.bias.copy_(teacher.k_proj.bias)
            self.v_up.bias.copy_(teacher.v_proj.bias)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, cache=None,
                **kwargs):
        cache = layer_cache(past_key_values, cache)
        b, t, _ = hidden_states.shape
        q = self.q_norm(self.q_proj(hidden_states).view(b, t, -1, self.head_dim)).transpose(1, 2)
        cos, sin = position_embeddings
        q = apply_rotary(q, cos, sin)
        latent = self.kv_down(hidden_states).unsqueeze(1)  # [B, 1, T, r]
        rope = torch.cat([cos, sin], dim=-1).unsqueeze(1).to(latent.dtype)  # [B, 1, T, 2D]
        past = tokens_seen(cache, self.layer_idx)
        if cache is not None:
            latent, rope = cache.update(latent, rope, self.layer_idx)
        tk = latent.shape[-2]
        k = self.k_norm(self.k_up(latent[:, 0]).view(b, tk, -1, self.head_dim)).transpose(1, 2)
        v = self.v_up(latent[:, 0]).view(b, tk, -1, self.head_dim).transpose(1, 2)
        kcos, ksin = rope[:, 0].to(k.dtype).chunk(2, dim=-1)
        k = apply_rotary(k, kcos, ksin)
        out = attend(q, k, v, None, self.scaling, past)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), None
