"""Calibration data for `score`: local .txt / .jsonl / .parquet files, or sequences sampled from the teacher itself.

Files are tokenized with the teacher's own tokenizer, documents joined by its end-of-sequence token, and cut into
`seq_len` windows: the first windows are scored, the next ones (disjoint) feed local alignment. `self` samples
sequences from the teacher with a fixed seed, so any teacher can be scored with no data set at all.

For a VLM teacher, a chat row with images is one window of its own, made as Qwen3-VL's processor makes it: the chat
template places one image token per image, the teacher's image processor (preprocessor_config.json) turns each
image into patches, and each image token is repeated once per merged patch. A shorter sample is padded to `seq_len`
(padding is never scored: it comes after every real token, so causal attention keeps it out of them); a longer one
loses the text after its last image, and a sample whose images do not fit in `seq_len` is skipped with a note.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..assets import TINY_DIR, embedded_dir
from ..errors import UsageError, invalid, path_arg
from ..modeling.architectures import image_architectures
from . import distributed
from .vision import ImageSample, Vision, image_tokens, reply_start

logger = logging.getLogger(__name__)

SELF = "self"
SUFFIXES = (".txt", ".jsonl", ".parquet")
TINY_HELDOUT = TINY_DIR / "heldout.txt"  # tiny-vl reads the same held-out text: its byte tokens are tiny's


def default_source(teacher: str) -> str:
    """An embedded teacher's calibration file (tiny: held-out text and recall; tiny-vl: image conversations
    alternating with those, see the model cards) when it ships, else `self`."""
    where = embedded_dir(teacher)
    found = sorted(Path(where).glob("calibration.*")) if where else []
    return str(found[0]) if found else SELF


def default_distill_source(teacher: str) -> str:
    """`distill`'s default data: samples of the teacher (`self`), except for an embedded teacher that reads images,
    whose calibration file's image and text rows train both stages."""
    source = default_source(teacher)
    return source if source.endswith(".jsonl") else SELF


def check_source(source: str, param: str = "data") -> str:
    """`self`, or an existing, non-empty file of a known kind; a one-line error naming parameter `param` otherwise."""
    if source == SELF:
        return source
    path = Path(path_arg(param, source))
    if path.suffix.lower() not in SUFFIXES:
        raise invalid(param, f'{source}: expected "self" or a {", ".join(SUFFIXES)} file')
    if not path.is_file():
        raise invalid(param, f"{source}: no such file")
    if path.stat().st_size == 0:
        raise invalid(param, f"{source}: the file is empty")
    return source


def display_name(source: str) -> str:
    """A data source as records and reports name it: a file shipped with mosaic by its path in the package,
    anything else by its file name, never by a path of the machine that ran the command."""
    if source == SELF:
        return "sampled from the teacher"
    path = Path(source).resolve()
    try:
        return str(path.relative_to(Path(__file__).resolve().parents[2]))  # beside mosaic_search/
    except ValueError:
        return path.name


