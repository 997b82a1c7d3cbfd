"""Calibration data for `score`: local .txt / .jsonl / .parquet files, or sequences sampled from the teacher itself.

Files are tokenized with the teacher's own tokenizer, documents joined by its end-of-sequence token, and cut into
`seq_len` windows: the first windows are scored, the next ones (disjoint) feed local alignment. `self` samples
sequences from the teacher with a fixed seed, so any teacher can be scored with no data set at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .assets import TINY_DIR
from .errors import UsageError

SELF = "self"
SUFFIXES = (".txt", ".jsonl", ".parquet")
TINY_HELDOUT = TINY_DIR / "heldout.txt"
TINY_CALIBRATION = TINY_DIR / "calibration.txt"  # held-out text with recall sequences (see the model card)


def default_source(teacher: str) -> str:
    """The embedded teacher's calibration file (held-out text and recall) when it ships, else `self`."""
    from .models import TINY

    return str(TINY_CALIBRATION) if teacher == TINY and TINY_CALIBRATION.is_file() else SELF


def check_source(source: str) -> str:
    """`self`, or an existing, non-empty file of a known kind; a one-line error otherwise."""
    if source == SELF:
        return source
    path = Path(source)
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(f'--data {source}: expected "self" or a {", ".join(SUFFIXES)} file')
    if not path.is_file():
        raise UsageError(f"--data {source}: no such file")
    if path.stat().st_size == 0:
        raise UsageError(f"--data {source}: the file is empty")
    return source


def tokenizer_of(teacher: str):
    """The teacher's tokenizer (offline-aware), or None when it has none."""
    from transformers import AutoTokenizer

    from .models import TINY

    where = TINY_DIR if teacher == TINY else teacher
    if teacher == TINY and not (Path(where) / "tokenizer_config.json").is_file():
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # transformers builds an empty tokenizer of the model's type for a directory that ships none
    return tokenizer if len(tokenizer) > 1 else None


def documents(path: str | Path, tokenizer, vision: bool = False):
    """The documents of a data file as strings, lazily: text in blocks of whole lines, chat messages through the
    tokenizer's chat template.

    A .jsonl line (or .parquet row) is {"text": ...} or {"messages": [...]}. Image parts are checked (a readable
    file) and then refused: scoring through the vision tower is not implemented yet.
    """
    path = Path(path)
    if path.suffix.lower() == ".txt":
        yield from _text_blocks(path)
        return
    rows = _jsonl_rows(path) if path.suffix.lower() == ".jsonl" else _parquet_rows(path)
    for where, row in rows:
        yield _document(row, where, tokenizer, vision, path.parent)


def _text_blocks(path: Path, block: int = 1 << 16):
    try:
        with path.open(encoding="utf-8", newline="") as f:
            while True:
                text = f.read(block)
                if not text:
                    return
                yield text + (f.readline() if not text.endswith("\n") else "")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _jsonl_rows(path: Path):
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            yield f"{path}: line {n}", row


def _parquet_rows(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for every kind of bad file
        raise UsageError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:120]})") from None
    for n, row in enumerate(table.to_pylist()):
        yield f"{path}: row {n}", row


def _document(row, where: str, tokenizer, vision: bool, base: Path) -> str:
    if not isinstance(row, dict) or not ({"text", "messages"} & set(row)):
        raise UsageError(f'{where}: expected an object with "text" or "messages"')
    if "text" in row:
        if not isinstance(row["text"], str):
            raise UsageError(f'{where}: "text" must be a string')
        return row["text"]
    messages = row["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise UsageError(f'{where}: "messages" must be a list of {{"role", "content"}} objects')
    flat = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image", "image_url"):
                    _check_image(part.get("image") or part.get("image_url") or part.get("path"), where, base)
                    if not vision:
                        raise UsageError(f"{where}: has an image but the teacher is a text-only model")
                    raise UsageError(f"{where}: scoring image inputs is not supported yet; use text-only data")
                elif isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append(part["text"])
            content = "".join(parts)
        flat.append({"role": str(m.get("role", "user")), "content": str(content)})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(flat, tokenize=False)
    return "\n".join(m["content"] for m in flat)


def _check_image(ref, where: str, base: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(ref, str) or not ref:
        raise UsageError(f"{where}: an image part needs a file path")
    path = Path(ref) if Path(ref).is_absolute() else base / ref
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UsageError(f"{where}: cannot read image {ref} ({type(e).__name__})") from None


def tokenize_file(source: str, tokenizer, n_score: int, n_align: int, seq_len: int, vision: bool = False):
    """(score windows, align windows, notes) cut from a data file; alignment reuses the scored windows only when
    the file is too short for both."""
    import torch

    if tokenizer is None:
        raise UsageError(f"--data {source}: the teacher has no tokenizer to read text with; use --data self")
    eos = getattr(tokenizer, "eos_token_id", None)
    need = (n_score + n_align) * seq_len
    stream: list[int] = []
    text = Path(source).suffix.lower() == ".txt"
    for doc in documents(source, tokenizer, vision):
        if len(stream) >= need:
            break
        stream += tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        if eos is not None and not text:  # a .txt file is one document, read in blocks
            stream.append(eos)
    if not stream:
        raise UsageError(f"--data {source}: no text in the file")
    windows = len(stream) // seq_len
    if windows == 0:
        raise UsageError(f"--data {source}: {len(stream)} tokens, fewer than one --seq-len window of {seq_len}")
    ids = torch.tensor(stream[: windows * seq_len], dtype=torch.long).view(windows, seq_len)
    notes = {}
    if windows < n_score:
        print(f"note: {source} has {windows * seq_len} tokens; scoring on all of them", file=sys.stderr)
    score = ids[:n_score]
    align = ids[len(score): len(score) + n_align]
    if len(align) == 0:
        align, notes["align_data"] = score[:n_align], "shared with the scored windows (the file is too short)"
    return score, align, notes


def sample_from_teacher(model, n: int, seq_len: int, seed: int, batch: int = 32):
    """`n` sequences of `seq_len` tokens sampled from the teacher (temperature 1, no truncation), reproducibly.

    Each sequence starts with the teacher's BOS token when it has one, else a uniformly drawn token.
    """
    import torch

    device = next(model.parameters()).device
    config = getattr(model.config, "text_config", None) or model.config
    vocab = model.get_output_embeddings().weight.shape[0]
    bos = getattr(config, "bos_token_id", None)
    if bos is None:
        bos = getattr(model.config, "bos_token_id", None)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch):
            b = min(batch, n - start)
            if isinstance(bos, int) and 0 <= bos < vocab:
                seq = torch.full((b, 1), bos, dtype=torch.long, device=device)
            else:
                seq = torch.randint(0, vocab, (b, 1), generator=gen, device=device)
            step = model(input_ids=seq, use_cache=True)
            for _ in range(seq_len - 1):
                probs = torch.softmax(step.logits[:, -1].float(), dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen)
                seq = torch.cat([seq, nxt], dim=1)
                step = model(input_ids=nxt, past_key_values=step.past_key_values, use_cache=True)
            out.append(seq.cpu())
    return torch.cat(out)
