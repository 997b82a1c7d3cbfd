"""Train the embedded teacher `tiny` (`python -m mosaic_search.assets.train_tiny --out mosaic_search/assets/tiny`).

A byte-level Qwen3 on the installed Python stdlib (files split into train and held-out by a hash of their path), plus
key-value recall ("Q47;" defined early, "?Q" asked later, answer "47") at distances up to the sequence length, so that
some layers must attend far back and others need not. Sequences start short (few distractors), which lets recall
emerge within a CPU budget. Nothing is downloaded."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte -> printable character map

from ..artifacts.files import atomic_dir

SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2; byte b is id b + 3
OFFSET = len(SPECIALS)
KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
STAGES = ((64, 0.1), (128, 0.15), (256, 0.25), (512, 0.5))  # (sequence length, share of steps): short first
SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
             head_dim=32, max_position_embeddings=4096)
HELDOUT_BYTES = 256_000
SHORT, LONG = 128, 256  # recall distance buckets: < 128 (inside the smallest SWA window), 128-255, >= 256


def build_tokenizer():
    """A byte-level tokenizer (byte b -> id b + 3, no merges) as a transformers fast tokenizer."""
    vocab = {s: i for i, s in enumerate(SPECIALS)} | {c: b + OFFSET for b, c in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   model_max_length=SHAPE["max_position_embeddings"],
                                   clean_up_tokenization_spaces=False)


def encode(data: bytes) -> torch.Tensor:
    """Token ids of raw bytes: what the tokenizer gives for their UTF-8 text, without a tokenizer pass."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long() + OFFSET


