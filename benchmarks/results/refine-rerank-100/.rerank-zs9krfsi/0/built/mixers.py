"""The remote code's `{op: mixer class}` table: a built config names each layer's operator, this says which class.

Registry keys are stable and never renamed (`mosaic_search.operators`), so a model built by any version loads by
`op`; configs written before this table also carry a `"mixer": "file:Class"` key, which is ignored.
"""

from __future__ import annotations

import functools

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


def stand_in(module, layer):
    """`module` (a mixer that `replaces_layer`) made an instance of `layer`'s class too, its own forward first, to be
    installed in `layer`'s place: what transformers records per decoder layer by that class (`output_hidden_states`)
    then counts it, so every layer keeps its one entry and every later index stays put."""
    module.__class__ = _standing_in_for(type(module), type(layer))
    return module


@functools.lru_cache(maxsize=None)
def _standing_in_for(mixer_class: type, layer_class: type) -> type:
    if issubclass(mixer_class, layer_class):  # installed before (a restore and a new swap)
        return mixer_class
    return type(f"{mixer_class.__name__}As{layer_class.__name__}", (mixer_class, layer_class), {})
