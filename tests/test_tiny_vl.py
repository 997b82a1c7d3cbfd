"""The shipped vision-language teacher `tiny-vl`: its files fit and ship, it is transformers' own qwen3_vl, and it
reads its images: `mosaic eval` measures its held-out image questions answered, and answered only with the image."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from mosaic_search.assets import TINY_DIR, TINY_VL_DIR
from mosaic_search.assets import train_tiny_vl as tvl
from mosaic_search.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "preprocessor_config.json", "image_eval.jsonl", "calibration.jsonl", "README.md")
ROOT = Path(__file__).resolve().parents[1]


def test_shipped_files_exist_fit_in_20_mb_and_are_package_data():
    for name in FILES:
        assert (TINY_VL_DIR / name).is_file(), name
    files = [p for p in TINY_VL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["mosaic_search.assets"]
    for p in files:  # every file the model, eval and score read must be installed with the package
        rel = p.relative_to(TINY_VL_DIR.parent).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) and rel.count("/") == pat.count("/") for pat in shipped), rel


def test_config_is_transformers_qwen3_vl_on_tinys_language_model():
    from mosaic_search.hf.models import load_config

    config, tiny = load_config("tiny-vl"), load_config("tiny")
    assert config.model_type == "qwen3_vl" and config.architectures == ["Qwen3VLForConditionalGeneration"]
    assert config.vision_config.deepstack_visual_indexes and config.text_config.rope_parameters["mrope_interleaved"]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert getattr(config.text_config, key) == getattr(tiny, key), key


def _card_accuracy() -> float:
    """The held-out image accuracy the model card states (percent)."""
    text = (TINY_VL_DIR / "README.md").read_text()
    return float(re.search(r"exact match of the greedy answer: \*\*([\d.]+)%\*\* of 256", text).group(1))


def test_eval_measures_it_reading_its_images_as_its_card_states(capsys):
    """`mosaic eval tiny-vl`: at least 95% of its held-out image questions answered exactly, the figure its model
    card states, next to its text quality."""
    assert main(["eval", "tiny-vl", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    questions = got["questions"]
    assert questions["n"] == 256 and questions["accuracy"] >= 0.95
    assert round(100 * questions["accuracy"], 1) == _card_accuracy()
    assert set(questions["by_question"]) == {"read", "character"}
    assert got["kl"] == pytest.approx(0, abs=1e-6) and got["recall"]


def test_without_its_images_it_cannot_answer():
    """The same questions with every image blanked: at most what guessing from the question gives (a character
    right by chance 1 time in 34; a whole string almost never), so what it answers it read off the image."""
    from mosaic_search.hf.data import Vision, tokenizer_of
    from mosaic_search.hf.models import load_model
    from mosaic_search.quality.questions import answer_accuracy, load_questions

    model, tokenizer = load_model("tiny-vl"), tokenizer_of("tiny-vl")
    questions = load_questions(TINY_VL_DIR / "image_eval.jsonl", tokenizer,
                               Vision("tiny-vl", model.config.image_token_id))
    blank = answer_accuracy(model, questions, tokenizer, blank=True)
    assert blank["by_question"]["read"]["accuracy"] == 0
    assert blank["by_question"]["character"]["accuracy"] <= 3 / len(tvl.ALPHABET)


@pytest.mark.slow  # the whole held-out text through two models: a minute on one thread
def test_its_text_stays_tinys_within_10_percent_on_the_whole_heldout_text():
    """Held-out text loss of tiny-vl against tiny's on every 512-token window of tiny's heldout.txt (the model card's
    measure): within 10%. (`mosaic eval`'s default, the last 8 windows of 1024 bytes, is a smaller and easier
    sample, where the same models differ by more: the card's figure is the one over all of it.)"""
    from mosaic_search.assets.train_tiny import encode, heldout_loss
    from mosaic_search.hf.models import load_model

    held = encode((TINY_DIR / "heldout.txt").read_bytes())
    vl, tiny = (heldout_loss(load_model(name), held, 512) for name in ("tiny-vl", "tiny"))
    assert vl <= 1.10 * tiny
    card = (TINY_VL_DIR / "README.md").read_text()
    assert f"**{vl:.3f}** nats/byte against tiny's\n  {tiny:.3f}" in card


@pytest.mark.slow  # the whole pipeline on the VLM (lighter scoring, 2 distillation steps per stage)
def test_demo_on_tiny_vl_reports_image_accuracy_before_and_after_distillation(tmp_path, monkeypatch):
    """`mosaic demo --teacher tiny-vl`: its report puts the held-out image accuracy of the teacher, of each plan as
    built and after distillation (the distill record's numbers) next to the text quality."""
    from mosaic_search import demo
    from mosaic_search.quality import scorer

    monkeypatch.setattr(scorer, "DEFAULT_TOKENS", 2048)
    monkeypatch.setattr(scorer, "DEFAULT_ALIGN_STEPS", 2)
    monkeypatch.setattr(demo, "DISTILL_STEPS", 2)
    out = tmp_path / "report"
    assert main(["demo", "--teacher", "tiny-vl", "--out", str(out)]) == 0
    rows = {line.split(" | ")[0]: line for line in (out / "report.md").read_text().splitlines()
            if line.startswith("| teacher | ") or " built | " in line or " distilled (" in line}
    assert rows["| teacher"].endswith(f"| {_card_accuracy():.1f}% | - |")
    for target in ("1.25", "1.5"):
        q = json.loads((out / "models" / f"tiny-vl-tpot-{target}x-distilled" / "distill_record.json").read_text())
        before, after = q["quality"]["before"], q["quality"]["after"]
        assert rows[f"| {target}x built"].endswith(f"| {before['questions']['accuracy']:.1%} | - |")
        distilled = rows[f"| {target}x distilled (`models/tiny-vl-tpot-{target}x-distilled`)"]
        assert f" | {after['heldout_loss']:.4f} | " in distilled
        assert f"| {after['questions']['accuracy']:.1%} | " in distilled and after["questions"]["n"] == 256
