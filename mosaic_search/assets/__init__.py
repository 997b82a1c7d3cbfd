"""Shipped assets: the embedded teachers (`tiny`, `tiny-vl`) and the configs (dimensions only) of known models."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent
CONFIGS = ASSETS / "configs"
TINY_DIR = ASSETS / "tiny"  # the embedded teacher (alias `tiny`)
TINY_VL_DIR = ASSETS / "tiny-vl"  # the embedded vision-language teacher (alias `tiny-vl`)


def shipped_config_path(model_id: str) -> Path | None:
    """The shipped config.json for a hub id such as 'Qwen/Qwen3-VL-4B-Instruct', if we ship one."""
    path = CONFIGS / (model_id.replace("/", "--") + ".json")
    return path if path.is_file() else None


def shipped_ids() -> list[str]:
    """Hub ids whose configs ship with mosaic."""
    return sorted(p.stem.replace("--", "/") for p in CONFIGS.glob("*--*.json"))
