"""Removal: attention dropped (the MLP stays), or the whole decoder layer skipped."""

from __future__ import annotations

from .registry import OperatorSpec, register


def _nothing(new, teacher_attention):
    """Nothing to copy: the replacement has no weights."""


# "linear_attention" gives these layers a cache slot that transformers leaves empty and that
# `get_seq_length` skips, so positions are still counted by an attention layer's slot.
register(OperatorSpec(
    name="none", symbol="N", layer_type="linear_attention",
    summary="attention removed; the layer keeps its MLP",
    init_from_teacher=_nothing, cache_bytes=lambda dims, context, dtype_bytes=2: 0,
))

# its mixer (modeling's SkipLayer, `replaces_layer`) is installed in place of the decoder layer
register(OperatorSpec(
    name="drop", symbol="X", layer_type="linear_attention",
    summary="the whole decoder layer skipped, attention and MLP (ShortGPT-style pruning)",
    init_from_teacher=_nothing, cache_bytes=lambda dims, context, dtype_bytes=2: 0,
))
