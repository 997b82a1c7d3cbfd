"""What a distillation writes: the recovered model directory, which loads exactly like a build (same remote code,
config and plan record), and its `distill_record.json` (`artifacts/distill_record.py`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..artifacts.distill_record import RECORD_FILE, DistillRecord
from ..artifacts.files import atomic_dir, output_path
from ..artifacts.header import save

WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")


def default_out(model: str, out=None) -> Path:
    """Where `distill` writes: `out`, or `<model>-distilled` beside the model directory."""
    return output_path(out, Path(str(Path(model)).rstrip("/") + "-distilled"), folder=True)


def plain_copy(model: str, state: dict):
    """The model directory's model in host memory, holding `state` (the whole weights gathered from FSDP2 shards)."""
    from ..hf.models import load_model

    plain = load_model(model, device="cpu")
    plain.load_state_dict(state)
    return plain


def write_model(student, model: str, out: Path, record: DistillRecord, overwrite: bool) -> None:
    """The model directory: every file of `model` but its weights (remote code, tokenizer, plan record), the
    distilled weights and config, and the distill record."""
    src = Path(model)
    weights = {f for pattern in WEIGHT_FILES for f in src.glob(pattern)}
    with atomic_dir(out, replace=overwrite) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file() and f not in weights and f.name != RECORD_FILE:
                shutil.copyfile(f, tmp / f.name)
        student.save_pretrained(tmp)
        save(record, tmp / RECORD_FILE)
