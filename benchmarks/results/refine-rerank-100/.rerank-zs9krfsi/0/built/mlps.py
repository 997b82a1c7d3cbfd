"""Each decoder layer's MLP at its own size: the teacher's MLP class at a narrower intermediate width, or none.

`config.mosaic["layers"][i]["mlp"]` ({op, params}) says which; a layer without it keeps the teacher's MLP, so
models built before MLP candidates load unchanged. The narrower MLP is the teacher's own class (gated SiLU / GELU,
Phi-3's fused gate_up_proj, biases) built from a config copy with `intermediate_size = width`, so its parameter
names and maths are the teacher's and only the shapes differ.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class NoMLP(nn.Module):
    """MLP removed: the layer adds nothing after its mixer (a post-MLP norm of zeros is zeros)."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states)


def narrow_mlp(teacher_mlp: nn.Module, text_config, width: int) -> nn.Module:
    """A fresh module of `teacher_mlp`'s class with `width` intermediate channels, on its device and dtype."""
    config = copy.copy(text_config)
    config.intermediate_size = width
    param = next(teacher_mlp.parameters())
    with torch.device(param.device):
        module = type(teacher_mlp)(config)
    return module.to(dtype=param.dtype)


def mlp_for(entry: dict, teacher_mlp: nn.Module, text_config) -> nn.Module | None:
    """The MLP of one `config.mosaic["layers"]` entry: None (keep the teacher's), `NoMLP`, or a narrower one."""
    mlp = entry.get("mlp")
    if not mlp:
        return None
    if mlp["op"] == "nomlp":
        return NoMLP()
    if mlp["op"] == "mlp":
        return narrow_mlp(teacher_mlp, text_config, int(mlp["params"]["width"]))
    raise ValueError(f'unknown MLP operator "{mlp["op"]}" in config.mosaic (known: mlp, nomlp); was this model built '
                     "by a newer mosaic?")
