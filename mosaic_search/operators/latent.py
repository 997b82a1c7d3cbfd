"""Low-rank latent attention (MLA) with decoupled RoPE: K and V decoded from a small cached latent."""

from __future__ import annotations

from ..modeling.dims import mla_rope_dims
from .registry import OperatorSpec, register


def _per_token(dims, rank: int) -> int:
    """Numbers cached per token: the latent, and per KV head its key's rotated rope part and RMS scale."""
    return rank + dims.num_kv_heads * (mla_rope_dims(dims) + 1)


def _full_rank(dims) -> int:
    """Rank of the stacked [W_k nope rows; W_v]: a larger latent only adds zero columns."""
    return min(dims.num_kv_heads * (2 * dims.head_dim - mla_rope_dims(dims)), dims.hidden_size)


def _init(new, teacher_attention):
    """Rope rows of W_k copied per KV head; truncated SVD of the stacked [W_k nope rows; W_v]: latent =
    sqrt(S) V^T x, K/V up-projections U sqrt(S); q_proj, o_proj and the q/k norms copied
    (`teacher.latent_from_teacher`). Unlike gqa, the nope key dims lose RoPE, so even at full rank the layer is
    not the teacher's attention: local alignment recovers what that costs.
    """
    from .teacher import latent_from_teacher

    latent_from_teacher(new, teacher_attention)


register(OperatorSpec(
    name="mla", symbol="M", layer_type="full_attention",
    summary="low-rank latent attention: caches a rank-r latent (+ a small rotary key part) per token",
    init_from_teacher=_init, params=("rank",), aligned=True,
    cache_bytes=lambda dims, context, dtype_bytes=2, rank=1: _per_token(dims, rank) * context * dtype_bytes,
    default_params=lambda dims: [{"rank": max(16, dims.kv_dim // d)} for d in (2, 4)],
    max_params=lambda dims: {"rank": _full_rank(dims)},
))
