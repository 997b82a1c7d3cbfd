"""The gated delta rule in pure PyTorch (chunked and recurrent) with dispatch to fla's kernels on CUDA.

Recurrence per head, state S of shape [K, V] (fla's convention):
    S <- diag(exp(g_t)) S;  S <- S + beta_t k_t (v_t - S^T k_t)^T;  o_t = scale * S^T q_t
g is a log-decay, per head ([B, T, H], Gated DeltaNet) or per key channel ([B, T, H, K], Kimi Delta
Attention). Layout [B, T, H, D] throughout; states are fp32.
"""

from __future__ import annotations

import torch


def recurrent_delta_rule(q, k, v, g, beta, scale: float, initial_state=None):
    """Token-by-token reference: returns (o [B,T,H,V], final state [B,H,K,V] fp32)."""
    dtype = v.dtype
    q, k, v, beta = (x.float() for x in (q, k, v, beta))
    g = g.float()
    if g.dim() == 3:
        g = g.unsqueeze(-1)
    b, t, h, dk = k.shape
    state = q.new_zeros(b, h, dk, v.shape[-1]) if initial_state is None else initial_state.float().clone()
    out = torch.empty_like(v)
    for i in range(t):
        state = state * g[:, i].exp().unsqueeze(-1)
        kv = (k[:, i].unsqueeze(-1) * state).sum(-2)
        state = state + (beta[:, i, :, None] * k[:, i]).unsqueeze(-1) * (v[:, i] - kv).unsqueeze(-2)
        out[:, i] = torch.einsum("bhk,bhkv->bhv", q[:, i] * scale, state)
    return out.to(dtype), state


def chunked_delta_rule(q, k, v, g, beta, scale: float, initial_state=None, chunk_size: int = 32):
    """Chunkwise-parallel form (WY representation), equal to `recurrent_delta_rule` up to rounding.

    Within a chunk with cumulative log-decay b_t, the pseudo-values U solve (I + A) U = diag(beta)(V - K+ S0)
    with A_ts = beta_t sum_c k_t[c] k_s[c] exp(b_t[c] - b_s[c]) for s < t; every exponent is <= 0, so no
    term overflows however strong the decay.
    """
    dtype = v.dtype
    q, k, v, beta = (x.float() for x in (q, k, v, beta))
    g = g.float()
    scalar = g.dim() == 3
    b, t, h, dk = k.shape
    dv = v.shape[-1]
    state = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.float().clone()
    out = torch.empty_like(v)
    strict = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril(-1)
    for s in range(0, t, chunk_size):
        e = min(s + chunk_size, t)
        n = e - s
        qc, kc, vc, bc = (x[:, s:e].transpose(1, 2) for x in (q, k, v, beta))  # [B,H,n,*], beta [B,H,n]
        cum = g[:, s:e].transpose(1, 2).cumsum(2)  # [B,H,n] or [B,H,n,K]
        if scalar:
            decay = (cum[..., :, None] - cum[..., None, :]).clamp(max=0).exp()  # [B,H,n,n]
            kk = kc @ kc.transpose(-1, -2) * decay
            qk = qc @ kc.transpose(-1, -2) * decay
            k_plus = kc * cum.exp().unsqueeze(-1)
            q_plus = qc * cum.exp().unsqueeze(-1)
            k_end = kc * (cum[..., -1:] - cum).exp().unsqueeze(-1)
            end = cum[..., -1].exp()[..., None, None]
        else:
            diff = (cum[..., :, None, :] - cum[..., None, :, :]).clamp(max=0).exp()  # [B,H,n,n,K]
            kk = torch.einsum("bhtc,bhsc,bhtsc->bhts", kc, kc, diff)
            qk = torch.einsum("bhtc,bhsc,bhtsc->bhts", qc, kc, diff)
            k_plus = kc * cum.exp()
            q_plus = qc * cum.exp()
            k_end = kc * (cum[..., -1:, :] - cum).exp()
            end = cum[..., -1, :].exp().unsqueeze(-1)
        lower = strict[:n, :n]
        a = torch.where(lower, kk * bc.unsqueeze(-1), torch.zeros_like(kk))
        eye = torch.eye(n, device=q.device, dtype=a.dtype)
        rhs = bc.unsqueeze(-1) * (vc - k_plus @ state)
        u = torch.linalg.solve_triangular(eye + a, rhs, upper=False, unitriangular=True)
        causal = torch.where(lower | torch.eye(n, dtype=torch.bool, device=q.device), qk, torch.zeros_like(qk))
        o = q_plus @ state + causal @ u
        out[:, s:e] = (o * scale).transpose(1, 2)
        state = state * end + k_end.transpose(-1, -2) @ u
    return out.to(dtype), state


