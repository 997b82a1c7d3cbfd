"""`mosaic score` on chat rows with images for a Qwen3-VL teacher: the KL of a swap scored from the cached hidden
states equals the swapped model's own forward on the images (mRoPE and DeepStack included); bad images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from mosaic_search import builder
from mosaic_search.artifacts import schema
from mosaic_search.cli import main
from mosaic_search.hf import data, surgery
from mosaic_search.hf.models import load_model, model_from_config
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


def test_distill_trains_on_image_rows_and_prompts_on_text_rows(vl_teacher, image_data, tmp_path, capsys):
    """Stage 5 on a Qwen3-VL build: image windows go through the vision tower (off-policy), text windows prompt the
    on-policy samples; a data file of image rows only is refused for on-policy before any training."""
    from mosaic_search.hf.models import load_config, model_ref
    from mosaic_search.recovery import distill

    ref = schema.LayerPlan(header=schema.Header.new(model_ref(vl_teacher, load_config(vl_teacher))),
                           layers=(Candidate.of("gqa"), Candidate.of("none"), Candidate.of("gqa")), predicted={},
                           objective=0.0, constraints={}, solver={})
    built = builder.build(schema.save(ref, tmp_path / "plan.json"), library=False, out=tmp_path / "built")
    out = distill.distill(str(built), data=str(image_data), steps=2, batch_size=4, seq_len=SEQ, quality=False)
    record = distill.load_record(out)
    assert record["data"]["windows"] == 4 and record["data"]["text_windows"] == 1
    assert [r["stage"] for r in record["losses"]] == ["offpolicy"] * 2 + ["onpolicy"] * 2
    assert all(r["loss"] > 0 for r in record["losses"])
    _, images_only, _ = _bad_image_rows(tmp_path)
    assert main(["distill", str(built), "--data", str(images_only), "--seq-len", str(SEQ), "--no-eval",
                 "--out", str(tmp_path / "x")]) == 2
    assert "on-policy steps need text prompts" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
