"""Resolving a model argument (`model`, `teacher`): the `tiny` alias, a local directory, or a hub id via
`from_pretrained`, once per stage into a `Resolved` record that the stage passes down."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..artifacts.header import ModelRef, sha256_json
from ..assets import EMBEDDED, TINY, embedded_dir, shipped_config_path, shipped_ids
from ..errors import UsageError
from ..modeling.architectures import BUILT_PREFIX, is_built
from ..modeling.dims import ModelDims
from .surgery import Arch, architecture, teacher_ops

logger = logging.getLogger(__name__)
# Config keys that say how a file was written, not what the model is.
_VOLATILE = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures", "auto_map",
             "_attn_implementation_autoset", "output_attentions", "output_hidden_states", "use_cache"}


_NOTED: set = set()  # models whose shipped config stood in, already said on stderr


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def load_config(model_id: str, shipped_ok: bool = False):
    """The transformers config of a model; with `shipped_ok`, fall back to a shipped config when the hub is
    unreachable (enough for profiling, which needs dimensions only)."""
    from transformers import AutoConfig

    if model_id in EMBEDDED:
        return AutoConfig.from_pretrained(embedded_dir(model_id))
    try:
        return AutoConfig.from_pretrained(model_id, trust_remote_code=is_mosaic_dir(model_id))
    except (OSError, ValueError) as e:
        shipped = shipped_config_path(model_id)
        if shipped_ok and shipped is not None:
            if model_id not in _NOTED:  # a stage may read the config more than once: one note per process
                _NOTED.add(model_id)
                why = "HF_HUB_OFFLINE is set and it is not in the local cache" if _offline() else _first_line(e)
                logger.info("note: %s is not reachable (%s); using the shipped config (dimensions only)", model_id,
                            why)
            return _config_from_file(shipped)
        raise _unresolvable(model_id, e) from None


@dataclass(frozen=True)
class Resolved:
    """A model argument resolved once at a stage's entry: its id, config and what stages read from it (architecture,
    dimensions, each layer's own operator, the artifact `model` block, a folder name), computed on first use."""

    id: str
    config: object

    @cached_property
    def arch(self) -> Arch:
        """The supported architecture (UsageError for an unsupported one)."""
        return architecture(self.config)

    @cached_property
    def dims(self) -> ModelDims:
        """Decoder dimensions."""
        return ModelDims.from_text_config(self.arch.text(self.config), self.arch.record)

    @cached_property
    def teacher_ops(self) -> list:
        """Each decoder layer's own operator (`surgery.teacher_ops`)."""
        return teacher_ops(self.config)

    @cached_property
    def ref(self) -> ModelRef:
        """The `model` block of an artifact."""
        return model_ref(self.id, self.config)

    @property
    def slug(self) -> str:
        """A folder name for the model (`slug`)."""
        return slug(self.id)

    @property
    def built(self) -> bool:
        """Whether it is a model mosaic built."""
        return is_built(self.config)


def resolve(model, shipped_ok: bool = False) -> Resolved:
    """`model` (an id, or an already `Resolved` record, returned as is) with its config loaded (`load_config`)."""
    if isinstance(model, Resolved):
        return model
    return Resolved(model, load_config(model, shipped_ok=shipped_ok))


def auto_class(config):
    """The transformers auto class a model of this config (or config.json's dict) loads through: image-text-to-text
    for a model with a vision tower, causal LM otherwise."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if isinstance(config, dict):
        vision = "vision_config" in config
    else:
        vision = getattr(config, "vision_config", None) is not None
    return AutoModelForImageTextToText if vision else AutoModelForCausalLM


def load_model(model, dtype: str = "float32", device: str = "cpu"):
    """Load a model (an id, or a `Resolved` record whose config is not read again) with its weights."""
    import torch

    torch_dtype = getattr(torch, dtype)
    model = resolve(model)
    where = embedded_dir(model.id)
    try:
        loaded = auto_class(model.config).from_pretrained(where or model.id, dtype=torch_dtype,
                                                          trust_remote_code=is_mosaic_dir(model.id))
    except (OSError, ValueError) as e:
        raise _unresolvable(model.id, e) from None
    if where is not None:
        loaded.name_or_path = model.id
    return loaded.eval().to(device)
    model = resolve(model)
    try:
        loaded = auto_class(model.config).from_pretrained(model.id, dtype=torch_dtype,
                                                          trust_remote_code=is_mosaic_dir(model.id))
    except (OSError, ValueError) as e:
        raise _unresolvable(model.id, e) from None
    return loaded.eval().to(device)


def model_from_config(config, dtype: str = "float32", seed: int = 0):
    """A randomly initialised model of this config (for latency work, where values do not matter)."""
    import torch

    torch.manual_seed(seed)
    return auto_class(config).from_config(config, dtype=getattr(torch, dtype)).eval()


def end_tokens(model) -> set:
    """The token ids that end the model's generation: its generation config's `eos_token_id` (one id, a list, or
    none)."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def config_sha256(config) -> str:
    """Fingerprint of what a config says about the model (not of how or when it was saved)."""
    obj = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}
    for sub in ("text_config", "vision_config"):
        if isinstance(obj.get(sub), dict):
            obj[sub] = {k: v for k, v in obj[sub].items() if k not in _VOLATILE}
    return sha256_json(obj)


def model_ref(model_id: str, config) -> ModelRef:
    """The `model` block of an artifact."""
    text = architecture(config).text(config)
    return ModelRef(id=model_id, config_sha256=config_sha256(config), num_hidden_layers=text.num_hidden_layers)


def slug(model_id: str) -> str:
    """A folder name for a model id: 'Qwen/Qwen3-VL-4B-Instruct' -> 'Qwen--Qwen3-VL-4B-Instruct'."""
    return Path(model_id).name if Path(model_id).is_dir() else model_id.replace("/", "--")


def _config_from_file(path: Path):
    from transformers import AutoConfig

    obj = json.loads(path.read_text())
    model_type = obj.pop("model_type")
    return AutoConfig.for_model(model_type, **obj)


def is_mosaic_dir(model_id: str) -> bool:
    """Whether `model_id` is a local directory holding a model mosaic built (its config names our remote code)."""
    cfg = Path(model_id) / "config.json"
    # bytes: a binary file is transformers' to refuse
    return cfg.is_file() and f'"{BUILT_PREFIX}'.encode() in cfg.read_bytes()


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _unresolvable(model_id: str, e: Exception) -> UsageError:
    if Path(model_id).exists():
        return UsageError(f"{model_id}: not a loadable model directory ({_first_line(e)})")
    hint = "pass a local model directory" + (" (HF_HUB_OFFLINE is set)" if _offline() else "")
    known = f"; configs ship for: {', '.join(shipped_ids())}" if shipped_config_path(model_id) is None else ""
    return UsageError(f'cannot resolve model "{model_id}": not a local directory and not reachable on the hub; '
                      f"{hint}{known}")
