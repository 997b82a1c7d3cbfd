"""`mosaic score` and `mosaic distill` on chat rows with images for a Qwen3-VL teacher: the KL of a swap scored from
the cached hidden states equals the swapped model's own forward on the images (mRoPE and DeepStack included); bad
images; distillation's on-policy samples of image rows and their loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from mosaic_search import builder
from mosaic_search.artifacts.distill_record import load_distill_record
from mosaic_search.artifacts.header import Header, save
from mosaic_search.artifacts.plan import LayerPlan
from mosaic_search.cli import main
from mosaic_search.hf import data, surgery
from mosaic_search.hf.models import end_tokens, load_model, model_from_config
from mosaic_search.operators import Candidate
from mosaic_search.quality import scorer
from mosaic_search.quality.library import library_path, load_library_entry

SEQ = 32
IMAGE, PAD, V_START, V_END = 90, 0, 92, 93
OPS = "gqa,swa:window=4,none,drop,gdn"


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokenizer():
    """Word-level over the tiny vocabulary with Qwen3-VL's vision tokens; its chat template puts one image token
    per image part, as Qwen3-VL's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(90)}
    vocab.update({"<|image_pad|>": IMAGE, "<|video_pad|>": 91, "<|vision_start|>": V_START, "<|vision_end|>": V_END})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0", bos_token="w1", eos_token="w2")
    t.chat_template = (
        "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }} {% else %}"
        "{% for p in m['content'] %}{% if p['type'] == 'image' %}<|vision_start|> <|image_pad|> <|vision_end|> "
        "{% else %}{{ p['text'] }} {% endif %}{% endfor %}{% endif %}{% endfor %}")
    return t


