"""Softmax attention: the teacher's own full GQA, and sliding-window attention over its weights."""

from __future__ import annotations

from .registry import OperatorSpec, register


def _init(new, teacher_attention):
    """Copy q/k/v/o projections (a fused qkv_proj split) and the q/k norms unchanged: the math is the teacher's."""
    from .teacher import copy_from_teacher

    copy_from_teacher(new, teacher_attention)


def _kv_bytes(dims, tokens, dtype_bytes):
    return 2 * dims.kv_dim * tokens * dtype_bytes


register(OperatorSpec(
    name="gqa", symbol="G", layer_type="full_attention",
    summary="the teacher's full grouped-query attention",
    init_from_teacher=_init, teacher_layer_type="full_attention",
    cache_bytes=lambda dims, context, dtype_bytes=2: _kv_bytes(dims, context, dtype_bytes),
))

register(OperatorSpec(
    name="swa", symbol="S", layer_type="sliding_attention",
    summary="sliding-window attention: each token sees the last `window` tokens (itself included)",
    init_from_teacher=_init, params=("window",), teacher_layer_type="sliding_attention",
    window=lambda params: params["window"],
    cache_bytes=lambda dims, context, dtype_bytes=2, window=1: _kv_bytes(dims, min(window, context), dtype_bytes),
    # up to three windows, each at most an eighth of the model's context (128..8192)
    default_params=lambda dims: [{"window": w} for w in (128, 512, 2048, 8192) if w <= dims.max_position // 8][-3:],
))
