"""Low-rank latent attention (MLA-style): K and V decoded from a small cached latent."""

from __future__ import annotations

from . import OperatorSpec, register


def _init(new, teacher_attention):
    """Truncated SVD of the stacked teacher [W_k; W_v]: latent = sqrt(S) V^T x, K/V up-projections U sqrt(S).

    q_proj, o_proj and the q/k norms are copied; at full rank (2 * kv_dim or hidden_size, whichever is
    smaller) K and V are reproduced exactly and the layer equals the teacher's attention.
    """
    new.load_teacher(teacher_attention)


register(OperatorSpec(
    name="mla", symbol="M", layer_type="full_attention",
    summary="low-rank latent attention: caches a rank-r latent (+ the rotary cos/sin) per token",
    mixer="attention:LatentAttention", init_from_teacher=_init, params=("rank",), aligned=True,
    # the latent plus the token's rotary cos and sin (2 * head_dim), needed to rotate keys decoded later
    cache_bytes=lambda dims, context, dtype_bytes=2, rank=1: (rank + 2 * dims.head_dim) * context * dtype_bytes,
    default_params=lambda dims: [{"rank": max(16, dims.kv_dim // d)} for d in (2, 4)],
))
