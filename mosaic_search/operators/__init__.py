"""THE operator registry: one `OperatorSpec` per candidate (token mixers and MLPs), used by every stage.

Adding an operator is one new file in this folder that calls `register(...)`, plus one import line at the
bottom of this module. Nothing here imports torch: `mosaic solve` reads the registry without it.
"""

from __future__ import annotations

from .registry import (COUNTING_LAYER_TYPES, OPS_HELP, REGISTRY, Candidate, OperatorSpec, cache_layout, check_pair,
                       compose, default_candidates, from_symbol, get, parse_candidates, pattern_legend, pattern_string,
                       plot_color, register, seen_as_full, unbuildable)

# each file registers its operators; the import order is the registry's order (tables, profiles, plots, the MIP's
# candidate order): not alphabetical, append new files at the end
from . import attention, latent, delta, removal, mlp  # noqa: E402, F401, I001  # isort: skip

__all__ = ["COUNTING_LAYER_TYPES", "OPS_HELP", "REGISTRY", "Candidate", "OperatorSpec", "cache_layout", "check_pair",
           "compose", "default_candidates", "from_symbol", "get", "parse_candidates", "pattern_legend",
           "pattern_string", "plot_color", "register", "seen_as_full", "unbuildable"]
