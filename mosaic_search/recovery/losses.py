"""The distillation losses and learning-rate schedule: divergences between next-token distributions, the normalised
MSE of hidden states, the off-policy (teacher-forced) and on-policy (GKD: Agarwal et al. 2024, "On-Policy
Distillation of Language Models: Learning from Self-Generated Mistakes") losses, and warm-up then cosine decay."""

from __future__ import annotations

import math

from .batches import Batch

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
    """Stage 1's loss on each row's prompt followed by the student's own continuation of it (`sample`): a position
    that predicts a sampled token gets divergence `kind` from the teacher (mixed with the oracle's on the rows the
    oracle reads: all, or text rows for an oracle without a vision tower), one that predicts a prompt token keeps
    the teacher-forced KL(teacher || student), all averaged per real token; plus the hidden-state term over the real
    tokens. The prompt's positions come free with the forward passes the sampled ones need; without them the few
    sampled tokens per step undid part of stage 1 on the embedded teacher (GKD mixes fixed data with the student's
    samples for the same reason). `models`: a `loading.Models`."""
    import torch

    gen, cuts = sample(models.student, batch)
    device = next(models.student.parameters()).device
    hidden = hidden_weight > 0
    with torch.no_grad():
        t_all, t_hidden = forward(models.teacher, gen, hidden)
    s_all, s_hidden = forward(models.wrapped, gen, hidden)
    mask = gen.mask(device)
    # position p predicts token p + 1: the prompt's own tokens before cut - 1, the student's samples from there
    own = (torch.arange(mask.shape[1], device=device)[None] >= torch.tensor(cuts, device=device)[:, None] - 1).float()
    forced = divergence(t_all, s_all, "forward")
    sampled = forced if kind == "forward" else divergence(t_all, s_all, kind)
    if models.oracle is not None:
        reads = [i for i, im in enumerate(gen.sequences.images)
                 if im is None or getattr(models.oracle.config, "vision_config", None) is not None]
        if reads:
            with torch.no_grad():
                o_all = forward(models.oracle, Batch(gen.sequences.select(reads), gen.image_token), False)[0]
            o_div, weight = torch.zeros_like(sampled), torch.zeros(len(sampled), 1, device=device)
            o_div[reads], weight[reads] = divergence(o_all, s_all[reads], kind), oracle_weight
            sampled = (1 - weight) * sampled + weight * o_div
    per = own * sampled + (1 - own) * forced
    real = mask[:, 1:]  # positions that predict a real token
    loss = (per[:, :-1] * real).sum() / real.sum().clamp_min(1)
    if hidden:
        loss = loss + hidden_weight * hidden_nmse(s_hidden, t_hidden, mask)
    return loss


def sample(student, batch):
    """(the student's continuations as a `Batch`, each row's prompt length): a text row is cut ONPOLICY_TOKENS
    before its end (at most all but one token) and continued by exactly as many sampled tokens (end-of-sequence
    suppressed, so no row is padded); an image chat row is cut where its last reply starts and the student writes
    its own reply, up to ONPOLICY_TOKENS and through its first end-of-sequence token (then padded). Rows with one
    prompt length and kind are sampled as one batch: a built model refuses padded prompts. Temperature 1, no
    truncation, a VLM's image and video tokens never sampled; the student in eval mode while it samples."""
    import torch

    from ..hf.data import Windows
    from ..hf.models import end_tokens
    from ..hf.vision import model_inputs

    seqs, image_token = batch.sequences, batch.image_token
    device = next(student.parameters()).device
    width = seqs.ids.shape[1]
    prompts = [width - min(ONPOLICY_TOKENS, width - 1) if im is None else reply
               for im, reply in zip(seqs.images, seqs.replies)]
    groups: dict = {}
    for i, (cut, im) in enumerate(zip(prompts, seqs.images)):
        groups.setdefault((cut, im is None), []).append(i)
    # a sampled image (or video) token would ask the forward passes for an image that no pixel values give
    vision = [t for t in (getattr(student.config, k, None) for k in ("image_token_id", "video_token_id"))
              if t is not None]
    ends = end_tokens(student)
    rows: list = [None] * len(seqs)
    student.eval()
    with torch.no_grad():
        for (cut, text), members in groups.items():
            ids = seqs.ids[members, :cut]
            new = width - cut if text else min(ONPOLICY_TOKENS, width - cut)
            inputs = model_inputs(ids, [seqs.images[i] for i in members], image_token, device)
            out = student.generate(**inputs, attention_mask=torch.ones_like(inputs["input_ids"]), do_sample=True,
                                   temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                                   min_new_tokens=new if text else 0, pad_token_id=0, suppress_tokens=vision or None,
                                   cache_implementation="dynamic").cpu()
            for i, row in zip(members, out):
                written = row[cut:].tolist()
                if not text:  # the reply ends with its end-of-sequence token
                    written = written[:next((k + 1 for k, t in enumerate(written) if t in ends), len(written))]
                rows[i] = torch.cat([row[:cut], torch.tensor(written, dtype=row.dtype)])
    student.train()
    longest = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r, r.new_zeros(longest - len(r))]) for r in rows])
    return Batch(Windows(ids, [len(r) for r in rows], list(seqs.images)), image_token), prompts
