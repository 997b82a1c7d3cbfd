"""What a distillation writes: the recovered model directory, which loads exactly like a build (same remote code,
config and plan record), and its `distill_record.json` (`mosaic/distill-record`), with the reader of that record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..artifacts import schema
from ..artifacts.files import atomic_dir, output_path, write_json
from ..errors import UsageError

RECORD_KIND = "mosaic/distill-record"
RECORD_FILE = "distill_record.json"
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")


def default_out(model: str, out=None) -> Path:
    """Where `distill` writes: `out`, or `<model>-distilled` beside the model directory."""
    return output_path(out, Path(str(Path(model)).rstrip("/") + "-distilled"), folder=True)


def load_record(model: str | Path) -> dict:
    """The distill record of a distilled model directory, validated for kind and version."""
    path = Path(model) / RECORD_FILE
    if not path.is_file():
        raise UsageError(f"{model}: no {RECORD_FILE} (not a model written by mosaic distill)")
    from ..artifacts.files import read_text

    try:
        obj = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or obj.get("kind") != RECORD_KIND:
        raise UsageError(f'{path}: kind: expected "{RECORD_KIND}"')
    if not isinstance(obj.get("schema_version"), int) or obj["schema_version"] > schema.SCHEMA_VERSION:
        raise UsageError(f"{path}: schema_version {obj.get('schema_version')} is not one this mosaic reads")
    return obj


def plain_copy(model: str, state: dict):
    """The model directory's model in host memory, holding `state` (the whole weights gathered from FSDP2 shards)."""
    from ..hf.models import load_model

    plain = load_model(model, device="cpu")
    plain.load_state_dict(state)
    return plain


def write_model(student, model: str, out: Path, record: dict, overwrite: bool) -> None:
    """The model directory: every file of `model` but its weights (remote code, tokenizer, plan record), the
    distilled weights and config, and the distill record."""
    src = Path(model)
    weights = {f for pattern in WEIGHT_FILES for f in src.glob(pattern)}
    with atomic_dir(out, replace=overwrite) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file() and f not in weights and f.name != RECORD_FILE:
                shutil.copyfile(f, tmp / f.name)
        student.save_pretrained(tmp)
        write_json(tmp / RECORD_FILE, record)
