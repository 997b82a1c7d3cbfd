"""The shipped embedded teacher: its files, its shape, its tokenizer, and that it really learned text and recall."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mosaic_search.errors import MosaicError
from mosaic_search.assets import TINY_DIR
from mosaic_search.hf import models
from mosaic_search.hf.models import load_config, load_model

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "heldout.txt", "recall_eval.jsonl", "calibration.txt", "README.md")


@pytest.fixture(scope="module")
def teacher():
    return load_model("tiny")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_DIR))


def test_shipped_files_exist_and_fit_in_20_mb():
    for name in FILES:
        assert (TINY_DIR / name).is_file(), name
    assert sum(f.stat().st_size for f in TINY_DIR.iterdir()) <= 20 * 2**20


def test_config_is_a_qwen3_with_at_least_8_layers_and_gqa():
    config = load_config("tiny")
    assert config.model_type == "qwen3" and config.architectures == ["Qwen3ForCausalLM"]
    assert config.num_hidden_layers >= 8 and config.num_key_value_heads < config.num_attention_heads
    assert set(config.layer_types) == {"full_attention"}


@pytest.mark.parametrize("alias", list(models.EMBEDDED))
def test_missing_folder_is_one_line_naming_the_training_command(monkeypatch, tmp_path, alias):
    script = models.EMBEDDED[alias][1]
    monkeypatch.setitem(models.EMBEDDED, alias, (tmp_path / alias, script))
    for load in (load_config, load_model):
        with pytest.raises(MosaicError, match=f"train it first with `python -m mosaic_search.assets.{script}`") as e:
            load(alias)
        assert "\n" not in str(e.value) and alias in str(e.value)


@pytest.mark.parametrize("argv", [["eval", "tiny-vl"], ["score", "--teacher", "tiny-vl"],
                                  ["demo", "--teacher", "tiny-vl", "--out", "{tmp}/report"]])
def test_an_untrained_tiny_vl_stops_in_one_line_naming_its_training_command_exit_1(monkeypatch, tmp_path, capsys,
                                                                                    argv):
    """Until its weights are trained, every use of `tiny-vl` is one line naming the command that trains it, exit 1,
    before any work (nothing written)."""
    from mosaic_search.cli import main
    from mosaic_search.errors import EXIT_RUNTIME

    monkeypatch.setitem(models.EMBEDDED, "tiny-vl", (tmp_path / "untrained", "train_tiny_vl"))
    monkeypatch.chdir(tmp_path)
    assert main([a.format(tmp=tmp_path) for a in argv]) == EXIT_RUNTIME
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "tiny-vl has no trained weights" in err and "`python -m mosaic_search.assets.train_tiny_vl`" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_auto_classes_load_the_folder_directly():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(TINY_DIR))
    assert type(model).__name__ == "Qwen3ForCausalLM"


@pytest.mark.parametrize("text", ["def f(x):\n    return x\n", "héllo wörld ✓ 🐍 — 中文", "\x00\x01\t\r\n \x7f"])
def test_tokenizer_round_trips_utf8_one_id_per_byte(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids == [b + 3 for b in text.encode()]
    assert tokenizer.decode(ids) == text


def test_heldout_loss_is_well_below_uniform(teacher, tokenizer):
    text = (TINY_DIR / "heldout.txt").read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer(text[:4 * 256 + 1])["input_ids"][: 4 * 256 + 1])
    with torch.no_grad():
        logits = teacher(input_ids=ids[:-1].view(4, 256)).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[1:]).item()
    assert loss < 0.6 * math.log(256), loss


def test_long_distance_recall_probes_beat_chance(teacher, tokenizer):
    rows = [json.loads(line) for line in (TINY_DIR / "recall_eval.jsonl").read_text().splitlines()]
    assert {"prompt", "answer", "distance"} <= set(rows[0])
    far = [r for r in rows if r["distance"] >= 128][::5][:12]
    hits = 0
    with torch.no_grad():
        for r in far:
            ids = torch.tensor([tokenizer(r["prompt"])["input_ids"]])
            out = teacher.generate(ids, max_new_tokens=len(r["answer"]), do_sample=False)
            hits += tokenizer.decode(out[0, ids.shape[1]:]) == r["answer"]
    # chance: any two digits 1%; a value that appears in the prompt 1 / (pairs per prompt)
    assert hits / len(far) > 0.25, f"{hits}/{len(far)}"


def test_default_calibration_holds_recall_the_teacher_solves(teacher, tokenizer):
    """mosaic score's default data for tiny: 1024-byte records, recall sequence then text, and the teacher
    answers the recall queries in them (so a swap that breaks recall shows in the KL)."""
    import re

    from mosaic_search.hf.data import default_source

    path = Path(default_source("tiny"))
    data = path.read_bytes()
    assert path.name == "calibration.txt" and data.isascii() and len(data) % 1024 == 0
    record = data[:1024].decode()
    head = record.split("\n", 1)[0]
    defs = dict(re.findall(r"([A-Z])(\d\d);", head))
    queries = [(m.start(), m.group(1)) for m in re.finditer(r"\?([A-Z])", record[:512])]
    assert len(defs) == 16 and queries
    ids = torch.tensor(tokenizer(record)["input_ids"])[None]
    with torch.no_grad():
        pred = teacher(ids).logits[0].argmax(-1)
    right = [tokenizer.decode(pred[at + 1:at + 3]) == defs[key] for at, key in queries]
    assert sum(right) >= 0.8 * len(right)
