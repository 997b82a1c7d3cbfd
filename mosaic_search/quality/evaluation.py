"""Measured quality of a model against its teacher: the one function every report, record and benchmark uses.

Three numbers, on text the model was never searched, aligned or distilled on (a fourth for a VLM teacher):
- `kl`: mean KL(teacher || model) per token, teacher-forced, over held-out windows (nats);
- `heldout_loss`: the model's own next-token loss on the same windows (nats per token; per byte for `tiny`);
- `recall`: greedy exact-match recall of key-value probes (`{"prompt", "answer", "distance"}` JSON lines),
  split at the smallest default SWA window of the model's dimensions: the distance a windowed layer stops seeing;
- `questions`: exact match of the greedy generated answer to held-out questions (`questions.py`; for `tiny-vl`: its
  image questions, which only reading the image answers).

Held-out windows are the *last* `windows` x `seq_len` tokens of the data file (for `tiny`: its `heldout.txt`,
whose first half is the calibration text `score` and `distill` read by default), so one file can feed training from
its start and evaluation from its end. `tiny-vl` reads the same text and probes as `tiny` (its byte tokens are tiny's).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, integer, invalid, path_arg
from .questions import answer_accuracy, load_questions

logger = logging.getLogger(__name__)

EVAL_WINDOWS = 8
EVAL_SEQ_LEN = 1024  # twice tiny's largest default SWA window: a windowed layer is not full attention here
TINY_PROBES = "recall_eval.jsonl"
QUESTIONS = "image_eval.jsonl"  # an embedded teacher's held-out questions, when it has them (tiny-vl)
PROBE_BATCH = 16


@dataclass(frozen=True)
class EvalSet:
    """Held-out token windows [n, seq_len], recall probes (prompt ids, answer ids, distance), the distance that
    splits them into short and long recall, and questions with known answers (`questions.Question`, with the
    tokenizer that decodes the answers)."""

    windows: object
    probes: tuple
    split: int
    source: str
    questions: tuple = ()
    tokenizer: object = None

    def describe(self) -> dict:
        """What the numbers were measured on (for records and reports)."""
        out = {"source": self.source, "windows": len(self.windows), "seq_len": int(self.windows.shape[1]),
               "probes": len(self.probes), "recall_split": self.split}
        return {**out, "questions": len(self.questions)} if self.questions else out


def eval_set(teacher: str, data: str | None = None, probes: str | None = None, windows: int = EVAL_WINDOWS,
             seq_len: int = EVAL_SEQ_LEN, tokenizer=None, param: str = "data", questions: str | None = None
             ) -> EvalSet:
    """The evaluation set of `teacher`: defaults for the embedded teachers (tiny's heldout.txt and
    recall_eval.jsonl; tiny-vl's image_eval.jsonl too); any other teacher needs `data` (a .txt/.jsonl/.parquet
    file) and takes `probes` and `questions` optionally. Errors are one-line UsageErrors, naming `data` as the
    caller's parameter `param`."""
    from ..hf import data as data_mod
    from ..hf.data import display_name
    from ..assets import EMBEDDED, embedded_dir
    from ..hf.models import load_config
    from ..hf.surgery import dims_of
    from ..operators import default_candidates

    for name, value in ((param, data), ("probes", probes), ("questions", questions)):
        path_arg(name, value, optional=True)
    embedded = teacher in EMBEDDED
    if data is None and not embedded:
        raise invalid(param, f": {teacher} has no default held-out text; pass a .txt/.jsonl/.parquet file")
    source = data_mod.check_source(data or str(data_mod.TINY_HELDOUT), param)
    if source == data_mod.SELF:
        raise invalid(param, "self: evaluation needs held-out text, not samples of the teacher")
    if not (integer(windows) and integer(seq_len)) or windows < 1 or seq_len < 2:
        raise UsageError(f"`windows` and `seq_len` must be integers of at least 1 and 2, got {windows!r} and "
                         f"{seq_len!r}")
    tokenizer = tokenizer or data_mod.tokenizer_of(teacher)
    if tokenizer is None:
        raise UsageError(f"{teacher} has no tokenizer to read the evaluation text with")
    config = load_config(teacher)
    dims = dims_of(config)
    if seq_len > dims.max_position:
        raise invalid("seq_len", f"{seq_len} exceeds the teacher's {dims.max_position} positions")
    ids = _tail(source, tokenizer, windows * seq_len)
    swa = [c.kwargs["window"] for c in default_candidates(dims) if "window" in c.kwargs]
    probe_file = probes or (str(data_mod.TINY_HELDOUT.parent / TINY_PROBES) if embedded else None)
    shipped = Path(embedded_dir(teacher) or ".") / QUESTIONS if embedded else None
    question_file = questions or (str(shipped) if shipped and shipped.is_file() else None)
    asked = ()
    if question_file:
        vision = None
        if getattr(config, "vision_config", None) is not None:
            vision = data_mod.Vision(teacher, config.image_token_id)
        asked = tuple(load_questions(question_file, tokenizer, vision))
    return EvalSet(windows=ids.view(-1, seq_len), probes=_probes(probe_file, tokenizer) if probe_file else (),
                   split=min(swa, default=seq_len), source=display_name(source), questions=asked, tokenizer=tokenizer)


