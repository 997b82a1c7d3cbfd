"""RMSNorm with the same arithmetic as the Qwen3 / Llama norms (fp32 statistics, weight in the input dtype), or with
Gemma's, whose weights are stored around zero and scale by (1 + weight) in fp32."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim, state-dict compatible with transformers' RMSNorms.

    `offset` 0: Qwen3 / Llama, `weight * x` in the input dtype; 1: Gemma, `x * (1 + weight)` in fp32, then cast."""

    def __init__(self, dim: int, eps: float = 1e-6, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim) if offset == 0 else torch.zeros(dim))
        self.variance_epsilon = eps
        self.offset = offset

    @property
    def gain(self) -> torch.Tensor:
        """The per-channel factor applied after normalising."""
        return self.weight + self.offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        if self.offset:
            return (x * (self.offset + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)
