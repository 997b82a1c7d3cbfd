"""The teacher attention's projections as separate q/k/v/o state dicts, whatever layout the teacher stores them in."""

from __future__ import annotations

from .dims import ModelDims

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


def teacher_projections(teacher, dims: ModelDims) -> dict:
    """{name: state dict} for q_proj, k_proj, v_proj and o_proj of a teacher attention module.

    A fused `qkv_proj` (Phi-3) is split by rows into q [H * D], k [Hkv * D] and v [Hkv * D]: the
    mixers keep three projections, so every operator (mla's SVD of W_k and W_v, gdn's per-head K/V) reads one layout,
    at the price of three matmuls instead of one for the q/k/v of an attention layer.
    """
    if not hasattr(teacher, "qkv_proj"):  # also mosaic's own attention standing in for a teacher's (surgery)
        return {name: getattr(teacher, name).state_dict() for name in QKVO}
    sizes = [dims.num_heads * dims.head_dim, dims.kv_dim, dims.kv_dim]
    parts = {key: value.split(sizes) for key, value in teacher.qkv_proj.state_dict().items()}
    out = {name: {key: split[i] for key, split in parts.items()} for i, name in enumerate(QKVO[:3])}
    out["o_proj"] = teacher.o_proj.state_dict()
    return out