def measure(model, teacher, evals: EvalSet, batch: int = 4) -> dict:
    """`{"kl", "heldout_loss", "tokens", "recall": {"<split": ..., ">=split": ...}, "questions": {"accuracy", "n",
    "by_question"}}` of `model` against `teacher` (both loaded, same tokenizer) on `evals`; recall is absent without
    probes, questions without questions. No gradients; no cache but in the greedy generation of answers."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    tdevice = next(teacher.parameters()).device
    kl = nll = 0.0
    n = 0
    with torch.no_grad():
        for start in range(0, len(evals.windows), batch):
            ids = evals.windows[start:start + batch]
            logp = F.log_softmax(model(ids.to(device), use_cache=False).logits[:, :-1].float(), -1).cpu()
            tlogp = F.log_softmax(teacher(ids.to(tdevice), use_cache=False).logits[:, :-1].float(), -1).cpu()
            kl += (tlogp.exp() * (tlogp - logp)).sum().item()
            nll += F.nll_loss(logp.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
            n += ids[:, 1:].numel()
        out = {"kl": kl / n, "heldout_loss": nll / n, "tokens": n}
        if evals.probes:
            hits: dict = {}
            # right-padded batches: every model here is causal, so padding after a probe never reaches it
            order = sorted(evals.probes, key=lambda p: len(p[0]) + len(p[1]))
            for start in range(0, len(order), PROBE_BATCH):
                group = order[start:start + PROBE_BATCH]
                width = max(len(p) + len(a) for p, a, _ in group)
                ids = torch.zeros(len(group), width, dtype=torch.long)
                for row, (p, a, _) in enumerate(group):
                    ids[row, :len(p) + len(a)] = torch.tensor(p + a)
                pred = model(ids.to(device), use_cache=False).logits.argmax(-1).cpu()
                for row, (p, a, distance) in enumerate(group):
                    bucket = f"<{evals.split}" if distance < evals.split else f">={evals.split}"
                    hits.setdefault(bucket, []).append(pred[row, len(p) - 1:len(p) + len(a) - 1].tolist() == a)
            out["recall"] = {k: sum(v) / len(v) for k, v in sorted(hits.items(), key=lambda kv: kv[0][0] != "<")}
    if evals.questions:
        out["questions"] = answer_accuracy(model, list(evals.questions), evals.tokenizer)
    return out


def evaluate(model: str, teacher: str | None = None, data: str | None = None, probes: str | None = None,
             windows: int = EVAL_WINDOWS, seq_len: int = EVAL_SEQ_LEN, device: str = "cpu",
             questions: str | None = None) -> dict:
    """Measure `model` (a directory built or distilled by mosaic, or any model of the teacher's family) against
    `teacher` (default: the teacher recorded in the model's plan): `measure`'s numbers plus what they were measured
    on (`eval`) and both model names."""
    from ..hf.device import check_device
    from ..hf.models import load_model

    path_arg("model", model, what="a model directory")
    path_arg("teacher", teacher, optional=True, what="a model id or directory")
    teacher = teacher or recorded_teacher(model)
    evals = eval_set(teacher, data, probes, windows, seq_len, questions=questions)
    warn_if_blind(model, teacher, seq_len)
    check_device(device)
    student = load_model(model, device=device)
    reference = student if model == teacher else load_model(teacher, device=device)
    return {"model": model, "teacher": teacher, "eval": evals.describe(), **measure(student, reference, evals)}


def warn_if_blind(model: str, teacher: str, seq_len: int) -> None:
    """Warn when the model's plan has windows the held-out windows of `seq_len` tokens cannot tell from full
    attention: its KL and loss then say nothing of what those layers lose on longer contexts."""
    from ..artifacts.plan import PLAN_FILE, load_plan
    from ..hf.models import load_config
    from ..hf.surgery import teacher_ops
    from ..operators import seen_as_full

    if not (Path(model) / PLAN_FILE).is_file():
        return
    layers = load_plan(Path(model) / PLAN_FILE).layers
    if blind := seen_as_full(layers, seq_len, teacher_ops(load_config(teacher))):
        logger.warning(f"warning: held-out windows of {seq_len} tokens cannot tell {', '.join(blind)} from full "
                       "attention (a window as long as the sequence sees all of it): the numbers say nothing of what "
                       "those layers lose on longer contexts; evaluate on longer sequences (seq_len above the largest "
                       "window)")


def recorded_teacher(model: str) -> str:
    """The teacher id a mosaic model directory was built from (its plan record); an embedded teacher is its own;
    a one-line error otherwise."""
    from ..artifacts.plan import PLAN_FILE, load_plan
    from ..hf.models import EMBEDDED

    if model in EMBEDDED:
        return model
    if not Path(model).is_dir():
        raise UsageError(f"{model}: no such model directory")
    plan = Path(model) / PLAN_FILE
    if not plan.is_file():
        raise UsageError(f"{model}: not a model built by mosaic (no {PLAN_FILE}); pass `teacher`")
    return load_plan(plan).header.model.id


def _tail(source: str, tokenizer, n: int):
    """The last `n` tokens of a data file's text (documents joined by the tokenizer's EOS), or an error."""
    import torch

    from ..hf.data import documents

    eos = getattr(tokenizer, "eos_token_id", None)
    text = Path(source).suffix.lower() == ".txt"
    stream: list = []
    for doc in documents(source, tokenizer):
        if not isinstance(doc, str):
            raise invalid("data", f"{source}: evaluation reads text rows only; this row has images")
        stream += tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        if eos is not None and not text:
            stream.append(eos)
        stream = stream[-n:]
    if len(stream) < n:
        raise invalid("data", f"{source}: {len(stream)} tokens, fewer than the {n} evaluation needs "
                      "(`windows` x `seq_len`)")
    return torch.tensor(stream, dtype=torch.long)


def _probes(path: str, tokenizer) -> tuple:
    """(prompt ids, answer ids, distance) of every line of a probe file, or a one-line error naming the line."""
    p = Path(path)
    if not p.is_file():
        raise invalid("probes", f"{path}: " + ("a folder; give a .jsonl file of probes" if p.is_dir() else
                                               "no such file"))
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, answer, distance = str(row["prompt"]), str(row["answer"]), int(row["distance"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise invalid("probes", f'{path}: line {n}: expected {{"prompt", "answer", "distance"}}') from None
        enc = [tokenizer(s, add_special_tokens=False, verbose=False)["input_ids"] for s in (prompt, answer)]
        if not enc[0] or not enc[1]:
            raise invalid("probes", f"{path}: line {n}: empty prompt or answer")
        out.append((enc[0], enc[1], distance))
    if not out:
        logger.info(f"note: --probes {path} has no probes; recall is not measured")
    return tuple(out)
