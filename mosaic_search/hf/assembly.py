"""A plan assembled in memory: a teacher with its layers swapped (by `surgery.swap`) inside the built model class.

`build` writes this model to a directory; `bench` times it and refine measures it without the round trip, so what
is timed and measured is what is shipped.
"""

from __future__ import annotations

import copy

from ..errors import MosaicError
from ..operators import cache_layout
from . import surgery


def as_built(model, layers, seed: int = 0):
    """A teacher with `layers` swapped in (by `surgery.swap`) as the built model class, in memory and sharing its
    tensors: what `build` would write and a user would load, without the round trip through a directory."""
    return as_mosaic_model(model, mosaic_config(model.config, layers, "", seed))


def mosaic_config(teacher_config, layers, plan_sha256: str, seed: int = 0):
    """The built model's config: the teacher's, as `mosaic_<base>`, with the cache layout of its mixers
    (`operators.cache_layout`), `auto_map` and the `mosaic` block of per-layer `{op, params}` (+ `mlp`)."""
    from .. import __version__
    from ..modeling.architectures import rope_layer_types
    from ..modeling.configuration_mosaic import CONFIGS, MOSAIC_FORMAT, rope_by_layer
    from ..modeling.modeling_mosaic import MODELS

    record = surgery.architecture(teacher_config).record
    config_cls, auto = CONFIGS[record.model_type]
    obj = teacher_config.to_dict()
    for key in ("architectures", "auto_map", "_name_or_path", "transformers_version", "model_type"):
        obj.pop(key, None)
    text = obj[record.text_config] if record.text_config else obj
    layout = cache_layout([c.spec.layer_type for c in layers], [c.window for c in layers])
    if "use_sliding_window" not in text:  # only Qwen3 has it (and drops sliding_window unless it is set)
        layout.pop("use_sliding_window")
    text.update(layout)
    kinds = rope_layer_types(teacher_config, record)
    if kinds:
        text.update(rope_by_layer(text, kinds))
    obj["mosaic"] = {
        # the remote code maps op -> mixer class (`modeling.mixers`) and mlp -> the layer's MLP (`modeling.mlps`)
        "layers": [c.to_json() for c in layers], "format": MOSAIC_FORMAT,
        "plan_sha256": plan_sha256, "base_model_type": record.model_type, "mosaic_version": __version__,
        "seed": seed, **({"rope_layer_types": kinds} if kinds else {}),
    }
    obj["auto_map"] = {"AutoConfig": f"configuration_mosaic.{config_cls.__name__}",
                       auto: f"modeling_mosaic.{MODELS[record.model_type].__name__}"}
    return config_cls.from_dict(obj)


def as_mosaic_model(model, config):
    """The swapped teacher's tensors (not copies) inside the built model class, so save_pretrained writes the
    built class's config and names; a key mismatch here would mean the remote code builds another model."""
    import torch

    from ..modeling.modeling_mosaic import MODELS

    config.dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        built = MODELS[config.mosaic["base_model_type"]](config)
    missing, unexpected = built.load_state_dict(model.state_dict(), strict=False, assign=True)
    if missing or unexpected:
        raise MosaicError(f"the built model class does not match the swapped teacher: missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]}")
    for name, buffer in model.named_buffers():  # buffers outside the state dict (rotary tables) stayed on meta
        owner, _, attr = name.rpartition(".")
        if surgery.ORIGINALS in owner.split("."):  # the teacher's replaced layers are not part of the built model
            continue
        if getattr(built.get_submodule(owner), attr).is_meta:
            setattr(built.get_submodule(owner), attr, buffer)
    built.generation_config = copy.deepcopy(model.generation_config)
    # fast by default: transformers compiles a static cache's decode step and replays it from a CUDA graph
    built.generation_config.cache_implementation = "static"
    return built.eval()