def stdlib_split() -> tuple[bytes, bytes]:
    """(train, held-out) text: the UTF-8 stdlib .py files outside tests and site-packages, 1 in 20 held out by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, held = [], []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if {"site-packages", "test", "tests", "idle_test"} & set(rel.parts):
            continue
        if (data := f.read_bytes()) == data.decode("utf-8", "replace").encode():  # UTF-8 files only
            (held if hashlib.sha256(rel.as_posix().encode()).digest()[0] % 20 == 0 else train).append(data)
    return b"\n".join(train), b"\n".join(held)


def recall_sequence(rng: random.Random, filler: bytes, length: int, pairs: int) -> tuple[bytes, list[dict]]:
    """`length` bytes: `pairs` definitions "Q47;" (key letter, two-digit value) on the first line, then stdlib text
    with one query line "?Q47;" per key at random line starts; returns the bytes and, per query, where its answer
    starts and how many tokens back its definition is."""
    keys = rng.sample(KEY_CHARS, pairs)
    vals = [f"{rng.randrange(100):02d}" for _ in keys]
    head = "".join(f"{k}{v};" for k, v in zip(keys, vals)).encode() + b"\n"
    room = length - len(head) - pairs * len(b"?Q47;\n")
    start = filler.index(b"\n", rng.randrange(len(filler) - 2 * room)) + 1  # whole lines keep the text valid UTF-8
    body = filler[start:start + room]
    cuts = sorted(rng.choice([0] + [i + 1 for i in range(room) if body[i] == 10]) for _ in keys)
    order = rng.sample(range(pairs), pairs)
    out, probes, prev = bytearray(head), [], 0
    for cut, i in zip(cuts, order):
        out += body[prev:cut] + f"?{keys[i]}".encode()
        answer_at = len(out)
        probes.append(dict(answer_at=answer_at, distance=answer_at - 1 - 4 * i, answer=vals[i]))  # key to key
        out += vals[i].encode() + b";\n"
        prev = cut
    out += body[prev:]
    return bytes(out), probes


def training_row(rng: random.Random, kind: str, text: bytes, length: int, answer_weight: float):
    """One training sequence of `length` bytes and the loss weight of each predicted byte (0 where it is random)."""
    weight = torch.ones(length - 1)
    if kind == "recall":
        pairs = min(16, length // 24)
        data, probes = recall_sequence(rng, text, length, pairs)
        weight[:4 * pairs] = 0  # the definitions themselves are random
        for p in probes:
            weight[p["answer_at"] - 2] = 0  # so is which key is asked
            weight[p["answer_at"] - 1:p["answer_at"] + 1] = answer_weight
    else:
        start = rng.randrange(len(text) - length)
        data = text[start:start + length]
    return encode(data), weight


def bucket(distance: int) -> str:
    """Name of a recall distance bucket."""
    return f"<{SHORT}" if distance < SHORT else f"{SHORT}-{LONG - 1}" if distance < LONG else f">={LONG}"


@torch.no_grad()
def recall_accuracy(model, rng: random.Random, filler: bytes, n_seqs: int, seq_len: int, pairs: int) -> dict:
    """Exact-match recall (both answer bytes argmax-correct, i.e. greedy decoding) on fresh sequences, by distance."""
    hits: dict[str, list[bool]] = {bucket(0): [], bucket(SHORT): [], bucket(LONG): []}
    for _ in range(n_seqs):
        data, probes = recall_sequence(rng, filler, seq_len, pairs)
        ids = encode(data)
        pred = model(input_ids=ids[None]).logits[0].argmax(-1)
        for p in probes:
            a = p["answer_at"]
            hits[bucket(p["distance"])].append(bool((pred[a - 1:a + 1] == ids[a:a + 2]).all()))
    return {k: dict(accuracy=round(sum(v) / len(v), 4), n=len(v)) for k, v in hits.items() if v}


@torch.no_grad()
def heldout_loss(model, ids, seq_len: int, batch: int = 8) -> float:
    """Mean next-byte cross-entropy (nats) over consecutive `seq_len` windows of held-out text."""
    n = (len(ids) - 1) // seq_len
    x, y = ids[:n * seq_len].view(n, seq_len), ids[1:n * seq_len + 1].view(n, seq_len)
    total = sum(torch.nn.functional.cross_entropy(model(input_ids=x[i:i + batch]).logits.flatten(0, 1),
                                                  y[i:i + batch].flatten(), reduction="sum").item()
                for i in range(0, n, batch))
    return total / (n * seq_len)


def write_probes(path: Path, rng: random.Random, filler: bytes, seq_len: int, pairs: int, per_bucket: int) -> None:
    """A fixed set of recall probes (prompt ending in "?Q", answer, distance), balanced over distance buckets."""
    want, rows = {b: per_bucket for b in (bucket(0), bucket(SHORT), bucket(LONG))}, []
    while any(want.values()):
        data, probes = recall_sequence(rng, filler, seq_len, pairs)
        p = rng.choice(probes)
        if want[bucket(p["distance"])]:
            want[bucket(p["distance"])] -= 1
            rows.append(dict(prompt=data[:p["answer_at"]].decode(), answer=p["answer"], distance=p["distance"]))
    rows.sort(key=lambda r: r["distance"])
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def write_calibration(path: Path, rng: random.Random, held: bytes, records: int = 32, half: int = 512) -> None:
    """The scorer's default data: records of 2 * `half` bytes, a fresh recall sequence then plain text, both from
    the first half of the held-out text (quality evaluations read its end). Without recall in the calibration
    data a swap that breaks long-range recall costs almost nothing in KL on text alone. ASCII only, so a record
    is exactly 2 * `half` tokens and `--seq-len 1024` windows line up with records."""
    pool = held[: len(held) // 2]
    out = bytearray()
    while len(out) < records * 2 * half:
        data, _ = recall_sequence(rng, pool, half, 16)
        start = rng.randrange(len(pool) - half)
        text = pool[start:start + half]
        if data.isascii() and text.isascii():
            out += data + text
    path.write_bytes(bytes(out))


def main(argv=None) -> None:
    """Build the data, train, evaluate, and write the model directory with its model card."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "tiny"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-tokens", type=int, default=2048, help="tokens per step (batch = this / sequence length)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--recall-share", type=float, default=0.5, help="share of sequences that are recall tasks")
    ap.add_argument("--answer-weight", type=float, default=5.0, help="loss weight of recall answer bytes")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    rng, t0 = random.Random(args.seed), time.time()
    train_text, held_text = stdlib_split()
    held_text = held_text[:HELDOUT_BYTES].decode("utf-8", errors="ignore").encode()  # cut on a character boundary
    print(f"data: {len(train_text) / 1e6:.1f} MB train, {len(held_text) / 1e3:.0f} KB held out", file=sys.stderr)
    tokenizer = build_tokenizer()
    assert tokenizer(text := "x = 'héllo ✓ 🐍'\n")["input_ids"] == encode(text.encode()).tolist()
    config = Qwen3Config(vocab_size=256 + OFFSET, **SHAPE, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = Qwen3ForCausalLM(config)
    groups = [{"params": [p for p in model.parameters() if (p.dim() >= 2) == decay], "weight_decay": 0.1 * decay}
              for decay in (True, False)]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))

    def lr_at(step, warmup=max(1, args.steps // 50)):  # linear warm-up, then cosine down to 10%
        progress = max(0, step - warmup) / max(1, args.steps - warmup)
        return args.lr * min(1, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    schedule = ([n for n, share in STAGES for _ in range(round(share * args.steps))] + [STAGES[-1][0]] * args.steps)
    schedule = schedule[:args.steps]
    T, mix, log, losses = STAGES[-1][0], (1 - args.recall_share, args.recall_share), [], []
    model.train()
    for step, length in enumerate(schedule):
        kinds = rng.choices(("text", "recall"), mix, k=max(1, args.batch_tokens // length))
        rows = [training_row(rng, kind, train_text, length + 1, args.answer_weight) for kind in kinds]
        batch = torch.stack([ids for ids, _ in rows])
        weight = torch.stack([w for _, w in rows]).flatten()
        opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = lr_at(step)
        logits = model(input_ids=batch[:, :-1]).logits
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        loss = (ce * weight).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(ce.view(len(rows), -1)[[k == "text" for k in kinds]].mean().item() if "text" in kinds else None)
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            recent = [x for x in losses[-100:] if x is not None]
            quick = recall_accuracy(model.eval(), random.Random(step), held_text, 4, T, 16)
            log.append(dict(step=step + 1, seq_len=length, text_loss=round(sum(recent) / len(recent), 4),
                            recall={k: v["accuracy"] for k, v in quick.items()}, seconds=round(time.time() - t0)))
            print(json.dumps(log[-1]), file=sys.stderr, flush=True)
            model.train()
    eval_rng = random.Random(args.seed + 1)  # fresh keys, values and filler positions, from held-out text
    held = heldout_loss(model.eval(), encode(held_text), T)
    recall = recall_accuracy(model, eval_rng, held_text, 64, T, 16)
    print(f"held-out loss {held:.4f} nats/byte; recall {recall}", file=sys.stderr)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    metrics = dict(params=sum(p.numel() for p in model.parameters()), steps=args.steps, log=log, args=vars(args),
                   train_seconds=log[-1]["seconds"], heldout_loss=round(held, 4), final_train_loss=log[-1]["text_loss"],
                   recall=recall)
    with atomic_dir(args.out) as out:  # the shipped teacher is replaced only once the new one is whole
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "heldout.txt").write_bytes(held_text)
        write_probes(out / "recall_eval.jsonl", random.Random(args.seed + 2), held_text, T, 16, per_bucket=50)
        write_calibration(out / "calibration.txt", random.Random(args.seed + 3), held_text, half=T)
        (out / "README.md").write_text(model_card(config, metrics, argv if argv is not None else sys.argv[1:]))
    print(f"wrote {args.out}", file=sys.stderr)


def model_card(config, m: dict, argv: list[str]) -> str:
    """The model card: architecture, data, training, results and the command that reproduces it."""
    a = m["args"]
    rows = "\n".join(f"| {k} | {v['accuracy']:.1%} | {v['n']} |" for k, v in m["recall"].items())
    curve = "\n".join(f"| {r['step']} | {r['seq_len']} | {r['text_loss']:.3f} | "
                      f"{' / '.join(f'{x:.0%}' for x in r['recall'].values())} | {r['seconds']} |" for r in m["log"])
    return f"""# tiny: the embedded teacher of mosaic

A byte-level Qwen3 causal LM ({m['params'] / 1e6:.2f} M parameters, float32) trained from scratch on CPU by
`mosaic_search/assets/train_tiny.py`, with nothing downloaded, so that every mosaic stage runs offline on a real
teacher whose layers differ in what they need: its recall task needs attention further back than 128 tokens.

**Architecture.** `Qwen3ForCausalLM`, {config.num_hidden_layers} layers, hidden {config.hidden_size}, MLP
{config.intermediate_size}, {config.num_attention_heads} query heads and {config.num_key_value_heads} KV heads (GQA) of
dim {config.head_dim}, RoPE theta 10000, tied embeddings. Vocabulary {config.vocab_size}: byte b is id b + 3; 0 `<pad>`,
1 `<bos>`, 2 `<eos>` (the tokenizer adds none). `max_position_embeddings` {config.max_position_embeddings} sets
mosaic's default SWA windows (128, 512), but training never went past {STAGES[-1][0]} tokens.

**Data, built on the machine.** Text ({1 - a['recall_share']:.0%} of sequences): the installed Python
{platform.python_version()} standard library's `.py` files (UTF-8, not under `test/`, `tests/`, `idle_test/`,
`site-packages`); a file is held out when sha256(relative path)[0] % 20 == 0; `heldout.txt` is the first
{HELDOUT_BYTES // 1000} KB of held-out files. Recall ({a['recall_share']:.0%}): up to 16 definitions `Q47;` (distinct
key letters, two-digit values) on the first line, then training text with one query line `?Q47;` per key at random
line starts; the loss skips the random definitions and asked keys and weighs answer digits {a['answer_weight']:g}x.
`recall_eval.jsonl`: 150 fixed probes on held-out text (`prompt` ending in `?Q`, `answer`, `distance` in tokens from
the asked key back to its definition), 50 per distance bucket.
`calibration.txt` (`mosaic score`'s default data for `tiny`): 32 records of {2 * STAGES[-1][0]} bytes, each a fresh {STAGES[-1][0]}-byte
recall sequence then {STAGES[-1][0]} bytes of text, from the first half of `heldout.txt` (seed + 3).

**Training.** Sequence length by stage (share of steps): {", ".join(f"{n} ({f:.0%})" for n, f in STAGES)},
{a['batch_tokens']} tokens per step; short sequences first, because at 512 tokens from the start recall stayed at chance
for as long as we could afford; AdamW (0.9, 0.95), weight decay 0.1 on matrices, peak lr {a['lr']:g},
{max(1, a['steps'] // 50)} warm-up steps, cosine to 10%, clip 1.0; {m['steps']} steps, seed {a['seed']};
{m['train_seconds']} s wall on a {platform.machine()} CPU with {torch.get_num_threads()} threads shared with other jobs
(torch {torch.__version__}). Text loss is the mean over the last 100 steps; recall is on 4 fresh 512-token sequences.

| step | seq len | text loss | recall <128 / 128-255 / >=256 | seconds |
|---|---|---|---|---|
{curve}

**Results.** Final training text loss {m['final_train_loss']:.3f} nats/byte. Held-out loss on `heldout.txt` (512-token
windows): **{m['heldout_loss']:.3f} nats/byte** ({m['heldout_loss'] / math.log(2):.2f} bits/byte; uniform is
{math.log(256):.3f}). Recall, exact match of both digits (greedy), 64 fresh 512-token sequences of 16 keys over
held-out text; chance is 1% (two digits) or 6% (one of the 16 values in the prompt):

| distance (tokens) | accuracy | queries |
|---|---|---|
{rows}

**Reproduce** (the data depend on the installed Python's standard library):

```
python -m mosaic_search.assets.train_tiny {" ".join(argv)}
```
"""


if __name__ == "__main__":
    main()
