"""Initialising a mixer from the teacher's attention: the code behind each spec's `init_from_teacher`.

It runs only in mosaic's own stages (swaps for scoring and building), never in a built model, so it lives with the
registry and not in the remote code `modeling/` ships. Imports torch: the operator files import it lazily.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling.attention import split_rope

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
NORMS = ("q_norm", "k_norm")


def teacher_projections(teacher: nn.Module, dims) -> dict:
    """{name: state dict} for q_proj, k_proj, v_proj and o_proj of a teacher attention module (`dims`: `ModelDims`).

    A fused `qkv_proj` (Phi-3) is split by rows into q [H * D], k [Hkv * D] and v [Hkv * D]: the mixers keep three
    projections, so every operator (mla's SVD of W_k and W_v, gdn's K/V) reads one layout, at the price of three
    matmuls instead of one for the q/k/v of an attention layer.
    """
    if not hasattr(teacher, "qkv_proj"):  # also mosaic's own attention standing in for a teacher's (surgery)
        return {name: getattr(teacher, name).state_dict() for name in QKVO}
    sizes = [dims.num_heads * dims.head_dim, dims.kv_dim, dims.kv_dim]
    parts = {key: value.split(sizes) for key, value in teacher.qkv_proj.state_dict().items()}
    out = {name: {key: split[i] for key, split in parts.items()} for i, name in enumerate(QKVO[:3])}
    out["o_proj"] = teacher.o_proj.state_dict()
    return out


@torch.no_grad()
def copy_from_teacher(new: nn.Module, teacher: nn.Module, names=QKVO + NORMS) -> None:
    """Load the submodules `names` of mixer `new` (q/k/v/o projections, q_norm, k_norm) from the teacher attention as
    they are (a fused qkv_proj split); the mixer's identities (no q/k norm) are skipped."""
    projections = teacher_projections(teacher, new.dims)
    for name in names:
        mine = getattr(new, name)
        if not isinstance(mine, nn.Identity):
            mine.load_state_dict(projections[name] if name in projections else getattr(teacher, name).state_dict())


@torch.no_grad()
def latent_from_teacher(new: nn.Module, teacher: nn.Module) -> None:
    """Initialise a `LatentAttention` from the teacher: each KV head's key rows split into rope and nope parts; k_rope
    copies the rope rows; a truncated SVD of [W_k nope rows; W_v] gives kv_down = sqrt(S) V^T and k_up / v_up =
    U sqrt(S); q_proj, o_proj and the q/k norms are copied. At full rank (Hkv * (nope + head_dim) or hidden_size,
    whichever is smaller) with `rope_dims = head_dim`, the layer is the teacher's attention."""
    copy_from_teacher(new, teacher, ("q_proj", "o_proj", *NORMS))
    proj = teacher_projections(teacher, new.dims)
    k_proj, v_proj = proj["k_proj"], proj["v_proj"]
    hkv, d = new.num_kv_heads, new.head_dim
    k_nope, k_rope = split_rope(k_proj["weight"].T.reshape(-1, hkv, d), new.rope_dims, new.rotary)
    new.k_rope.weight.copy_(k_rope.reshape(k_rope.shape[0], -1).T)  # k_nope, k_rope: [hidden, Hkv, *]
    w = torch.cat([k_nope.reshape(k_nope.shape[0], -1).T, v_proj["weight"]]).double()
    u, s, vt = torch.linalg.svd(w, full_matrices=False)
    r = min(new.rank, s.numel())
    root = s[:r].sqrt()
    down = torch.zeros_like(new.kv_down.weight, dtype=torch.float64)
    down[:r] = root[:, None] * vt[:r]
    up = torch.zeros(w.shape[0], new.rank, dtype=torch.float64)
    up[:, :r] = u[:, :r] * root[None, :]
    new.kv_down.weight.copy_(down)
    new.k_up.weight.copy_(up[:new.k_up.out_features])
    new.v_up.weight.copy_(up[new.k_up.out_features:])
    if k_proj.get("bias") is not None:
        b_nope, b_rope = split_rope(k_proj["bias"].view(hkv, d), new.rope_dims, new.rotary)
        new.k_rope.bias.copy_(b_rope.reshape(-1))
        new.k_up.bias.copy_(b_nope.reshape(-1))
        new.v_up.bias.copy_(v_proj["bias"])


