"""Linear attention with the gated delta rule: Gated DeltaNet (scalar decay) and Kimi Delta Attention."""

from __future__ import annotations

from . import OperatorSpec, register

CONV_KERNEL = 4


def _init(new, teacher_attention):
    """q_proj and o_proj copied; k_proj and v_proj copied with each KV head repeated for the query heads it
    serves (GQA heads expanded), so every query head owns a key/value head; Qwen3's q_norm/k_norm copied
    before the L2 normalisation. Fresh: the short convolutions (identity), beta, decay and output gates.
    """
    new.load_teacher(teacher_attention)


def _state_bytes(dims, context, dtype_bytes=2):
    # fp32 recurrent state per head (head_dim x head_dim) plus the short-conv tail of q, k and v
    state = dims.num_heads * dims.head_dim * dims.head_dim * 4
    conv = 3 * dims.num_heads * dims.head_dim * (CONV_KERNEL - 1) * dtype_bytes
    return state + conv


register(OperatorSpec(
    name="gdn", symbol="D", layer_type="linear_attention",
    summary="Gated DeltaNet: linear attention with a per-head scalar decay",
    mixer="linear_attention:GatedDeltaNet", init_from_teacher=_init, cache_bytes=_state_bytes,
    requires=("fla",), aligned=True,
))

register(OperatorSpec(
    name="kda", symbol="K", layer_type="linear_attention",
    summary="Kimi Delta Attention: linear attention with a per-channel decay",
    mixer="linear_attention:KimiDeltaAttention", init_from_teacher=_init, cache_bytes=_state_bytes,
    requires=("fla",), aligned=True,
))
