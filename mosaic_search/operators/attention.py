"""Softmax attention: the teacher's own full GQA, and sliding-window attention over its weights; either may take
fewer key/value heads (`kv_heads=K`, K dividing the teacher's), each the mean of a group of the teacher's."""

from __future__ import annotations

from .registry import OperatorSpec, register


def _init(new, teacher_attention):
    """Copy q/k/v/o projections (a fused qkv_proj split) and the q/k norms unchanged: the math is the teacher's. With
    fewer KV heads, each new K/V head is the mean of its group of teacher heads (`teacher.pool_kv_from_teacher`)."""
    from .teacher import copy_from_teacher, pool_kv_from_teacher

    if new.num_kv_heads == new.dims.num_kv_heads:
        copy_from_teacher(new, teacher_attention)
    else:
        pool_kv_from_teacher(new, teacher_attention)


def _kv_bytes(dims, tokens, dtype_bytes, kv_heads=None):
    return 2 * (kv_heads or dims.num_kv_heads) * dims.head_dim * tokens * dtype_bytes


def kv_choices(dims) -> list[int]:
    """The KV-head counts a layer may take: every divisor of the teacher's (which divides its query heads too)."""
    return [k for k in range(1, dims.num_kv_heads + 1) if dims.num_kv_heads % k == 0]


def _check_kv(dims, params) -> str | None:
    k = params.get("kv_heads")
    if k is not None and k not in kv_choices(dims):
        return (f"kv_heads must divide the teacher's {dims.num_kv_heads} KV heads: one of "
                f"{', '.join(map(str, kv_choices(dims)))}; got {k}")
    return None


def _fewer(dims) -> list[dict]:
    """The default fewer-KV-heads variant: half the teacher's heads, when that divides them."""
    return [{"kv_heads": dims.num_kv_heads // 2}] if dims.num_kv_heads % 2 == 0 else []


register(OperatorSpec(
    name="gqa", symbol="G", layer_type="full_attention",
    summary="the teacher's full grouped-query attention",
    init_from_teacher=_init, teacher_layer_type="full_attention", params=("kv_heads",), optional=("kv_heads",),
    cache_bytes=lambda dims, context, dtype_bytes=2, kv_heads=None: _kv_bytes(dims, context, dtype_bytes, kv_heads),
    default_params=lambda dims: [{}] + _fewer(dims), check=_check_kv,
))

register(OperatorSpec(
    name="swa", symbol="S", layer_type="sliding_attention",
    summary="sliding-window attention: each token sees the last `window` tokens (itself included)",
    init_from_teacher=_init, params=("window", "kv_heads"), optional=("kv_heads",),
    teacher_layer_type="sliding_attention", window=lambda params: params["window"], check=_check_kv,
    cache_bytes=lambda dims, context, dtype_bytes=2, window=1, kv_heads=None: _kv_bytes(
        dims, min(window, context), dtype_bytes, kv_heads),
    # up to three windows, each at most an eighth of the model's context (128..8192)
    default_params=lambda dims: [{"window": w} for w in (128, 512, 2048, 8192) if w <= dims.max_position // 8][-3:],
    # a longer window than the model's positions attends to every token it can ever see: full attention, mislabelled
    max_params=lambda dims: {"window": dims.max_position},
))