def _mlp_parts(mlp: nn.Module) -> tuple[list, nn.Linear]:
    """([(linear, row offset)] whose output rows are the intermediate channels, down_proj): gate_proj and up_proj,
    or Phi-3's fused gate_up_proj twice (gate rows first, then up rows)."""
    if hasattr(mlp, "gate_up_proj"):
        half = mlp.gate_up_proj.out_features // 2
        return [(mlp.gate_up_proj, 0), (mlp.gate_up_proj, half)], mlp.down_proj
    return [(mlp.gate_proj, 0), (mlp.up_proj, 0)], mlp.down_proj


def intermediate_size(mlp: nn.Module) -> int:
    """The intermediate channels of a teacher-family MLP."""
    return _mlp_parts(mlp)[1].in_features


@torch.no_grad()
def channel_importance(mlp: nn.Module, mean_abs: torch.Tensor | None = None) -> torch.Tensor:
    """Each intermediate channel's contribution to the MLP's output, |x_i| * ||W_down[:, i]|| (float64, [I]):
    `mean_abs` is the mean |x_i| of the channel's activation (down_proj's input) on calibration data; without it,
    a data-free stand-in, the product of its gate and up rows' norms."""
    ups, down = _mlp_parts(mlp)
    out_norm = down.weight.double().norm(dim=0)
    if mean_abs is None:
        width = down.in_features
        mean_abs = torch.ones_like(out_norm)
        for linear, start in ups:
            mean_abs = mean_abs * linear.weight[start:start + width].double().norm(dim=1)
    return mean_abs.double().to(out_norm.device) * out_norm


def importance_order(importance: torch.Tensor) -> torch.Tensor:
    """Channel indices, most important first (ties: lower index first), as int64 on the CPU."""
    if importance.is_meta:  # a model on the meta device, whose weights are counted, not read: no values to order
        return torch.arange(importance.numel(), device="cpu")
    return torch.argsort(-importance.double().cpu(), stable=True)


@torch.no_grad()
def narrow_from_teacher(new: nn.Module, teacher: nn.Module, channels: torch.Tensor) -> None:
    """Load the narrower MLP `new` (the teacher's class, `len(channels)` wide) with the teacher's rows of gate/up
    (fused or not) and columns of down_proj at `channels`, in that order; biases alike (down's bias as is)."""
    channels = channels.to(torch.long).cpu()
    (t_ups, t_down), (n_ups, n_down) = _mlp_parts(teacher), _mlp_parts(new)
    width = len(channels)
    for (t_lin, t_start), (n_lin, n_start) in zip(t_ups, n_ups):
        idx = (channels + t_start).to(t_lin.weight.device)
        n_lin.weight[n_start:n_start + width].copy_(t_lin.weight[idx])
        if t_lin.bias is not None:
            n_lin.bias[n_start:n_start + width].copy_(t_lin.bias[idx])
    n_down.weight.copy_(t_down.weight[:, channels.to(t_down.weight.device)])
    if t_down.bias is not None:
        n_down.bias.copy_(t_down.bias)


@torch.no_grad()
def pool_kv_from_teacher(new: nn.Module, teacher: nn.Module) -> None:
    """Initialise an `Attention` with fewer KV heads than the teacher: q/o projections and q/k norms copied, and each
    new K/V head the mean of its group of teacher heads (new head j: teacher heads j*g .. j*g+g-1, g = teacher / new
    heads, the heads whose query heads it now serves), weights and biases alike."""
    copy_from_teacher(new, teacher, ("q_proj", "o_proj", *NORMS))
    proj = teacher_projections(teacher, new.dims)
    k, d = new.num_kv_heads, new.head_dim
    for name in ("k_proj", "v_proj"):
        for key, value in proj[name].items():
            pooled = value.reshape(k, -1, d, *value.shape[1:]).mean(dim=1)
            getattr(new, name).state_dict()[key].copy_(pooled.reshape(k * d, *value.shape[1:]))
