"""Linear-attention mixers on the gated delta rule: Gated DeltaNet and Kimi Delta Attention.

Shared layout: the teacher's q/k/v/o projections as they are (K and V keep the teacher's KV heads, each shared by
the query heads of its group, as GQA shares them), a depthwise causal short convolution on q, k and v,
L2-normalised q and k, a sigmoid write strength beta and a log-decay gate per query head, and a sigmoid output
gate (low rank, as in fla's KDA) before o_proj. The two differ only in the decay: one scalar per head (GDN) or one
per key channel (KDA, through a low-rank projection as fla's `f_proj`). A decode step so reads about the teacher
attention's weights: no expanded K/V projections, no full-width gate or decay projections.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import qk_norms
from .cache import conv_context, layer_cache, recurrent_state
from .delta_rule import delta_rule
from .dims import CONV_KERNEL, ModelDims


class ShortConv(nn.Module):
    """Depthwise causal conv weights over time, initialised to the identity (the last tap is 1)."""

    def __init__(self, channels: int, kernel: int = CONV_KERNEL):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, kernel))
        with torch.no_grad():
            self.weight[:, -1] = 1.0


def short_conv(x: torch.Tensor, context: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise causal conv: x [B, C, T] after its context [B, C, K-1] (the inputs before it), weight [C, K]."""
    full = torch.cat([context.to(x.dtype), x], dim=-1)
    return F.conv1d(full, weight.unsqueeze(1).to(x.dtype), groups=x.shape[1])


class DeltaMixer(nn.Module):
    """Common body of GDN and KDA; subclasses set `per_channel` (the decay's shape)."""

    per_channel = False
    rolls_back = False  # the recurrent state folds every token in: a crop cannot take one out again
    plain_kv_cache = False
    preallocatable = True  # linear-attention slots are never pre-allocated

    def __init__(self, dims: ModelDims, layer_idx: int):
        super().__init__()
        self.layer_idx, self.dims = layer_idx, dims
        self.num_heads, self.num_kv_heads, self.head_dim = dims.num_heads, dims.num_kv_heads, dims.head_dim
        self.group = dims.num_heads // dims.num_kv_heads
        width, kv_width = dims.num_heads * dims.head_dim, dims.kv_dim
        bias = dims.attention_bias
        self.q_proj = nn.Linear(dims.hidden_size, width, bias=bias)
        self.k_proj = nn.Linear(dims.hidden_size, kv_width, bias=bias)
        self.v_proj = nn.Linear(dims.hidden_size, kv_width, bias=bias)
        self.o_proj = nn.Linear(width, dims.hidden_size, bias=dims.out_bias)
        self.q_norm, self.k_norm = qk_norms(dims)
        self.q_conv, self.k_conv, self.v_conv = ShortConv(width), ShortConv(kv_width), ShortConv(kv_width)
        self.b_proj = nn.Linear(dims.hidden_size, dims.num_heads, bias=True)
        nn.init.normal_(self.b_proj.weight, std=0.02)
        nn.init.zeros_(self.b_proj.bias)
        # Output gate of rank head_dim, starting almost open (sigmoid(4) = 0.98): the initial layer is the delta rule.
        self.g_proj = _low_rank(dims.hidden_size, dims.head_dim, width, bias=True)
        nn.init.zeros_(self.g_proj[1].weight)
        nn.init.constant_(self.g_proj[1].bias, 4.0)
        if self.per_channel:  # per-channel decay logits of the same spread as GDN's per-head ones
            self.a_proj = _low_rank(dims.hidden_size, dims.head_dim, width, bias=False)
            nn.init.normal_(self.a_proj[0].weight, std=0.02)
            nn.init.normal_(self.a_proj[1].weight, std=dims.head_dim ** -0.5)
        else:
            self.a_proj = nn.Linear(dims.hidden_size, dims.num_heads, bias=False)
            nn.init.normal_(self.a_proj.weight, std=0.02)
        decay_width = width if self.per_channel else dims.num_heads
        # Mamba-style decay init: rates exp(A_log) in [1, 16], time steps dt in [1e-3, 1e-1].
        self.A_log = nn.Parameter(torch.log(torch.empty(dims.num_heads).uniform_(1, 16)))
        dt = torch.exp(torch.empty(decay_width).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def decay(self, x: torch.Tensor) -> torch.Tensor:
        """Log-decay g <= 0: [B, T, H] (GDN) or [B, T, H, K] (KDA)."""
        b, t, _ = x.shape
        raw = F.softplus(self.a_proj(x).float() + self.dt_bias)
        if self.per_channel:
            return -self.A_log.exp()[:, None] * raw.view(b, t, self.num_heads, self.head_dim)
        return -self.A_log.exp() * raw

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, cache=None,
                **kwargs):
        cache = layer_cache(past_key_values, cache)
        x = hidden_states
        b, t, _ = x.shape
        # q, k and v convolve as one channels-first tensor: the cache keeps one conv state per layer
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1).transpose(1, 2)
        if cache is None:
            context = qkv.new_zeros(b, qkv.shape[1], CONV_KERNEL - 1)
            initial = None
        else:
            initial = recurrent_state(cache, self.layer_idx)
            context = conv_context(cache, self.layer_idx, qkv, CONV_KERNEL - 1)
        weight = torch.cat([self.q_conv.weight, self.k_conv.weight, self.v_conv.weight])
        q, k, v = short_conv(qkv, context, weight).transpose(1, 2).split(
            [self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features], dim=-1)
        kv_shape = (b, t, self.num_kv_heads, self.head_dim)
        # q and k go through SiLU before their L2 norm; v stays linear so the identity conv keeps the teacher's V.
        # Each KV head serves its group's query heads (repeated here, after the projections: nothing extra is read).
        q = F.normalize(self.q_norm(F.silu(q).reshape(b, t, self.num_heads, self.head_dim)).float(), dim=-1)
        k = F.normalize(self.k_norm(F.silu(k).reshape(kv_shape)).float(), dim=-1)
        q, k = q.to(x.dtype), k.repeat_interleave(self.group, dim=2).to(x.dtype)
        v = v.reshape(kv_shape).repeat_interleave(self.group, dim=2)
        beta = torch.sigmoid(self.b_proj(x).float())
        # scale 1: q and k are unit vectors, so q.k is already in [-1, 1]
        o, final = delta_rule(q, k, v, self.decay(x), beta, 1.0, initial)
        if cache is not None:
            cache.update_recurrent_state(final, self.layer_idx)
        o = o.reshape(b, t, -1).to(x.dtype) * torch.sigmoid(self.g_proj(x))
        return self.o_proj(o), None


def _low_rank(inputs: int, rank: int, outputs: int, bias: bool) -> nn.Sequential:
    """inputs -> rank -> outputs, the second with `bias`: a projection reading (inputs + outputs) * rank weights."""
    return nn.Sequential(nn.Linear(inputs, rank, bias=False), nn.Linear(rank, outputs, bias=bias))


class GatedDeltaNet(DeltaMixer):
    """Gated DeltaNet: one scalar decay per head and token."""

    per_channel = False


class KimiDeltaAttention(DeltaMixer):
    """Kimi Delta Attention: one decay per key channel, head and token."""

    per_channel = True
