"""Resolve a mixer class from its "file:Class" name (as recorded in the registry and in built configs)."""

from __future__ import annotations

import importlib


def mixer_class(name: str):
    """The class `Class` in this package's module `file`, for name "file:Class"."""
    module, _, cls = name.partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)
