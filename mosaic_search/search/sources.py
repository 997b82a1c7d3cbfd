"""What a stage read, in words: each input's file, model, device and date, and whether it was discovered."""

from __future__ import annotations


def source(artifact, path, given) -> dict:
    """What one input is: {path (None for a record passed in memory), model, device, created_at, discovered}."""
    env = artifact.header.env
    return {"path": None if path is None else str(path), "model": artifact.header.model.id,
            "device": env.get("device_name") or env.get("device"), "created_at": artifact.header.created_at,
            "discovered": given is None}


def describe(src: dict) -> str:
    """One input in words: 'profiles/tiny--cpu.json (model tiny, device cpu, made 2026-12-06T21:00:00Z)'."""
    device = f", device {src['device']}" if src.get("device") else ""
    return f"{src['path'] or 'in memory'} (model {src['model']}{device}, made {src['created_at']})"
