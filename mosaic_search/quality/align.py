"""Local alignment (NVIDIA Puzzle's blockwise local distillation) of a replacement mixer to the teacher's attention.

The mixer, initialised from the teacher, is trained to reproduce the teacher attention's output from the teacher's
own layer inputs (the decoder layer's `input_layernorm` of the hidden state entering it), with the normalised MSE
|mixer(x) - attn(x)|^2 / |attn(x)|^2. Only that one mixer trains; nothing else in the model changes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

LR = 1e-3
BATCH_ROWS = 1  # windows per step: on the embedded teacher, nearly the NMSE of two at the same step count
WARMUP = 5


@dataclass
class Pairs:
    """Layer inputs and the teacher attention's outputs on them, with their rotary cos/sin (one row each)."""

    x: object  # [rows, T, hidden] float32
    y: object
    pe: tuple


def teacher_pairs(norm, attention, hidden, pe) -> Pairs:
    """Pairs for one layer from the hidden states entering it ([rows, T, hidden]) and their cos/sin ([rows, T, d]:
    an image window has positions of its own), on the attention's device."""
    import torch

    with torch.no_grad():
        param = next(attention.parameters())
        h = hidden.to(device=param.device, dtype=param.dtype)
        cos, sin = (t.to(param.device) for t in pe)
        x = norm(h)  # the input layernorm lives beside the attention, in the same decoder layer
        y = attention(hidden_states=x, position_embeddings=(cos, sin), attention_mask=None)[0]
    return Pairs(x=x.float(), y=y.float(), pe=(cos.float(), sin.float()))


def nmse(mixer, pairs: Pairs, rows: int | None = None) -> float:
    """Normalised MSE of the mixer against the teacher attention on (the first `rows` of) `pairs`."""
    import torch

    with torch.no_grad():
        x, y = pairs.x[:rows], pairs.y[:rows]
        return float(_loss(mixer, x, y, tuple(t[:rows] for t in pairs.pe)))


def _loss(mixer, x, y, pe):
    dtype = next(mixer.parameters()).dtype
    cos, sin = (t.to(dtype) for t in pe)
    out = mixer(x.to(dtype), (cos, sin))[0].float()
    return (out - y).pow(2).sum() / y.pow(2).sum().clamp_min(1e-12)


def align(mixer, train: Pairs, held_out: Pairs, steps: int, seed: int, lr: float = LR,
          batch_rows: int = BATCH_ROWS) -> dict:
    """Train `mixer` in place for `steps` Adam steps on `train`; return its normalised MSE on `held_out` before
    and after. Trains a float32 copy when the mixer is in lower precision."""
    import torch

    before = nmse(mixer, held_out)
    if steps <= 0:
        return {"align_nmse_init": before}
    param = next(mixer.parameters(), None)
    if param is None:
        return {"align_nmse_init": before}
    work = mixer if param.dtype == torch.float32 else copy.deepcopy(mixer).float()
    opt = torch.optim.Adam(work.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    rows = train.x.shape[0]
    order = torch.randperm(rows, generator=gen)
    step_rows = min(batch_rows, rows)
    cursor = 0
    with torch.enable_grad():
        for step in range(steps):
            if cursor + step_rows > rows:
                order, cursor = torch.randperm(rows, generator=gen), 0
            idx = order[cursor: cursor + step_rows].to(train.x.device)
            cursor += step_rows
            # linear warm-up, then cosine decay to a tenth of the peak
            scale = (step + 1) / WARMUP if step < WARMUP else 0.1 + 0.45 * (1 + math.cos(math.pi * step / steps))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            loss = _loss(work, train.x[idx], train.y[idx], tuple(t[idx] for t in train.pe))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if work is not mixer:
        mixer.load_state_dict(work.state_dict())
    return {"align_nmse_init": before, "align_nmse": nmse(mixer, held_out)}
