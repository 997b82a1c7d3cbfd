"""Decoder-layer dimensions read from a text config (no torch import, so the solver can use it)."""

from __future__ import annotations

from dataclasses import dataclass


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
    attention_bias: bool
    rms_norm_eps: float
    max_position: int = 4096

    @property
    def kv_dim(self) -> int:
        """Width of one of the K or V projections."""
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_text_config(cls, cfg, qk_norm: bool) -> "ModelDims":
        """Read the dimensions of a transformers text config (Qwen3, Qwen3-VL text, Llama)."""
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(hidden_size=cfg.hidden_size, num_heads=cfg.num_attention_heads,
                   num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
                   head_dim=head_dim, num_layers=cfg.num_hidden_layers, intermediate_size=cfg.intermediate_size,
                   vocab_size=cfg.vocab_size, qk_norm=qk_norm,
                   attention_bias=bool(getattr(cfg, "attention_bias", False)), rms_norm_eps=cfg.rms_norm_eps,
                   max_position=getattr(cfg, "max_position_embeddings", 4096))


def mla_rope_dims(head_dim: int) -> int:
    """Key dims per KV head that keep RoPE in mla (`attention.LatentAttention`): the highest-frequency half of the
    head; the other half is decoded from the latent without rotation. On the embedded teacher, after local
    alignment, keeping a half scored below the old fully rotated MLA at the same rank, an eighth or a quarter 15-50x
    above it (BENCHMARKS.md, "mla with decoupled RoPE")."""
    return max(2, head_dim // 2 // 2 * 2)
