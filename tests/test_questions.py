"""Held-out questions (quality/questions.py) on a random Qwen3-VL with tiny-vl's own tokenizer, chat template and image
processor: the greedy answers equal a cache-free greedy decode, accuracy is exact match, and `mosaic eval` reports it;
bad question files and images are one line, exit 2."""

from __future__ import annotations

import json
import random

import pytest
import torch

from mosaic_search.assets import TINY_DIR
from mosaic_search.assets import train_tiny_vl as tvl
from mosaic_search.cli import main
from mosaic_search.hf.data import tokenizer_of
from mosaic_search.hf.vision import Vision
from mosaic_search.quality.questions import answer_accuracy, answers, load_questions

pytestmark = pytest.mark.usefixtures("one_thread")
NEW = 5


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A saved 2-layer random Qwen3-VL (DeepStack into layer 0) with tiny-vl's processor files, and 6 of tiny-vl's
    single-turn image questions beside it."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer, images = tvl.build_processor()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tvl.CHAT_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=64, initializer_range=0.3, intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                                 "mrope_section": [4, 2, 2]})
    vision = dict(tvl.VISION, depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], 2]
    path = tmp_path_factory.mktemp("vl") / "teacher"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    images.save_pretrained(path)
    rows = tvl.write_image_set(path, random.Random(0), 6, 1, "eval")
    (path / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tvl.write_calibration(path, random.Random(3), (TINY_DIR / "heldout.txt").read_bytes())
    return path


def _loaded(teacher):
    from mosaic_search.hf.models import load_model

    model = load_model(str(teacher))
    tokenizer = tokenizer_of(str(teacher))
    return model, tokenizer, load_questions(teacher / "questions.jsonl", tokenizer,
                                            Vision(str(teacher), model.config.image_token_id))


def _greedy_without_cache(model, q, eos) -> list:
    ids = torch.tensor([q.ids])
    new = []
    with torch.no_grad():
        for _ in range(NEW):
            logits = model(input_ids=ids, use_cache=False, **q.images,
                           mm_token_type_ids=(ids == model.config.image_token_id).int()).logits
            nxt = int(logits[0, -1].argmax())
            if nxt in eos:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return new


def test_prompts_are_the_chat_template_with_one_image_token_per_merged_patch(teacher):
    _, tokenizer, questions = _loaded(teacher)
    rows = [json.loads(line) for line in (teacher / "questions.jsonl").read_text().splitlines()]
    image = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    per_image = (tvl.WIDTH // tvl.PATCH) * (tvl.HEIGHT // tvl.PATCH) // tvl.MERGE ** 2
    for q, row in zip(questions, rows):
        assert q.ids.count(image) == per_image and q.answer == row["answer"] and q.kind == row["kind"]
        question = row["messages"][0]["content"][1]["text"]
        text = tokenizer.decode([t for t in q.ids if t != image])
        assert text == f"<|im_start|>user\n<|vision_start|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
        assert q.images["image_grid_thw"].tolist() == [[1, tvl.HEIGHT // tvl.PATCH, tvl.WIDTH // tvl.PATCH]]


def test_greedy_answers_equal_a_cache_free_decode_and_accuracy_is_exact_match(teacher):
    model, tokenizer, questions = _loaded(teacher)
    got = answers(model, questions, tokenizer, max_new_tokens=NEW)
    eos = set(model.generation_config.eos_token_id)
    assert got == [tokenizer.decode(_greedy_without_cache(model, q, eos), skip_special_tokens=True)
                   for q in questions]
    assert len(set(got)) > 1  # the random model writes different answers: the comparison is not between constants
    # half of the expected answers are what the model writes, half are not: exactly half are right
    import dataclasses

    marked = [dataclasses.replace(q, answer=a if i % 2 == 0 else a + "x", kind="even" if i % 2 == 0 else "odd")
              for i, (q, a) in enumerate(zip(questions, got))]
    result = answer_accuracy(model, marked, tokenizer, max_new_tokens=NEW)
    assert result == {"accuracy": 0.5, "n": 6, "by_question": {"even": {"accuracy": 1.0, "n": 3},
                                                               "odd": {"accuracy": 0.0, "n": 3}}}


def test_blank_feeds_mid_grey_images_of_the_same_size(teacher, monkeypatch):
    model, tokenizer, questions = _loaded(teacher)
    seen = []

    def generate(input_ids, **kwargs):
        seen.append(kwargs)
        return torch.cat([input_ids, torch.full((len(input_ids), 1), 2)], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    assert answers(model, questions, tokenizer, blank=True) == [""] * len(questions)
    pixels = torch.cat([q.images["pixel_values"] for q in questions])
    fed = torch.cat([k["pixel_values"] for k in seen])
    assert fed.shape == pixels.shape and not fed.any() and pixels.any()  # 0 after normalisation: grey 0.5


@pytest.mark.slow  # whole stages: the unit suite keeps its two minutes
def test_eval_reports_question_accuracy_next_to_text_quality(teacher, tmp_path, capsys):
    text = tmp_path / "held.txt"
    text.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(200)))
    assert main(["eval", str(teacher), "--teacher", str(teacher), "--data", str(text), "--windows", "2",
                 "--seq-len", "64", "--questions", str(teacher / "questions.jsonl"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kl"] == pytest.approx(0.0, abs=1e-6) and result["eval"]["questions"] == 6
    model, tokenizer, questions = _loaded(teacher)
    assert result["questions"] == answer_accuracy(model, questions, tokenizer)


def test_bad_question_files_are_one_line_exit_2(teacher, tmp_path, capsys):
    text = tmp_path / "held.txt"
    text.write_text("x" * 400)
    good = json.loads((teacher / "questions.jsonl").read_text().splitlines()[0])
    image = str(teacher / good["messages"][0]["content"][0]["image"])
    two_tokens = {"messages": [{"role": "user", "content": [{"type": "image", "image": image},
                                                            {"type": "text", "text": "<|image_pad|> what?"}]}],
                  "answer": "A"}
    cases = {"no answer": ({"messages": good["messages"]}, 'line 1: expected {"messages", "answer"}'),
             "image token count": (two_tokens, "line 1: the chat template placed 2 image tokens for 1 images")}
    for name, (row, words) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        code = main(["eval", str(teacher), "--teacher", str(teacher), "--data", str(text), "--windows", "2",
                     "--seq-len", "64", "--questions", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], (name, err)


def test_tiny_vl_starts_from_tinys_language_model_exactly():
    """Before training, tiny-vl's language path is tiny: on text its mRoPE rotates as tiny's RoPE, and its logits
    over tiny's 259 tokens equal tiny's (the model card's claim, and why text quality is kept from step 0)."""
    from transformers import AutoModelForCausalLM, Qwen3VLForConditionalGeneration

    from mosaic_search.assets.train_tiny import encode

    tokenizer, _ = tvl.build_processor()
    vl = Qwen3VLForConditionalGeneration(tvl.vl_config(tokenizer)).eval()
    tvl.from_tiny(vl, TINY_DIR)
    tiny = AutoModelForCausalLM.from_pretrained(TINY_DIR).eval()
    ids = encode(b"def f(x):\n    return {'a': x}  # tiny\n" * 4)[None]
    with torch.no_grad():
        ours, theirs = vl(input_ids=ids).logits[..., :259], tiny(input_ids=ids).logits
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.slow  # whole stages: the unit suite keeps its two minutes
def test_the_tiny_vl_alias_scores_on_its_image_and_text_calibration_by_default(teacher, monkeypatch, tmp_path):
    """`score --teacher tiny-vl` with no --data: the alias resolves to its folder for the weights, the tokenizer and
    the image processor, and the default data alternates image conversations and text."""
    from mosaic_search.hf import data, models
    from mosaic_search.quality import scorer

    monkeypatch.setitem(models.EMBEDDED, "tiny-vl", (teacher, "train_tiny_vl"))
    assert data.default_source("tiny-vl") == str(teacher / "calibration.jsonl")
    assert data.default_distill_source("tiny-vl") == str(teacher / "calibration.jsonl")
    table = scorer.score("tiny-vl", ops="gqa,none", tokens=4 * 512, seq_len=512, align_steps=0,
                         out=tmp_path / "s.json")
    assert table.data["image_windows"] == 2  # image, text, text (a 1024-byte text row), image
    assert all(e.kl > 0 for e in table.entries if e.candidate.op == "none")
