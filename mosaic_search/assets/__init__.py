"""Shipped assets: the embedded teachers (`tiny`, `tiny-vl`) and the configs (dimensions only) of known models."""

from __future__ import annotations

from pathlib import Path

from ..errors import MosaicError

ASSETS = Path(__file__).parent
CONFIGS = ASSETS / "configs"
TINY_DIR = ASSETS / "tiny"  # the embedded teacher (alias `tiny`)
TINY_VL_DIR = ASSETS / "tiny-vl"  # the embedded vision-language teacher (alias `tiny-vl`)
TINY = "tiny"
# The aliases of the embedded teachers: (directory, the script that trains it). The one list of them.
EMBEDDED = {TINY: (TINY_DIR, "train_tiny"), "tiny-vl": (TINY_VL_DIR, "train_tiny_vl")}


def embedded_dir(model_id: str) -> str | None:
    """The directory of an embedded teacher's alias (None for any other id), or a one-line MosaicError (exit 1)
    naming the command that trains it when its weights are not there (a checkout whose weights were removed)."""
    if model_id not in EMBEDDED:
        return None
    where, script = EMBEDDED[model_id]
    if not (where / "config.json").is_file() or not (where / "model.safetensors").is_file():
        raise MosaicError(f"the embedded teacher {model_id} has no trained weights in {where}; train it first with "
                          f"`python -m mosaic_search.assets.{script}`")
    return str(where)


def shipped_config_path(model_id: str) -> Path | None:
    """The shipped config.json for a hub id such as 'Qwen/Qwen3-VL-4B-Instruct', if we ship one."""
    path = CONFIGS / (model_id.replace("/", "--") + ".json")
    return path if path.is_file() else None


def shipped_ids() -> list[str]:
    """Hub ids whose configs ship with mosaic."""
    return sorted(p.stem.replace("--", "/") for p in CONFIGS.glob("*--*.json"))
