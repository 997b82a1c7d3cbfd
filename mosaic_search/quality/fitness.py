"""Refine's fitness: the true KL(teacher || plan) of whole plans on calibration windows, at two fidelities.

The teacher's side is computed once (the scorer's teacher pass: the hidden state entering every layer and, per
token, the normed final hidden g, u = W^T p and the log-partition), so a plan costs one forward of its layers from
its first swapped layer on. Plans are assembled in memory on one teacher by `surgery.swap` with the candidate
library's aligned weights, exactly as `mosaic build` applies them (scored == shipped); only the layers that differ
from the previous plan are swapped. Fidelity: the first `low` windows (a multi-fidelity search's screening), or
all `high` windows.
"""

from __future__ import annotations

import dataclasses
import time

from ..errors import invalid


def calibration_windows(teacher: str, data: str, seq_len: int, windows: int, param: str = "data"):
    """`windows` text windows of `seq_len` tokens from the start of `data` (as the scorer cuts them); UsageError
    (exit 2) naming both numbers when the file holds fewer, before any evaluation."""
    from ..hf import data as data_mod
    from ..hf import surgery
    from ..hf.models import load_config

    source = data_mod.check_source(data, param)
    if source == data_mod.SELF:
        raise invalid(param, "self: refine measures plans on calibration text; give a .txt/.jsonl/.parquet file")
    config = load_config(teacher)
    vision = None
    if surgery.architecture(config).record.image_inputs:
        vision = data_mod.Vision(str(teacher), config.image_token_id)
    tok = data_mod.tokenizer_of(teacher)
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # its "scoring on all of them" note; the check below says more
        got, _, _ = data_mod.tokenize_file(source, tok, windows, 0, seq_len, vision, verb="refining on")
    if len(got) < windows:  # the file is short, so counting all of its tokens again is cheap
        have = sum(len(tok(d, add_special_tokens=False, verbose=False)["input_ids"]) if isinstance(d, str) else 0
                   for d in data_mod.documents(source, tok))
        raise invalid(param, f"{data_mod.display_name(source)}: {have} tokens, fewer than the {windows * seq_len} "
                         f"the high fidelity needs ({windows} windows of {seq_len})")
    return got[:windows]


class Fitness:
    """True KL(teacher || plan) per token on calibration windows; `measure(layers, high)` -> (kl, tokens, seconds)."""

    def __init__(self, teacher: str, windows, low: int, library_weights: dict, device: str = "cpu", seed: int = 0):
        """`windows` (data.Windows, `high` = all of them), the first `low` of them for screening; `library_weights`:
        {(layer, Candidate): aligned state dict} for every aligned candidate a plan may take."""
        from ..hf import surgery
        from . import scorer

        self.model = scorer._load_teacher(teacher, device, None, "float32")
        self.teacher_ops = tuple(surgery.teacher_ops(self.model.config))
        self.weights, self.seed = library_weights, seed
        none = windows[:0]
        parts = [scorer._teacher_pass(self.model, windows[:low], none, device, None)]
        if len(windows) > low:
            parts.append(scorer._teacher_pass(self.model, windows[low:], none, device, None))
        self.low_batches = len(parts[0].batches)
        self.ctx = dataclasses.replace(parts[0], batches=[b for part in parts for b in part.batches])
        self.current = list(self.teacher_ops)
        self.tokens = {False: self._tokens(self.ctx.batches[:self.low_batches]), True: self._tokens(self.ctx.batches)}

    @staticmethod
    def _tokens(batches) -> int:
        return int(sum(b.g.shape[0] for b in batches))

    def assemble(self, layers) -> None:
        """Make the in-memory model `layers` (one Candidate per layer), swapping only what changed."""
        import torch

        from ..hf import surgery

        with torch.random.fork_rng(devices=[]):  # fresh parts of an unaligned mixer are seeded, as build seeds them
            torch.manual_seed(self.seed)
            for layer, cand in enumerate(layers):
                if cand == self.current[layer]:
                    continue
                surgery.restore(self.model, layer)
                if cand != self.teacher_ops[layer]:
                    surgery.swap(self.model, layer, cand, weights=self.weights.get((layer, cand)))
                self.current[layer] = cand

    def measure(self, layers, high: bool) -> tuple[float, int, float]:
        """(mean KL per token in nats, tokens, seconds) of plan `layers` on the low or high fidelity's windows."""
        from . import scorer

        began = time.perf_counter()
        self.assemble(layers)
        changed = [layer for layer, c in enumerate(layers) if c != self.teacher_ops[layer]]
        if not changed:
            return 0.0, self.tokens[high], time.perf_counter() - began
        view = self.ctx if high else dataclasses.replace(self.ctx, batches=self.ctx.batches[:self.low_batches])
        kl, _ = scorer._evaluate(view, changed[0])
        return kl, self.tokens[high], time.perf_counter() - began


def library_weights(library, allowed, ref, allow_stale: bool, scores_sha256: str | None) -> dict:
    """{(layer, Candidate): aligned state dict} of every aligned candidate in `allowed` (per layer) from the
    candidate library at `library`; UsageError (exit 2) for an aligned candidate it lacks, StaleInputError (exit 4)
    for a library of another model unless `allow_stale`."""
    from .library import library_weights as one_plan

    out = {}
    width = max(len(cs) for cs in allowed) if library is not None else 1  # without one: its warning, once
    for k in range(width):  # one plan-shaped request per rank of candidate, so every check is the library's own
        layers = [cs[min(k, len(cs) - 1)] for cs in allowed]
        for layer, w in one_plan(library, layers, ref, allow_stale, scores_sha256).items():
            out[layer, layers[layer]] = w
    return out