def tokenizer_of(teacher: str):
    """The tokenizer of a teacher or of a model mosaic wrote (offline-aware), or None when it has none."""
    from transformers import AutoTokenizer

    from .models import is_mosaic_dir

    where = embedded_dir(teacher) or teacher
    if where != teacher and not (Path(where) / "tokenizer_config.json").is_file():
        return None
    try:  # a mosaic model's config names our remote code, which transformers reads before the tokenizer files
        tokenizer = AutoTokenizer.from_pretrained(str(where), trust_remote_code=is_mosaic_dir(str(where)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # transformers builds an empty tokenizer of the model's type for a directory that ships none
    return tokenizer if len(tokenizer) > 1 else None


@dataclass
class Windows:
    """Calibration windows: token ids [n, seq_len], each window's real length (the rest is padding, only after an
    image sample) and its images (None, or the image processor's {"pixel_values", "image_grid_thw"})."""

    ids: object
    lengths: list
    images: list
    # per window: where the last reply of an image chat row starts (`vision.reply_start`), the prompt on-policy
    # distillation has the model answer; None for every other window (None: all)
    replies: list | None = None

    def __post_init__(self):
        if self.replies is None:
            self.replies = [None] * len(self.lengths)

    @classmethod
    def of(cls, ids) -> "Windows":
        """Text windows, every token real."""
        return cls(ids, [ids.shape[1]] * len(ids), [None] * len(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> "Windows":
        return Windows(self.ids[rows], self.lengths[rows], self.images[rows], self.replies[rows])

    def select(self, rows: list) -> "Windows":
        """The windows at these indices, in this order (an index may repeat)."""
        return Windows(self.ids[rows], [self.lengths[i] for i in rows], [self.images[i] for i in rows],
                       [self.replies[i] for i in rows])


def documents(path: str | Path, tokenizer, vision: Vision | None = None, prompt: bool = False):
    """The documents of a data file, lazily: text in blocks of whole lines, chat messages through the tokenizer's
    chat template (a row with images, for a VLM teacher: an `ImageSample`); `prompt`: each chat ends with the
    template's generation prompt (a question for the model to answer).

    A .jsonl line (or .parquet row) is {"text": ...} or {"messages": [...]}; an image part is {"type": "image",
    "image": path} (relative to the data file). Every image must be a readable file; a text-only teacher refuses
    rows with images.
    """
    path = Path(path)
    if path.suffix.lower() == ".txt":
        yield from _text_blocks(path)
        return
    rows = _jsonl_rows(path) if path.suffix.lower() == ".jsonl" else _parquet_rows(path)
    for where, row in rows:
        yield _document(row, where, tokenizer, vision, path.parent, prompt)


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
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"{path}: line {n}: not UTF-8 text; is it the right file?") from None
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


def _document(row, where: str, tokenizer, vision: Vision | None, base: Path, prompt: bool = False):
    if not isinstance(row, dict) or not ({"text", "messages"} & set(row)):
        raise UsageError(f'{where}: expected an object with "text" or "messages"')
    if "text" in row:
        if not isinstance(row["text"], str):
            raise UsageError(f'{where}: "text" must be a string')
        return _no_image_tokens(row["text"], where, tokenizer, vision)
    messages = row["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise UsageError(f'{where}: "messages" must be a list of {{"role", "content"}} objects')
    flat, images = [], []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image", "image_url"):
                    if vision is None:
                        raise UsageError(f"{where}: has an image, and mosaic feeds images only to "
                                         f"{', '.join(image_architectures())} teachers (this one reads text only)")
                    ref = part.get("image") or part.get("image_url") or part.get("path")
                    images.append(_load_image(ref, where, base))
                    vision.check(images[-1], ref, where)
                    parts.append({"type": "image"})
                elif isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
            # without images, the parts are joined into one string, which every chat template accepts
            content = parts if any(p["type"] == "image" for p in parts) else "".join(p["text"] for p in parts)
        else:
            content = str(content)
        flat.append({"role": str(m.get("role", "user")), "content": content})
    if images:
        if not getattr(tokenizer, "chat_template", None):
            raise UsageError(f"{where}: has an image but the teacher's tokenizer has no chat template to place it")
        text = tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=prompt)
        head = None
        if not prompt and len(flat) > 1 and flat[-1]["role"] == "assistant":
            head = tokenizer.apply_chat_template(flat[:-1], tokenize=False, add_generation_prompt=True)
        return ImageSample(where, text, images, head if head and text.startswith(head) else None)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=prompt)
    else:
        text = "\n".join(m["content"] for m in flat)
    return _no_image_tokens(text, where, tokenizer, vision)


def _no_image_tokens(text: str, where: str, tokenizer, vision: Vision | None) -> str:
    """`text` of a row without images, or a one-line error when it writes the image token itself (the model would
    look for image features that no image gives)."""
    if vision is not None and (n := text.count(vision.token(tokenizer))):
        raise UsageError(f"{where}: its text holds {n} image tokens ({vision.token(tokenizer)}) for 0 images")
    return text


def _load_image(ref, where: str, base: Path):
    from PIL import Image, UnidentifiedImageError

    if not isinstance(ref, str) or not ref:
        raise UsageError(f"{where}: an image part needs a file path")
    path = Path(ref) if Path(ref).is_absolute() else base / ref
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UsageError(f"{where}: cannot read image {ref} ({type(e).__name__})") from None
    if image.width == 0 or image.height == 0:
        raise UsageError(f"{where}: image {ref} is {image.width}x{image.height} pixels: nothing to read")
    return image


def tokenize_file(source: str, tokenizer, n_score: int, n_align: int, seq_len: int, vision: Vision | None = None,
                  verb: str = "scoring on"):
    """(score windows, align windows, notes) cut from a data file, in file order; alignment reuses the scored
    windows only when the file is too short for both. `verb` says in the short-file note what uses them."""
    import torch

    if tokenizer is None:
        raise invalid("data", f"{source}: the teacher has no tokenizer to read text with; use `data` self")
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = next((t for t in (getattr(tokenizer, "pad_token_id", None), eos) if t is not None), 0)
    need = n_score + n_align
    rows, lengths, images, replies, stream, read = [], [], [], [], [], 0
    notes: dict = {}
    text = Path(source).suffix.lower() == ".txt"
    for doc in documents(source, tokenizer, vision):
        if len(rows) >= need:
            break
        if isinstance(doc, ImageSample):
            window = _image_window(doc, tokenizer, vision, seq_len, eos, notes)
            if window is not None:
                rows.append(window[0] + [pad] * (seq_len - len(window[0])))
                lengths.append(len(window[0]))
                images.append(window[1])
                replies.append(window[2])
            continue
        piece = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        if eos is not None and not text:  # a .txt file is one document, read in blocks
            piece.append(eos)
        read += len(piece)
        stream += piece
        while len(stream) >= seq_len:
            rows.append(stream[:seq_len])
            lengths.append(seq_len)
            images.append(None)
            replies.append(None)
            stream = stream[seq_len:]
    if not rows:
        if notes.get("image_rows_skipped"):
            raise invalid("data", f"{source}: no window: the images of every sample run past `seq_len` {seq_len}")
        if not read:
            raise invalid("data", f"{source}: no text in the file")
        raise invalid("data", f"{source}: {read} tokens, fewer than one `seq_len` window of {seq_len}")
    windows = Windows(torch.tensor(rows[:need], dtype=torch.long), lengths[:need], images[:need], replies[:need])
    if len(windows) < n_score:
        logger.info(f"note: {source} gives {len(windows)} windows ({sum(windows.lengths)} tokens), fewer than the "
                    f"{n_score} asked; {verb} all of them")
    if stream and len(rows) < need:  # the file ran out with a last piece of text shorter than a window
        notes["text_tokens_left_out"] = len(stream)
        logger.info(f"note: {source}: its last {len(stream)} text tokens fill less than one --seq-len window of "
                    f"{seq_len} and are left out")
    score = windows[:n_score]
    align = windows[len(score): len(score) + n_align]
    if len(align) == 0:
        align, notes["align_data"] = score[:n_align], "shared with the scored windows (the file is too short)"
    if any(im is not None for im in score.images):
        notes["image_windows"] = sum(im is not None for im in score.images)
    return score, align, notes


def _image_window(sample: ImageSample, tokenizer, vision: Vision, seq_len: int, eos, notes: dict):
    """(token ids, image inputs, where its last reply starts or None) of one image sample, its text after the last
    image cut to `seq_len` (a reply that starts past the cut: None); None (and a note) when its images themselves do
    not fit."""
    ids, inputs = image_tokens(sample, tokenizer, vision)
    ids = ids + ([] if eos is None else [eos])
    last = max(i for i, t in enumerate(ids) if t == vision.image_token_id)
    if last >= seq_len:
        notes["image_rows_skipped"] = notes.get("image_rows_skipped", 0) + 1
        logger.info(f"note: {sample.where}: skipped: its images end at token {last + 1}, past --seq-len "
                    f"{seq_len}")
        return None
    if len(ids) > seq_len:
        notes["image_rows_cut"] = notes.get("image_rows_cut", 0) + 1
    reply = reply_start(sample, ids, tokenizer, vision)
    if reply is not None and reply >= seq_len:  # the question fits, not the room for an answer
        notes["replies_past_seq_len"] = notes.get("replies_past_seq_len", 0) + 1
        reply = None
    return ids[:seq_len], inputs, reply


def shared_samples(model, n: int, seq_len: int, seed: int, world: int, every_rank: bool = False):
    """`sample_from_teacher`'s `n` sequences, the same on every process: rank 0 samples and sends them to the
    others, or with `every_rank` (a sharded teacher, whose forward is collective) every process samples the same ones
    in step (returned on the host)."""
    if every_rank:
        return sample_from_teacher(model, n, seq_len, seed).cpu()
    sampled = sample_from_teacher(model, n, seq_len, seed) if distributed.rank() == 0 else None
    return distributed.broadcast(sampled, world)


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
    # inference mode: a quarter faster than no_grad per decoding step (tiny, CPU), the same samples; FSDP2's shards
    # cannot run in it (their gathered weights would be inference tensors it later updates in place)
    sharded = any(distributed.is_sharded(p) for p in model.parameters())
    with torch.no_grad() if sharded else torch.inference_mode():
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
                step = model(input_ids=nxt, cache=step.cache, use_cache=True)
            out.append(seq.cpu())
    return torch.cat(out)  # outside inference mode: an ordinary tensor, which training may save for backward
