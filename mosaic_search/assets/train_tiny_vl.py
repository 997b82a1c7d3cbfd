"""Train the embedded VLM teacher `tiny-vl` (`python -m mosaic_search.assets.train_tiny_vl`).

A Qwen3-VL (transformers' `qwen3_vl`: vision tower, patch merger, DeepStack, interleaved mRoPE) whose language model
starts from `tiny`'s weights. Its images are short strings rendered with Pillow's built-in font, and its questions
are answered only by reading them (the whole string, or one character of it). Conversations of 1 to MAX_TURNS image
turns are mixed with tiny's own text and key-value recall so that it stays the same language model. Nothing is
downloaded: the tokenizer is tiny's byte-level one with Qwen's chat and vision tokens added."""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import resource
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from ..artifacts.files import atomic_dir
from . import TINY_DIR
from .train_tiny import HELDOUT_BYTES, OFFSET, build_tokenizer, encode, heldout_loss, recall_accuracy, stdlib_split
from .train_tiny import training_row

ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I or O: in a small sans font they read as 1 and 0
LENGTHS = (3, 4, 5)
PATCH, MERGE = 8, 2
CELL = PATCH * MERGE  # pixels: one character per cell, one cell per image token (2 x 2 patches merged)
WIDTH, HEIGHT = CELL * LENGTHS[-1], CELL  # 10 x 2 patches of 8, merged 2 x 2 into 5 image tokens
FONT_SIZES = (10, 11, 12, 13)  # glyphs at most 13 pixels wide and 10 high: each fits its cell with room to move
MAX_TURNS = 6  # a calibration conversation of this many turns fits a 512-token window
ORDINALS = ("first", "second", "third", "fourth", "fifth")
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
VISION = dict(depth=3, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=PATCH, spatial_merge_size=MERGE,
              temporal_patch_size=2, in_channels=3, num_position_embeddings=256, deepstack_visual_indexes=[0, 1])
# Qwen's chat layout: a turn is <|im_start|>role\n...<|im_end|>\n; an image,
# <|vision_start|><|image_pad|><|vision_end|>
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
EVAL_IMAGES, CALIBRATION_ROWS = 256, 16


def build_processor():
    """tiny's byte-level tokenizer with Qwen's chat and vision tokens (ids 259-264) and the chat template, and a
    Qwen2-VL image processor for PATCH-pixel patches merged MERGE x MERGE, at most 128 x 128 pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(CHAT_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    images = Qwen2VLImageProcessorPil(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2,
                                      size={"shortest_edge": (PATCH * MERGE) ** 2, "longest_edge": 128 * 128},
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return tokenizer, images


def render(rng: random.Random, text: str):
    """`text` on a WIDTH x HEIGHT image, one character per CELL-pixel cell from the left, each in Pillow's built-in
    font at its own random size and place inside its cell, grey ink on grey paper."""
    from PIL import Image, ImageDraw, ImageFont

    paper, ink = rng.randint(170, 255), rng.randint(0, 90)
    image = Image.new("RGB", (WIDTH, HEIGHT), (paper,) * 3)
    draw = ImageDraw.Draw(image)
    for k, char in enumerate(text):
        font = ImageFont.load_default(size=rng.choice(FONT_SIZES))
        left, top, right, bottom = font.getbbox(char)
        assert right - left < CELL and bottom - top < CELL, char
        x = k * CELL + rng.randint(0, CELL - (right - left)) - left
        draw.text((x, rng.randint(0, CELL - (bottom - top)) - top), char, font=font, fill=(ink,) * 3)
    return image


def question(rng: random.Random, text: str) -> tuple[str, str, str]:
    """(kind, question, answer) about a rendered `text`: the whole of it, or one of its characters."""
    if rng.random() < 0.5:
        return "read", "What is written?", text
    k = rng.randrange(len(text))
    return "character", f"What is the {ORDINALS[k]} character?", text[k]


def conversation(rng: random.Random, turns: int) -> tuple[list, list, list]:
    """(messages, images, (kind, answer) per turn) of `turns` user turns, each an image and a question, and the
    assistant's answers."""
    messages, images, answers = [], [], []
    for _ in range(turns):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.choice(LENGTHS)))
        images.append(render(rng, text))
        kind, q, a = question(rng, text)
        messages += [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                     {"role": "assistant", "content": a}]
        answers.append((kind, a))
    return messages, images, answers