def _fla_kernels(per_channel: bool):
    if per_channel:
        from fla.ops.kda import chunk_kda, fused_recurrent_kda

        return chunk_kda, fused_recurrent_kda
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    return chunk_gated_delta_rule, fused_recurrent_gated_delta_rule


def fla_available() -> bool:
    """Whether fla's kernels can be imported (checked once, only when a CUDA tensor asks)."""
    global _FLA_OK
    if _FLA_OK is None:
        try:
            _fla_kernels(False)
            _fla_kernels(True)
            _FLA_OK = True
        except Exception:  # fla missing, or its triton import fails on this machine
            _FLA_OK = False
    return _FLA_OK


_FLA_OK = None


def delta_rule(q, k, v, g, beta, scale: float, initial_state=None, use_fla: bool | None = None):
    """The gated delta rule on [B, T, H, D] inputs: returns (o [B, T, H, V], final state [B, H, K, V] fp32).

    fla's chunk kernel (prefill) or fused-recurrent kernel (decode) on CUDA when available, otherwise the PyTorch
    chunked form (prefill) or recurrence (one token). Without gradients the call goes through the custom op
    `mosaic::delta_rule`, which torch.compile keeps whole (one graph, no break into fla's Python wrappers); with
    gradients (alignment, distillation) autograd runs through the chosen implementation directly.
    """
    if use_fla is None and not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, g, beta))):
        return _custom_op()(q, k, v, g, beta, scale, initial_state)
    return _delta_rule(q, k, v, g, beta, scale, initial_state, use_fla)


def _delta_rule(q, k, v, g, beta, scale: float, initial_state=None, use_fla: bool | None = None):
    if use_fla is None:
        use_fla = q.is_cuda and fla_available()
    single = q.shape[1] == 1
    if use_fla:
        chunk, recurrent = _fla_kernels(g.dim() == 4)
        fn = recurrent if single else chunk
        return fn(q=q, k=k, v=v, g=g, beta=beta, scale=scale,
                  initial_state=None if initial_state is None else initial_state.float(), output_final_state=True)
    if single:
        return recurrent_delta_rule(q, k, v, g, beta, scale, initial_state)
    return chunked_delta_rule(q, k, v, g, beta, scale, initial_state)


OP_NAME = "mosaic::delta_rule"


def _custom_op():
    """`mosaic::delta_rule`, defined on first use: the remote code of every built model loaded in a process imports
    its own copy of this module, and an op name can be registered once per process (the first copy's serves all)."""
    try:
        return torch.ops.mosaic.delta_rule
    except (AttributeError, RuntimeError):
        pass

    @torch.library.custom_op(OP_NAME, mutates_args=())
    def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, scale: float,
           initial_state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # every implementation returns fresh tensors (the references clone the initial state), as a custom op must
        return _delta_rule(q, k, v, g, beta, scale, initial_state)

    @op.register_fake
    def _(q, k, v, g, beta, scale, initial_state):
        b, _, h, dk = k.shape
        return torch.empty_like(v), q.new_empty(b, h, dk, v.shape[-1], dtype=torch.float32)

    return torch.ops.mosaic.delta_rule
