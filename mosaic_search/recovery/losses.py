"""The distillation losses and learning-rate schedule: divergences between next-token distributions, the normalised
MSE of hidden states, the off-policy (teacher-forced) and on-policy (GKD: Agarwal et al. 2024, "On-Policy
Distillation of Language Models: Learning from Self-Generated Mistakes") losses, and warm-up then cosine decay."""

from __future__ import annotations

import math

WARMUP_FRACTION = 0.1
FLOOR = 0.1  # the cosine decays to this fraction of the peak learning rate
JSD_BETA = 0.5
ONPOLICY_TOKENS = 64  # on-policy: the student writes this many tokens after a prompt of the rest of a sequence


def schedule(k: int, steps: int) -> float:
    """The learning rate's fraction of its peak at step `k` (0-based) of a stage of `steps`: linear warm-up over
    WARMUP_FRACTION of the stage (at least one step), then cosine decay to FLOOR."""
    warm = max(1, int(WARMUP_FRACTION * steps))
    if k < warm:
        return (k + 1) / warm
    return FLOOR + (1 - FLOOR) / 2 * (1 + math.cos(math.pi * (k - warm) / max(1, steps - warm)))


def divergence(t_logits, s_logits, kind: str):
    """Per position [b, n] (logits [b, n, V], in nats): forward KL(t || s), reverse KL(s || t) or GKD's generalized
    JSD(JSD_BETA), which is at most log 2 at beta 0.5."""
    import torch
    import torch.nn.functional as F

    t, s = F.log_softmax(t_logits, -1), F.log_softmax(s_logits, -1)
    if kind == "forward":
        per = (t.exp() * (t - s)).sum(-1)
    elif kind == "reverse":
        per = (s.exp() * (s - t)).sum(-1)
    else:
        m = torch.logsumexp(torch.stack([t + math.log(JSD_BETA), s + math.log(1 - JSD_BETA)]), 0)
        per = JSD_BETA * (t.exp() * (t - m)).sum(-1) + (1 - JSD_BETA) * (s.exp() * (s - m)).sum(-1)
    return per


def hidden_nmse(s_hidden, t_hidden, mask):
    """The mean over layers of the normalised MSE between the student's and the teacher's hidden states [b, T, d]
    on real tokens (`mask` [b, T]): sum of squared differences over the sum of the teacher's squares."""
    import torch

    m = mask[..., None]
    return torch.stack([((s - t) * m).pow(2).sum() / (t * m).pow(2).sum().clamp_min(1e-12)
                        for s, t in zip(s_hidden, t_hidden)]).mean()


def forward(model, batch, hidden: bool):
    """(logits [b, T, V] float32, hidden states after every decoder layer or None) of the teacher-forced `batch`."""
    from ..hf import surgery

    captured = []
    hooks = []
    if hidden:
        core = getattr(model, "module", model)
        for layer in surgery.decoder_layers(core):
            hooks.append(layer.register_forward_hook(
                lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)))
    try:
        logits = model(**batch.inputs(next(model.parameters()).device), use_cache=False).logits.float()
    finally:
        for h in hooks:
            h.remove()
    return logits, (captured if hidden else None)


def offpolicy_loss(wrapped, teacher, batch, hidden_weight: float):
    """KL(teacher || student) per real token, plus hidden_weight x the mean normalised MSE of the hidden states
    (the measure alignment uses for one mixer, here for the whole stack at once). `wrapped`: the student as it trains
    (under DDP or FSDP2, the wrapper)."""
    import torch

    with torch.no_grad():
        t_logits, t_hidden = forward(teacher, batch, hidden_weight > 0)
    s_logits, s_hidden = forward(wrapped, batch, hidden_weight > 0)
    mask = batch.mask(s_logits.device)
    per = divergence(t_logits[:, :-1], s_logits[:, :-1], "forward")
    loss = (per * mask[:, :-1]).sum() / mask[:, :-1].sum().clamp_min(1)
    if hidden_weight > 0:
        loss = loss + hidden_weight * hidden_nmse(s_hidden, t_hidden, mask)
    return loss


def onpolicy_loss(models, batch, kind: str, oracle_weight: float, hidden_weight: float):
    """Stage 1's loss on each (text) row's prompt followed by the student's own continuation of it: a position that
    predicts a sampled token gets divergence `kind` from the teacher (mixed with the oracle's, if `models` has one),
    one that predicts a prompt token keeps the teacher-forced KL(teacher || student), all averaged per token; plus
    the hidden-state term over the whole sequence. The prompt's positions come free with the forward passes the
    sampled ones need; without them the few sampled tokens per step undid part of stage 1 on the embedded teacher
    (GKD mixes fixed data with the student's samples for the same reason). `models`: a `loading.Models`."""
    import torch

    from ..hf.data import Windows
    from .batches import Batch

    student = models.student
    device = next(student.parameters()).device
    ids = batch.sequences.ids.to(device)
    new = min(ONPOLICY_TOKENS, ids.shape[1] - 1)
    prompt = ids.shape[1] - new
    student.eval()
    with torch.no_grad():
        # exactly `new` tokens (EOS suppressed until then), so no row is ever padded
        sampled = student.generate(ids[:, :prompt], attention_mask=torch.ones_like(ids[:, :prompt]), do_sample=True,
                                   temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                                   pad_token_id=0, cache_implementation="dynamic")
    student.train()
    gen = Batch(Windows.of(sampled.cpu()))
    hidden = hidden_weight > 0
    with torch.no_grad():
        t_all, t_hidden = forward(models.teacher, gen, hidden)
        o_all = forward(models.oracle, gen, False)[0] if models.oracle is not None else None
    s_all, s_hidden = forward(models.wrapped, gen, hidden)
    cut = prompt - 1  # positions before it predict prompt tokens, the rest the student's samples
    own = divergence(t_all[:, cut:-1], s_all[:, cut:-1], kind)
    if o_all is not None:
        own = (1 - oracle_weight) * own + oracle_weight * divergence(o_all[:, cut:-1], s_all[:, cut:-1], kind)
    loss = torch.cat([divergence(t_all[:, :cut], s_all[:, :cut], "forward"), own], 1).mean()
    if hidden:
        loss = loss + hidden_weight * hidden_nmse(s_hidden, t_hidden, torch.ones_like(sampled, dtype=torch.float32))
    return loss
