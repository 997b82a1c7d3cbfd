"""Held-out questions with known answers (image questions for a VLM): exact match of the model's greedy answer.

A question file is .jsonl: {"messages": [...], "answer": "...", "kind": optional group name}; the messages end with
the user's turn (an image part {"type": "image", "image": path relative to the file} for a VLM), the chat template
adds the generation prompt, and the model answers greedily until an end-of-sequence token. The answer counts when
the decoded text (special tokens skipped) equals `answer` exactly: generation, not log-likelihood, because a model
can rank the right answer first token by token and still not write it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, invalid

QUESTION_BATCH = 32


@dataclass(frozen=True)
class Question:
    """One prompt (token ids, image tokens expanded), its image inputs (None for a text question), the expected
    answer and its group."""

    ids: tuple
    images: dict | None
    answer: str
    kind: str


def load_questions(path, tokenizer, vision=None, param: str = "questions") -> list[Question]:
    """The questions of a .jsonl file, read through the teacher's chat template (and its image processor, `vision`:
    hf.vision.Vision); a one-line UsageError naming parameter `param` and the row for anything unreadable."""
    from ..hf.data import check_source, documents
    from ..hf.vision import ImageSample, image_tokens

    path = Path(check_source(str(path), param))
    if path.suffix.lower() != ".jsonl":
        raise invalid(param, f"{path}: expected a .jsonl file of questions")
    answers = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            row = json.loads(line) if line.lstrip().startswith("{") else None
            if not isinstance(row, dict) or not isinstance(row.get("answer"), str) or "messages" not in row:
                raise invalid(param, f'{path}: line {n}: expected {{"messages", "answer"}}')
            answers.append((row["answer"], str(row.get("kind", "all"))))
    out = []
    for doc, (answer, kind) in zip(documents(path, tokenizer, vision, prompt=True), answers):
        if isinstance(doc, ImageSample):
            ids, images = image_tokens(doc, tokenizer, vision)
        else:
            ids, images = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"], None
        out.append(Question(tuple(ids), images, answer, kind))
    if not out:
        raise invalid(param, f"{path}: no questions in the file")
    return out


def answer_accuracy(model, questions: list[Question], tokenizer=None, blank: bool = False,
                    max_new_tokens: int | None = None) -> dict:
    """{"accuracy", "n", "by_question": {kind: {"accuracy", "n"}}}: the share of `questions` whose greedy answer
    (`answers`) equals the expected one."""
    got = answers(model, questions, tokenizer, blank, max_new_tokens)
    hits: dict = {}
    for q, text in zip(questions, got):
        hits.setdefault(q.kind, []).append(text == q.answer)
    every = [h for v in hits.values() for h in v]
    return {"accuracy": sum(every) / len(every), "n": len(every),
            "by_question": {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(hits.items())}}


def answers(model, questions: list[Question], tokenizer=None, blank: bool = False,
            max_new_tokens: int | None = None) -> list[str]:
    """The model's greedy answer to each question, in order: at most `max_new_tokens` new tokens (default: one more
    than the longest expected answer), cut at the first end-of-sequence token, decoded without special tokens.
    Prompts of one length are generated as one batch (no padding: a built model refuses padded prompts). `blank`:
    every image replaced by plain mid-grey pixels (what the question alone gives)."""
    import torch

    from ..hf.models import end_tokens
    from ..hf.vision import model_inputs

    tokenizer = tokenizer or _tokenizer_of(model)
    if max_new_tokens is None:
        max_new_tokens = 1 + max(len(tokenizer(q.answer, add_special_tokens=False)["input_ids"]) for q in questions)
    device = next(model.parameters()).device
    image_token = getattr(model.config, "image_token_id", None)
    groups: dict = {}
    for i, q in enumerate(questions):
        groups.setdefault((len(q.ids), q.images is None), []).append(i)
    out: list = [None] * len(questions)
    for group in groups.values():
        for start in range(0, len(group), QUESTION_BATCH):
            batch = [questions[i] for i in group[start:start + QUESTION_BATCH]]
            ids = torch.tensor([q.ids for q in batch])
            rows = [q.images for q in batch]
            if blank:
                rows = [im and {**im, "pixel_values": torch.zeros_like(im["pixel_values"])} for im in rows]
            inputs = model_inputs(ids, rows, image_token, device)
            with torch.no_grad():
                new = model.generate(**inputs, attention_mask=torch.ones_like(inputs["input_ids"]), do_sample=False,
                                     max_new_tokens=max_new_tokens)[:, ids.shape[1]:]
            for i, tokens in zip(group[start:start + QUESTION_BATCH], new.tolist()):
                out[i] = tokenizer.decode(_until_end(tokens, end_tokens(model)), skip_special_tokens=True)
    return out


def _until_end(tokens: list, ends: set) -> list:
    return next((tokens[:i] for i, t in enumerate(tokens) if t in ends), tokens)


def _tokenizer_of(model):
    from ..hf.data import tokenizer_of

    tok = tokenizer_of(model.name_or_path)
    if tok is None:
        raise UsageError(f"{model.name_or_path}: no tokenizer to decode answers with")
    return tok