@pytest.fixture(scope="module")
def vl_teacher(tmp_path_factory) -> str:
    """A saved 3-layer random Qwen3-VL whose DeepStack injects after layers 0 and 1, with a tokenizer and a
    Qwen2-VL image processor (4-pixel patches merged 2x2: a 16x16 image is 4 tokens)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    obj = tiny_config("qwen3_vl").to_dict()
    obj["vision_config"]["deepstack_visual_indexes"] = [0, 1]
    path = tmp_path_factory.mktemp("vl") / "teacher"
    model_from_config(type(tiny_config("qwen3_vl")).from_dict(obj)).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                             size={"shortest_edge": 16, "longest_edge": 64 * 64}).save_pretrained(path)
    return str(path)


def _image(path, w, h, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path.name


def _row(*parts):
    content = [{"type": "image", "image": p} if p.endswith(".png") else {"type": "text", "text": p} for p in parts]
    return json.dumps({"messages": [{"role": "user", "content": content}]})


def _words(n, k=0):
    # single-digit words: the tokenizer reloaded for a Qwen model splits digits apart
    return " ".join(f"w{(i * k + i // 3) % 6 + 4}" for i in range(n))


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """A .jsonl of image rows (one short, one with two images, one cut after its image, one too long to fit) and a
    text row long enough for one text window."""
    d = tmp_path_factory.mktemp("images")
    a, b, c, big = (_image(d / f"{n}.png", w, h, s) for s, (n, w, h) in
                    enumerate([("a", 16, 16), ("b", 24, 16), ("c", 16, 24), ("big", 64, 64)]))
    rows = [_row(a, "w5 w6 w7"), _row("w8 w9", b, _words(3), c), _row(c, _words(40, 1)), _row(big, "w5"),
            json.dumps({"text": _words(45, 2)})]
    path = d / "chat.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_image_rows_become_padded_or_cut_windows_and_skip_when_images_do_not_fit(vl_teacher, image_data, capsys):
    from transformers import AutoTokenizer

    vision = data.Vision(vl_teacher, IMAGE)
    score, align, notes = data.tokenize_file(str(image_data), AutoTokenizer.from_pretrained(vl_teacher), 8, 8, SEQ,
                                             vision)
    assert "images end at token 65" in capsys.readouterr().err  # vision start + 64 image tokens
    assert notes["image_rows_skipped"] == 1 and notes["image_rows_cut"] == 1 and notes["image_windows"] == 3
    assert len(score) == 4 and score.lengths == [10, 22, SEQ, SEQ] and score.images[3] is None
    first = [V_START, *[IMAGE] * 4, V_END, 5, 6, 7, 2]  # 16x16: 4x4 patches merged 2x2; then the end of sequence
    assert score.ids[0].tolist() == first + [PAD] * (SEQ - len(first))
    assert score.images[0]["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert score.images[1]["image_grid_thw"].tolist() == [[1, 4, 6], [1, 6, 4]]
    assert score.ids[1, :10].tolist() == [8, 9, V_START, *[IMAGE] * 6, V_END]
    assert score.ids[2, :8].tolist() == [V_START, *[IMAGE] * 6, V_END] and 2 not in score.ids[2].tolist()  # cut
    assert "align_data" in notes and len(align) == 4  # too short for separate alignment windows


def _kl_of_full_forwards(teacher, windows, layer, cand, weights) -> float:
    """Mean KL(teacher || swapped) over every real next token, each window run unpadded through the real models'
    forward (vision tower, mRoPE and DeepStack their own)."""
    models = [load_model(teacher), load_model(teacher)]
    surgery.swap(models[1], layer, cand, weights=weights)
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, length, images in zip(windows.ids, windows.lengths, windows.images):
            ids = ids[None, :length]
            kwargs = {} if images is None else {**images, "mm_token_type_ids": (ids == IMAGE).int()}
            p, q = (torch.log_softmax(m(input_ids=ids, use_cache=False, **kwargs).logits[0, :-1].double(), -1)
                    for m in models)
            total += float((p.exp() * (p - q)).sum())
            n += length - 1
    return total / n


def test_kl_of_image_windows_equals_the_swapped_models_own_forward(vl_teacher, image_data, tmp_path):
    out = tmp_path / "s.json"
    table = scorer.score(vl_teacher, data=str(image_data), ops=OPS, tokens=8 * SEQ, seq_len=SEQ, align_steps=3,
                         out=out)
    assert table.data["image_windows"] == 3 and table.data["tokens"] == 10 + 22 + 2 * SEQ
    assert table.data["image_rows_skipped"] == 1
    windows, _, _ = data.tokenize_file(str(image_data), data.tokenizer_of(vl_teacher), 8, 8, SEQ,
                                       data.Vision(vl_teacher, IMAGE))
    library = library_path(out)
    for layer in range(3):
        for cand in map(Candidate.parse, OPS.split(",")[1:]):
            weights = load_library_entry(library, layer, cand) if cand.spec.aligned else None
            kl = _kl_of_full_forwards(vl_teacher, windows, layer, cand, weights)
            cell = next(e for e in table.entries if e.layer == layer and e.candidate == cand)
            assert cell.kl == pytest.approx(kl, rel=1e-4, abs=1e-7), (layer, str(cand))
            assert kl > 1e-6, (layer, str(cand))


def test_deepstack_and_mrope_change_the_teachers_output(vl_teacher, image_data, monkeypatch):
    """The equality above would catch a recompute that skipped DeepStack or used text positions: both matter here."""
    windows, _, _ = data.tokenize_file(str(image_data), data.tokenizer_of(vl_teacher), 8, 8, SEQ,
                                       data.Vision(vl_teacher, IMAGE))
    model = load_model(vl_teacher)
    ids = windows.ids[1:2, :windows.lengths[1]]  # two images
    inputs = {"input_ids": ids, **windows.images[1], "mm_token_type_ids": (ids == IMAGE).int()}
    with torch.no_grad():
        real = model(**inputs).logits
        text_positions = model(**inputs, position_ids=torch.arange(ids.shape[1])[None]).logits
        monkeypatch.setattr(type(model.model.language_model), "_deepstack_process", lambda self, h, mask, e: h)
        no_deepstack = model(**inputs).logits
    assert (real - text_positions).abs().max() > 1e-3 and (real - no_deepstack).abs().max() > 1e-3


def _bad_image_rows(tmp_path):
    junk, fine = tmp_path / "junk.png", tmp_path / "fine.png"
    junk.write_bytes(b"not an image")
    _image(fine, 16, 16, 0)
    (tmp_path / "junk.jsonl").write_text(_row("w5", "junk.png") + "\n")
    (tmp_path / "fine.jsonl").write_text(_row("fine.png", "w5 w6") + "\n")
    (tmp_path / "missing.jsonl").write_text(_row("fine.png", "w5") + "\n" + _row("gone.png", "w6") + "\n")
    return tmp_path / "junk.jsonl", tmp_path / "fine.jsonl", tmp_path / "missing.jsonl"


def _zero_size_png(path):
    """A PNG whose header says 0 x 0 pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path.name


