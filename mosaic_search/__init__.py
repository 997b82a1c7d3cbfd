"""mosaic: hardware-aware post-training architecture search for transformer LLMs and VLMs."""

from __future__ import annotations

__version__ = "0.1.0"

# Stage entry points load lazily so that `import mosaic_search` (and `mosaic --help`) never imports torch.
_LAZY = {
    "profile": ("latency.profiler", "profile"),
    "score": ("quality.scorer", "score"),
    "solve": ("search.solver", "solve"),
    "solve_serving": ("search.serving", "solve_serving"),  # `solve --throughput-speedup X --memory M --context C`
    "refine": ("quality.refine", "refine"),
    "build": ("builder", "build"),
    "distill": ("recovery.distill", "distill"),
    "evaluate": ("quality.evaluation", "evaluate"),
    "bench": ("latency.bench", "bench"),
    "to_frame": ("artifacts.frames", "to_frame"),  # any artifact as a pandas DataFrame, for notebooks
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
