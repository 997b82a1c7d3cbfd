"""The remote code's `{op: mixer class}` table: a built config names each layer's operator, this says which class.

Registry keys are stable and never renamed (`mosaic_search.operators`), so a model built by any version loads by
`op`; configs written before this table also carry a `"mixer": "file:Class"` key, which is ignored.
"""

from __future__ import annotations

from .attention import Attention, LatentAttention
from .linear_attention import GatedDeltaNet, KimiDeltaAttention
from .removal import NoAttention, SkipLayer

MIXERS = {
    "gqa": Attention,
    "swa": Attention,
    "gdn": GatedDeltaNet,
    "kda": KimiDeltaAttention,
    "mla": LatentAttention,
    "none": NoAttention,
    "drop": SkipLayer,
}


def mixer_for(entry: dict, dims, layer_idx: int):
    """The module of one `config.mosaic["layers"]` entry ({op, params}) for layer `layer_idx` of a model of `dims`."""
    op = entry["op"]
    if op not in MIXERS:
        raise ValueError(f'layer {layer_idx}: unknown operator "{op}" in config.mosaic (known: {", ".join(MIXERS)}); '
                         "was this model built by a newer mosaic?")
    return MIXERS[op](dims, layer_idx, **entry.get("params", {}))


def replaces_layer(module) -> bool:
    """Whether a mixer module stands in for its whole decoder layer (`drop`) rather than for the layer's attention."""
    return getattr(module, "replaces_layer", False)
