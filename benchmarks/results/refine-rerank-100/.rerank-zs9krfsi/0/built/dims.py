"""Decoder-layer dimensions read from a text config (no torch import, so the solver can use it)."""

from __future__ import annotations

from dataclasses import dataclass

CONV_KERNEL = 4  # taps of the delta-rule mixers' causal short convolution (its cache keeps the last CONV_KERNEL - 1)


@dataclass(frozen=True)
class ModelDims:
    """What a mixer needs to know about the teacher's decoder layers."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    qk_norm: bool
    attention_bias: bool  # on the q, k and v projections
    rms_norm_eps: float
    max_position: int = 4096
    o_bias: bool | None = None  # on the output projection; None: as attention_bias
    norm_offset: float = 0.0  # q/k norms scale by (offset + weight): 1 for Gemma's norms stored around zero
    scaling: float | None = None  # softmax scale of q.k; None: head_dim ** -0.5
    rotary_dim: int | None = None  # leading dims of each head that RoPE rotates (Phi-3's partial RoPE); None: all

    @property
    def kv_dim(self) -> int:
        """Width of one of the K or V projections."""
        return self.num_kv_heads * self.head_dim

    @property
    def softmax_scale(self) -> float:
        """The factor on q.k before the softmax."""
        return self.head_dim ** -0.5 if self.scaling is None else self.scaling

    @property
    def out_bias(self) -> bool:
        """Whether the output projection has a bias."""
        return self.attention_bias if self.o_bias is None else self.o_bias

    @property
    def rope_dims(self) -> int:
        """Leading dims of each head that RoPE rotates."""
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @classmethod
    def from_text_config(cls, cfg, arch) -> "ModelDims":
        """Read the dimensions of a transformers text config of architecture `arch` (`architectures.Architecture`)."""
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        rope = getattr(cfg, "rope_parameters", None) or {}
        partial = rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0)) \
            if isinstance(rope, dict) else 1.0
        biased = bool(getattr(cfg, "attention_bias", False))
        return cls(hidden_size=cfg.hidden_size, num_heads=cfg.num_attention_heads,
                   num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
                   head_dim=head_dim, num_layers=cfg.num_hidden_layers, intermediate_size=cfg.intermediate_size,
                   vocab_size=cfg.vocab_size, qk_norm=arch.qk_norm is not None,
                   attention_bias=True if arch.bias == "qkv" else biased, rms_norm_eps=cfg.rms_norm_eps,
                   max_position=getattr(cfg, "max_position_embeddings", 4096),
                   o_bias=False if arch.bias == "qkv" else None, norm_offset=1.0 if arch.qk_norm == "gemma" else 0.0,
                   scaling=getattr(cfg, arch.query_scalar) ** -0.5 if arch.query_scalar else None,
                   rotary_dim=int(head_dim * partial) if partial != 1.0 else None)


def mla_rope_dims(dims: ModelDims) -> int:
    """Key dims per KV head that keep RoPE in mla (`attention.LatentAttention`): the highest-frequency half of the
    head (of its rotated part, under partial RoPE); the other dims are decoded from the latent without rotation. On
    the embedded teacher, after local alignment, keeping a half scored below the old fully rotated MLA at the same
    rank, an eighth or a quarter 15-50x above it (BENCHMARKS.md, "mla with decoupled RoPE")."""
    return max(2, min(dims.head_dim // 2, dims.rope_dims) // 2 * 2)