class Chats:
    """Token ids, loss weights and image inputs of image conversations, as the model is trained on them."""

    def __init__(self, tokenizer, images):
        self.tok, self.images = tokenizer, images
        self.image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.reply = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        self.per_image = (HEIGHT // PATCH) * (WIDTH // PATCH) // MERGE ** 2

    def ids(self, messages) -> tuple[list, list]:
        """Token ids with each image token repeated once per merged patch, and 1.0 on the tokens of each assistant
        reply (its answer and <|im_end|>), 0.0 elsewhere."""
        text = self.tok.apply_chat_template(messages, tokenize=False)
        ids = []
        for t in self.tok(text, add_special_tokens=False)["input_ids"]:
            ids += [t] * self.per_image if t == self.image_id else [t]
        weight, n = [0.0] * len(ids), len(self.reply)
        for i in range(len(ids) - n):
            if ids[i:i + n] == self.reply:
                j = i + n
                while ids[j] != self.end:
                    weight[j], j = 1.0, j + 1
                weight[j] = 1.0
        return ids, weight

    def batch(self, convs) -> tuple[dict, torch.Tensor]:
        """Model inputs of conversations padded on the right to one length, and the weight of each next token."""
        rows = [self.ids(m) for m, _, _ in convs]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        weight = torch.zeros(len(rows), width)
        for r, (i, w) in enumerate(rows):
            ids[r, :len(i)], weight[r, :len(w)] = torch.tensor(i), torch.tensor(w)
        pics = self.images(images=[im for _, ims, _ in convs for im in ims], return_tensors="pt")
        inputs = dict(input_ids=ids, pixel_values=pics["pixel_values"], image_grid_thw=pics["image_grid_thw"],
                      mm_token_type_ids=(ids == self.image_id).int())
        return inputs, weight[:, 1:]


def vl_config(tokenizer) -> Qwen3VLConfig:
    """tiny-vl's config: tiny's language model dimensions with interleaved mRoPE, the vision tower of VISION, and
    the token ids of `tokenizer` (build_processor's)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in CHAT_TOKENS}
    assert min(ids.values()) == 256 + OFFSET, ids  # the byte ids are tiny's, so its weights carry over
    tiny_cfg = json.loads((TINY_DIR / "config.json").read_text())
    text = {k: tiny_cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                      "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps")}
    half = text["head_dim"] // 2  # mRoPE splits the rotary frequencies between time, height and width
    return Qwen3VLConfig(
        text_config=dict(text, vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                                          "mrope_section": [half // 2, half // 4, half // 4]}),
        vision_config=dict(VISION, out_hidden_size=text["hidden_size"]), tie_word_embeddings=True,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def from_tiny(model, tiny_dir: Path) -> None:
    """Copy tiny's decoder, norm and embeddings into the language model; the new tokens' embeddings stay random."""
    state = load_file(str(tiny_dir / "model.safetensors"))
    lm = model.model.language_model
    with torch.no_grad():
        for name, value in state.items():
            if name == "model.embed_tokens.weight":
                lm.embed_tokens.weight[:len(value)] = value
            elif name.startswith("model."):
                lm.get_parameter(name[len("model."):]).copy_(value)


def weighted_ce(model, inputs: dict, weight: torch.Tensor) -> torch.Tensor:
    """The mean next-token cross-entropy of a batch, each predicted token weighted by `weight` [b, T-1]."""
    logits = model(**inputs, use_cache=False).logits[:, :-1]
    targets = inputs["input_ids"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return (ce * weight.flatten()).sum() / weight.sum()


def write_image_set(out: Path, rng: random.Random, n: int, turns: int, name: str, images_dir: str = "images") -> list:
    """`n` conversations of `turns` image turns written as chat rows (images as PNG files beside them): for one turn,
    a question row {"messages": [user turn], "answer", "kind"}; otherwise a calibration row with the assistant's
    answers."""
    (out / images_dir).mkdir(exist_ok=True)
    rows = []
    for r in range(n):
        messages, images, answers = conversation(rng, turns)
        k = 0
        for m in messages:
            if m["role"] == "user":
                path = f"{images_dir}/{name}-{r:03d}-{k}.png"
                images[k].save(out / path, optimize=True)
                m["content"][0] = {"type": "image", "image": path}
                k += 1
        rows.append({"messages": messages[:1], "answer": answers[0][1], "kind": answers[0][0]} if turns == 1
                    else {"messages": messages})
    return rows


def cosine(step: int, steps: int, warmup: int) -> float:
    """The lr scale at `step`: linear warm-up over `warmup` steps, then cosine down to 10%."""
    progress = max(0, step - warmup) / max(1, steps - warmup)
    return min(1, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def teach_vision(model, image_processor, rng: random.Random, args, log: list, clock: tuple) -> None:
    """Stage 1: the vision tower and merger learn to turn each cell into the language model's input embedding of
    its character (a space for an empty cell): squared error to that embedding plus cross-entropy through tiny's
    output layer, the language model frozen. Trained end to end from the start, the image answers stayed at
    guessing level: the language model cannot learn where to look while the image tokens are still noise."""
    lm = model.model.language_model
    table = lm.embed_tokens.weight.detach()
    params = [p for n, p in model.model.visual.named_parameters() if not n.startswith("deepstack")]
    opt = torch.optim.AdamW(params, lr=args.vision_lr, betas=(0.9, 0.95), weight_decay=0.0)
    for step in range(args.vision_steps):
        opt.param_groups[0]["lr"] = args.vision_lr * cosine(step, args.vision_steps, max(1, args.vision_steps // 40))
        texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.choice(LENGTHS))) for _ in range(args.vision_batch)]
        pics = image_processor(images=[render(rng, t) for t in texts], return_tensors="pt")
        target = encode(b"".join(t.ljust(LENGTHS[-1]).encode() for t in texts))
        cells = model.model.visual(pics["pixel_values"], grid_thw=pics["image_grid_thw"]).pooler_output
        logits = model.lm_head(lm.norm(cells))
        loss = torch.nn.functional.cross_entropy(logits, target) + 10 * ((cells - table[target]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step + 1 == args.vision_steps:
            log.append(dict(stage="vision", step=step + 1, loss=round(loss.item(), 4),
                            cell_accuracy=round((logits.argmax(-1) == target).float().mean().item(), 4),
                            seconds=round(time.time() - clock[0]), cpu_seconds=round(time.process_time() - clock[1])))
            print(json.dumps(log[-1]), file=sys.stderr, flush=True)


def main(argv=None) -> None:
    """Build the data, train, evaluate, and write the model directory with its model card."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "tiny-vl"))
    ap.add_argument("--vision-steps", type=int, default=2000, help="stage 1: steps of the vision tower alone")
    ap.add_argument("--vision-batch", type=int, default=32, help="stage 1: images per step")
    ap.add_argument("--vision-lr", type=float, default=3e-3, help="stage 1: peak lr of the vision tower and merger")
    ap.add_argument("--steps", type=int, default=800, help="stage 2: steps of the language model on conversations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chats", type=int, default=8, help="image conversations per step (1 to MAX_TURNS turns each)")
    ap.add_argument("--text-rows", type=int, default=2, help="512-token text or recall rows per step")
    ap.add_argument("--lr", type=float, default=1e-3, help="stage 2: peak lr of the DeepStack mergers")
    ap.add_argument("--lm-lr", type=float, default=1e-3, help="stage 2: peak lr of the language model (tiny's weights)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (on the shared 2-core machine, 2 threads "
                                                          "spent ten times the CPU time of 1 per step)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng, t0, cpu0 = random.Random(args.seed), time.time(), time.process_time()
    train_text, held_text = stdlib_split()
    held_text = held_text[:HELDOUT_BYTES].decode("utf-8", errors="ignore").encode()
    tokenizer, image_processor = build_processor()
    chats = Chats(tokenizer, image_processor)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in CHAT_TOKENS}
    config = vl_config(tokenizer)
    model = Qwen3VLForConditionalGeneration(config)
    from_tiny(model, TINY_DIR)
    visual = model.model.visual
    with torch.no_grad():  # DeepStack starts by adding nothing, so the aligned image tokens arrive undisturbed
        for merger in visual.deepstack_merger_list:
            merger.linear_fc2.weight.zero_()
            merger.linear_fc2.bias.zero_()
    log: list = []
    model.train()
    teach_vision(model, image_processor, rng, args, log, (t0, cpu0))
    # Stage 2: the vision tower stays as stage 1 left it (trained along, the answers barely moved: the card's probes)
    for name, p in visual.named_parameters():
        p.requires_grad_(name.startswith("deepstack"))
    lm = set(model.model.language_model.parameters())
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and (p in lm) == is_lm
                          and (p.dim() >= 2) == decay],
               "weight_decay": 0.1 * decay, "peak": args.lm_lr if is_lm else args.lr}
              for is_lm in (True, False) for decay in (True, False)]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
    warmup, seq_len = max(1, args.steps // 20), 512
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = g["peak"] * cosine(step, args.steps, warmup)
        rows = [training_row(rng, kind, train_text, seq_len + 1, 5.0)
                for kind in rng.choices(("text", "recall"), k=args.text_rows)]
        batch = torch.stack([i for i, _ in rows])
        text_loss = weighted_ce(model, {"input_ids": batch}, torch.stack([w for _, w in rows]))
        inputs, weight = chats.batch([conversation(rng, rng.randint(1, MAX_TURNS)) for _ in range(args.chats)])
        image_loss = weighted_ce(model, inputs, weight)
        opt.zero_grad(set_to_none=True)
        (text_loss + image_loss).backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        if step % 50 == 0 or step + 1 == args.steps:
            log.append(dict(stage="chat", step=step + 1, text_loss=round(text_loss.item(), 4),
                            image_loss=round(image_loss.item(), 4),
                            seconds=round(time.time() - t0), cpu_seconds=round(time.process_time() - cpu0)))
            print(json.dumps(log[-1]), file=sys.stderr, flush=True)
    train_wall, train_cpu = time.time() - t0, time.process_time() - cpu0
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[ids["<|im_end|>"], 2], pad_token_id=0)
    with atomic_dir(args.out) as out:  # the shipped teacher is replaced only once the new one is whole
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        image_processor.save_pretrained(out)
        rows = write_image_set(out, random.Random(args.seed + 1), EVAL_IMAGES, 1, "eval")
        (out / "image_eval.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        write_calibration(out, random.Random(args.seed + 3), held_text)
        metrics = evaluate(model, out, held_text, args)
        metrics.update(train_seconds=round(train_wall), train_cpu_seconds=round(train_cpu), log=log, args=vars(args),
                       params=sum(p.numel() for p in model.parameters()),
                       vision_params=sum(p.numel() for p in model.model.visual.parameters()),
                       load=[round(x, 2) for x in __import__("os").getloadavg()])
        (out / "README.md").write_text(model_card(config, metrics, argv if argv is not None else sys.argv[1:]))
    print(json.dumps({k: v for k, v in metrics.items() if k != "log"}), file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)


def write_calibration(out: Path, rng: random.Random, held: bytes) -> None:
    """`mosaic score`'s default data for tiny-vl: CALIBRATION_ROWS conversations of MAX_TURNS image turns, each
    followed by a text row (a 512-byte recall sequence and 512 bytes of text from the first half of tiny's
    held-out text, as tiny's calibration.txt), so that scored windows alternate image and text."""
    from .train_tiny import recall_sequence

    chats = write_image_set(out, rng, CALIBRATION_ROWS, MAX_TURNS, "calibration")
    pool, lines = held[: len(held) // 2], []
    for chat in chats:
        while True:
            data, _ = recall_sequence(rng, pool, 512, 16)
            start = rng.randrange(len(pool) - 512)
            if data.isascii() and pool[start:start + 512].isascii():
                break
        lines += [json.dumps(chat, sort_keys=True), json.dumps({"text": (data + pool[start:start + 512]).decode()})]
    (out / "calibration.jsonl").write_text("\n".join(lines) + "\n")


def evaluate(model, out: Path, held_text: bytes, args) -> dict:
    """Held-out image-question accuracy (greedy, exact match; also with every image blanked: what guessing from the
    question alone scores), text held-out loss and recall next to tiny's on the same text."""
    from transformers import AutoModelForCausalLM

    from ..hf.vision import Vision
    from ..quality.questions import answer_accuracy, load_questions

    tokenizer = build_processor()[0]
    questions = load_questions(out / "image_eval.jsonl", tokenizer, Vision(str(out), model.config.image_token_id))
    accuracy = answer_accuracy(model, questions, tokenizer)
    blank = answer_accuracy(model, questions, tokenizer, blank=True)
    tiny = AutoModelForCausalLM.from_pretrained(TINY_DIR).eval()
    held = encode(held_text)
    losses = {name: heldout_loss(m, held, 512) for name, m in (("tiny-vl", model), ("tiny", tiny))}
    recall = recall_accuracy(model, random.Random(args.seed + 1), held_text, 64, 512, 16)
    return dict(image_accuracy=accuracy, blank_image_accuracy=blank, heldout_loss=losses, recall=recall,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def model_card(config, m: dict, argv: list[str]) -> str:
    """The model card: architecture, data, training, results and the command that reproduces it."""
    a, v, t = m["args"], config.vision_config, config.text_config
    acc, blank, loss = m["image_accuracy"], m["blank_image_accuracy"], m["heldout_loss"]
    vision = "\n".join(f"| {r['step']} | {r['loss']:.3f} | {r['cell_accuracy']:.1%} | {r['seconds']} | "
                       f"{r['cpu_seconds']} |" for r in m["log"] if r["stage"] == "vision")
    chat = "\n".join(f"| {r['step']} | {r['text_loss']:.3f} | {r['image_loss']:.3f} | {r['seconds']} | "
                     f"{r['cpu_seconds']} |" for r in m["log"] if r["stage"] == "chat")
    rest = [x for i, x in enumerate(argv) if x != "--out" and (i == 0 or argv[i - 1] != "--out")]
    by_kind = " / ".join(f"{k} {x['accuracy']:.1%} of {x['n']}" for k, x in acc["by_question"].items())
    recall = " / ".join(f"{k}: {x['accuracy']:.0%}" for k, x in m["recall"].items())
    return f"""# tiny-vl: the embedded vision-language teacher of mosaic

A Qwen3-VL ({m['params'] / 1e6:.2f} M parameters, {m['vision_params'] / 1e6:.2f} M of them in the vision tower,
float32) trained on CPU by `mosaic_search/assets/train_tiny_vl.py` from `tiny`'s weights, with nothing downloaded, so
that mosaic measures what a plan keeps of what a VLM *sees*: its questions are answered only by reading the image.

**Architecture.** `Qwen3VLForConditionalGeneration` (transformers' `qwen3_vl`). Language model: `tiny`'s
({t.num_hidden_layers} layers, hidden {t.hidden_size}, {t.num_attention_heads} query and {t.num_key_value_heads} KV
heads of dim {t.head_dim}) with interleaved mRoPE, sections {t.rope_parameters['mrope_section']} (on text alone it
rotates exactly as tiny's RoPE). Vision tower: {v.depth} blocks, hidden {v.hidden_size}, {v.num_heads} heads,
{v.patch_size}-pixel patches (temporal patch {v.temporal_patch_size}), a {v.spatial_merge_size}x{v.spatial_merge_size}
patch merger into the language model's width, DeepStack features from vision blocks {v.deepstack_visual_indexes}
added to the hidden states of language layers 0 and 1. Vocabulary {t.vocab_size}: tiny's 259 (byte b is id b + 3)
and {", ".join(f"`{x}`" for x in CHAT_TOKENS)} (ids 259-264). The processor files (tokenizer with Qwen's chat
template, `preprocessor_config.json`: Qwen2-VL image processor, mean and std 0.5,
{(PATCH * MERGE) ** 2} to 16384 pixels)
ship beside the weights; generation stops at `<|im_end|>`.

**Data, built on the machine.** Images: {WIDTH}x{HEIGHT} pixels, a string of {LENGTHS[0]}-{LENGTHS[-1]} characters
from `{ALPHABET}`, one character per {CELL}x{CELL} cell from the left (one image token per cell:
{WIDTH // PATCH * HEIGHT // PATCH // MERGE ** 2} image tokens), each in Pillow's built-in font at its own size
({FONT_SIZES[0]}-{FONT_SIZES[-1]}) and random place inside its cell, grey ink on grey paper. Questions, half each:
"What is written?" (answer: the string) and "What is the <ordinal> character?" (answer: one character). Each
training step of stage 2 has {a['chats']} conversations of 1-{MAX_TURNS} image turns and {a['text_rows']} 512-byte
rows of `tiny`'s training text or recall (below).
`image_eval.jsonl`: {acc['n']} held-out single-turn questions on fresh images (`images/eval-*.png`, seed + 1):
`{{"messages": [user turn with the image], "answer"}}`. `calibration.jsonl` (`mosaic score`'s default data for
`tiny-vl`): {CALIBRATION_ROWS} conversations of {MAX_TURNS} image turns, each followed by a text row (a 512-byte
recall sequence then 512 bytes of text from the first half of tiny's `heldout.txt`, seed + 3).

**Training**, two stages, AdamW (0.9, 0.95), warm-up then cosine to 10%.
1. *Vision* ({a['vision_steps']} steps of {a['vision_batch']} fresh images, peak lr {a['vision_lr']:g}, language model
   frozen): the vision tower and merger learn to turn each cell into the language model's input embedding of its
   character (a space for an empty cell): squared error to that embedding (x10) plus cross-entropy through tiny's
   output layer. Cell accuracy is of the logged step's batch.
2. *Conversations* ({a['steps']} steps, seed {a['seed']}; the vision tower and merger frozen, DeepStack mergers
   starting from zero output at peak lr {a['lr']:g}, the language model at {a['lm_lr']:g}, weight decay 0.1 on
   matrices, {max(1, a['steps'] // 20)} warm-up steps, clip 1.0): each step has {a['chats']} conversations of
   1-{MAX_TURNS} image turns (loss on the assistant's answers and `<|im_end|>`) and {a['text_rows']} 512-byte rows of
   `tiny`'s training text or recall (its data, its loss weights), the two losses summed.

Why two stages (150-step probes of stage 2 alone, 8 conversations per step, no text rows; held-out image-answer loss
at the end): trained end to end from scratch (vision lr 1e-3, language model 3e-4), 2.77, where guessing from the
question alone puts it (the same with blank images); with the vision tower taught first but trained along at 1e-3
(language model 1e-3), 2.63; taught first and frozen (language model 1e-3), 1.30. The language model cannot learn
where to look while the image tokens change under it.

**{m['train_seconds']} s wall, {m['train_cpu_seconds']} s CPU** in all on a {platform.machine()} CPU, {a['threads']}
torch thread, shared with other jobs (load average {' / '.join(map(str, m['load']))} at the end; torch
{torch.__version__}). Losses are of the logged step alone.

| vision step | loss | cell accuracy | seconds | CPU seconds |
|---|---|---|---|---|
{vision}

| conversation step | text loss | image-answer loss | seconds | CPU seconds |
|---|---|---|---|---|
{chat}

**Results** (the model as saved; `mosaic eval tiny-vl` measures the same).
- Image questions, exact match of the greedy answer: **{acc['accuracy']:.1%}** of {acc['n']} ({by_kind}).
- The same questions with every image blanked (plain grey): {blank['accuracy']:.1%}. Chance from the question
  alone: 1/{len(ALPHABET)} = {1 / len(ALPHABET):.1%} for a character, about 1/{len(ALPHABET)}^4 for a whole string.
- Text held-out loss on tiny's `heldout.txt` (512-token windows): **{loss['tiny-vl']:.3f}** nats/byte against tiny's
  {loss['tiny']:.3f} ({loss['tiny-vl'] / loss['tiny'] - 1:+.1%}).
- Recall (64 fresh 512-token sequences of 16 keys over held-out text, exact match): {recall}.

**Reproduce** (the text depends on the installed Python's standard library, the images on Pillow's built-in font):

```
python -m mosaic_search.assets.train_tiny_vl --out mosaic_search/assets/tiny-vl {" ".join(rest)}
```
"""


if __name__ == "__main__":
    main()