def test_bad_images_are_one_line_exit_2_and_write_nothing(vl_teacher, tmp_path, capsys):
    from conftest import tiny_model

    text_only = tmp_path / "qwen3"
    tiny_model("qwen3").save_pretrained(text_only)
    _tokenizer().save_pretrained(text_only)
    junk, fine, missing = _bad_image_rows(tmp_path)
    rows = {"zero": _row("w5", _zero_size_png(tmp_path / "zero.png")),
            "huge": _row(_image(tmp_path / "huge.png", 80, 80, 1), "w5"),  # 6400 pixels; the processor takes 4096
            "two_tokens": _row("fine.png", "w5 <|image_pad|> w6"),
            "no_image": json.dumps({"messages": [{"role": "user", "content": "w5 <|image_pad|> w6"}]}),
            "text_row": json.dumps({"text": "w5 <|image_pad|> w6 w7"})}
    for name, row in rows.items():
        (tmp_path / f"{name}.jsonl").write_text(_row("fine.png", "w5") + "\n" + row + "\n")
    cases = {"unreadable image": (vl_teacher, junk, "cannot read image junk.png"),
             "missing image": (vl_teacher, missing, "line 2: cannot read image gone.png"),
             "text-only teacher": (str(text_only), fine, "has an image, and mosaic feeds images only to qwen3_vl"),
             "zero-size image": (vl_teacher, tmp_path / "zero.jsonl", "line 2: cannot read image zero.png"),
             "over the processor's limit": (vl_teacher, tmp_path / "huge.jsonl", "line 2: image huge.png is 80x80 = "
                                            "6400 pixels, more than the teacher's image processor takes (4096)"),
             "more image tokens than images": (vl_teacher, tmp_path / "two_tokens.jsonl",
                                               "line 2: the chat template placed 2 image tokens for 1 images"),
             "image token in a chat row without images": (vl_teacher, tmp_path / "no_image.jsonl",
                                                          "line 2: its text holds 1 image tokens (<|image_pad|>) for "
                                                          "0 images"),
             "image token in a text row": (vl_teacher, tmp_path / "text_row.jsonl",
                                           "line 2: its text holds 1 image tokens")}
    out = tmp_path / "out" / "s.json"
    capsys.readouterr()
    for name, (teacher, rows, words) in cases.items():
        code = main(["score", "--teacher", teacher, "--data", str(rows), "--seq-len", str(SEQ), "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], (name, err)
        assert not out.parent.exists(), name


def _reply_row(*parts, reply):
    return json.dumps({"messages": [json.loads(_row(*parts))["messages"][0], {"role": "assistant", "content": reply}]})


@pytest.fixture(scope="module")
def reply_data(tmp_path_factory):
    """Two image rows that end with the assistant's reply, one image row without a reply, one text window."""
    d = tmp_path_factory.mktemp("replies")
    a, b = _image(d / "a.png", 16, 16, 0), _image(d / "b.png", 24, 16, 1)
    rows = [_reply_row(a, "w5 w6", reply="w7 w8"), _reply_row(b, "w9", reply="w4"), _row(a, "w5 w6 w7"),
            json.dumps({"text": _words(45, 2)})]
    (d / "chat.jsonl").write_text("\n".join(rows) + "\n")
    return d / "chat.jsonl"


def _built(vl_teacher, folder, layers=("gqa", "none", "gqa")):
    from mosaic_search.hf.models import load_config, model_ref

    plan = LayerPlan(header=Header.new(model_ref(vl_teacher, load_config(vl_teacher))),
                     layers=tuple(map(Candidate.of, layers)), predicted={}, objective=0.0, constraints={}, solver={})
    return builder.build(save(plan, folder / "plan.json"), library=False, out=folder / "built")


def test_an_image_rows_reply_starts_after_its_question(vl_teacher, reply_data):
    """The prompt of an image row that ends with the assistant's turn is everything before that turn, its image
    tokens expanded: 16x16 is 4 tokens, 24x16 is 6."""
    windows, _, _ = data.tokenize_file(str(reply_data), data.tokenizer_of(vl_teacher), 8, 8, SEQ,
                                       data.Vision(vl_teacher, IMAGE))
    assert windows.replies == [2 + 4 + 2, 2 + 6 + 1, None, None]
    assert windows.ids[0, 8:11].tolist() == [7, 8, 2] and windows.ids[1, 9:11].tolist() == [4, 2]
    assert windows.select([3, 1]).replies == [None, 9] and windows[1:2].replies == [9]


def test_onpolicy_samples_answer_image_questions_and_continue_text(vl_teacher, reply_data, tmp_path):
    """An image row keeps its prompt (and its images) and gets the student's own reply, through its first end of
    sequence; a text row is continued by exactly ONPOLICY_TOKENS sampled tokens; the same seed samples the same."""
    from mosaic_search.recovery import batches, losses

    student = load_model(str(_built(vl_teacher, tmp_path)))
    b = batches.training_batches(str(reply_data), data.tokenizer_of(vl_teacher), vl_teacher, load_model(vl_teacher),
                                 4, SEQ, 0, 1, False)
    assert b.prompts == [0, 1, 3]
    batch = b.batch(0, 3, 0, 1, prompts=True)
    torch.manual_seed(0)
    gen, cuts = losses.sample(student, batch)
    torch.manual_seed(0)
    again, _ = losses.sample(student, batch)
    assert torch.equal(gen.sequences.ids, again.sequences.ids)
    assert student.training and gen.image_token == IMAGE
    eos = end_tokens(student)
    assert eos
    for row, (ids, length, images) in enumerate(zip(gen.sequences.ids, gen.sequences.lengths, gen.sequences.images)):
        cut, source = cuts[row], batch.sequences
        assert ids[:cut].tolist() == source.ids[row, :cut].tolist()
        assert images is source.images[row]
        if images is None:
            assert (cut, length) == (SEQ - losses.ONPOLICY_TOKENS if SEQ > losses.ONPOLICY_TOKENS else 1, SEQ)
        else:
            assert cut == source.replies[row]
            written = ids[cut:length].tolist()
            assert 1 <= len(written) <= SEQ - cut and not (set(written[:-1]) & eos)
            assert written[-1] in eos or len(written) == SEQ - cut
    # the image token made far the likeliest: it is never sampled (a forward pass would look for its image)
    hook = student.lm_head.register_forward_hook(lambda _m, _i, out: out.index_add(
        -1, torch.tensor([IMAGE]), torch.full((*out.shape[:-1], 1), 1e4)))
    gen, cuts = losses.sample(student, batch)
    hook.remove()
    assert all(IMAGE not in ids[cut:].tolist() for ids, cut in zip(gen.sequences.ids, cuts))
    # every token an end of sequence: each reply is exactly its first token, and the rows are padded after it
    student.generation_config.eos_token_id = list(range(student.config.get_text_config().vocab_size))
    gen, cuts = losses.sample(student, batches.Batch(b.sequences.select([0, 1]), IMAGE))
    assert cuts == [8, 9] and gen.sequences.lengths == [9, 10] and gen.sequences.ids.shape[1] == 10
    assert gen.sequences.ids[0, 9] == 0


def test_onpolicy_loss_of_padded_rows_equals_each_rows_own_forward(vl_teacher, reply_data, tmp_path, monkeypatch):
    """With fixed samples, the batched loss (image rows padded) is the per-token mean over every row's unpadded
    forwards: KL(teacher || student) on the prompt's tokens, the chosen divergence (here reverse KL) on the sampled."""
    from mosaic_search.recovery import batches, losses
    from mosaic_search.recovery.loading import Models

    student, teacher = load_model(str(_built(vl_teacher, tmp_path))), load_model(vl_teacher)
    b = batches.training_batches(str(reply_data), data.tokenizer_of(vl_teacher), vl_teacher, teacher, 4, SEQ, 0, 1,
                                 False)
    batch = b.batch(0, 3, 0, 1, prompts=True)
    torch.manual_seed(1)
    gen, cuts = losses.sample(student, batch)
    # the image rows' replies cut to 3 tokens, as if each had ended there: the batch is padded after them
    for row, cut in enumerate(cuts):
        if gen.sequences.images[row] is not None:
            gen.sequences.ids[row, cut + 3:] = 0
            gen.sequences.lengths[row] = cut + 3
    monkeypatch.setattr(losses, "sample", lambda *a: (gen, cuts))
    with torch.no_grad():
        loss = losses.onpolicy_loss(Models(student, student, teacher, None), batch, "reverse", 0.5, 0.0)
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, length, images, cut in zip(gen.sequences.ids, gen.sequences.lengths, gen.sequences.images, cuts):
            ids = ids[None, :length]
            kwargs = {} if images is None else {**images, "mm_token_type_ids": (ids == IMAGE).int()}
            t, s = (torch.log_softmax(m(input_ids=ids, use_cache=False, **kwargs).logits[0, :-1].double(), -1)
                    for m in (teacher, student))
            forward_kl, reverse_kl = (t.exp() * (t - s)).sum(-1), (s.exp() * (s - t)).sum(-1)
            total += float(forward_kl[:cut - 1].sum() + reverse_kl[cut - 1:].sum())
            n += length - 1
    assert float(loss) == pytest.approx(total / n, rel=1e-4)
    assert float(loss) > 1e-4


def test_distill_trains_on_image_rows_in_both_stages(vl_teacher, reply_data, tmp_path, capsys):
    """Stage 5 on a Qwen3-VL build: image windows go through the vision tower off-policy; on-policy, the text
    window is continued and the image rows with replies are answered anew; a file whose image rows have no reply
    and no text is refused for on-policy before any training."""
    from mosaic_search.recovery import distill

    built = _built(vl_teacher, tmp_path)
    out = distill.distill(str(built), data=str(reply_data), steps=2, batch_size=4, seq_len=SEQ, quality=False)
    record = load_distill_record(out)
    assert {k: record.settings["data"][k] for k in ("windows", "text_windows", "image_windows", "prompt_windows")} \
        == {"windows": 4, "text_windows": 1, "image_windows": 3, "prompt_windows": 3}
    assert [r["stage"] for r in record.losses] == ["offpolicy"] * 2 + ["onpolicy"] * 2
    assert all(r["loss"] > 0 for r in record.losses)
    _, images_only, _ = _bad_image_rows(tmp_path)
    assert main(["distill", str(built), "--data", str(images_only), "--seq-len", str(SEQ), "--no-eval",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no window can prompt on-policy steps" in err and "replies start past" not in err
    assert not (tmp_path / "x").exists()
    replies_only = tmp_path / "replies.jsonl"  # the two rows with replies, beside their images
    replies_only.write_text("".join(reply_data.read_text().splitlines(keepends=True)[:2]))
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes((reply_data.parent / name).read_bytes())
    assert main(["distill", str(built), "--data", str(replies_only), "--seq-len", "8", "--no-eval",
                 "--out", str(tmp_path / "x")]) == 2
    assert "2 rows' replies start past --seq-len 8" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # 9 tokens per window: the first row's reply starts at token 8, the second's at 9 (no room to answer), every
    # image row is cut, and the text row's 46 tokens make 5 windows and leave 1 out
    out = distill.distill(str(built), data=str(reply_data), steps=1, batch_size=16, seq_len=9, quality=False,
                          stage="offpolicy", out=tmp_path / "short")
    described = load_distill_record(out).settings["data"]
    assert {k: v for k, v in described.items() if k not in ("source", "seq_len", "tokens")} == {
        "windows": 8, "text_windows": 5, "image_windows": 3, "prompt_windows": 6, "replies_past_seq_len": 1,
        "image_rows_cut": 3, "text_tokens_left_out": 1}
