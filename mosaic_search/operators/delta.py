"""Linear attention with the gated delta rule: Gated DeltaNet (scalar decay) and Kimi Delta Attention."""

from __future__ import annotations

from ..modeling.dims import CONV_KERNEL
from .registry import OperatorSpec, register


def _init(new, teacher_attention):
    """q/k/v/o projections (a fused qkv_proj split) and Qwen3's q_norm/k_norm copied as they are: K and V keep the
    teacher's KV heads, each serving its query group as in GQA. Fresh: the short convolutions (identity), beta,
    decay and output gates."""
    from .teacher import copy_from_teacher

    copy_from_teacher(new, teacher_attention)


def _state_bytes(dims, context, dtype_bytes=2):
    # fp32 recurrent state per query head (head_dim x head_dim) plus the short-conv tail of q, k and v
    state = dims.num_heads * dims.head_dim * dims.head_dim * 4
    conv = 3 * dims.num_heads * dims.head_dim * (CONV_KERNEL - 1) * dtype_bytes
    return state + conv


register(OperatorSpec(
    name="gdn", symbol="D", layer_type="linear_attention",
    summary="Gated DeltaNet: linear attention with a per-head scalar decay",
    init_from_teacher=_init, cache_bytes=_state_bytes, requires=("fla",), aligned=True,
))

register(OperatorSpec(
    name="kda", symbol="K", layer_type="linear_attention",
    summary="Kimi Delta Attention: linear attention with a per-channel decay",
    init_from_teacher=_init, cache_bytes=_state_bytes, requires=("fla",), aligned=True,
))
