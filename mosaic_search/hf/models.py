"""Resolving `--model/--teacher`: the `tiny` alias, a local directory, or a hub id via `from_pretrained`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..artifacts.schema import ModelRef, sha256_json
from ..assets import TINY_DIR, shipped_config_path, shipped_ids
from ..errors import MosaicError, UsageError
from .surgery import architecture

TINY = "tiny"
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

    if model_id == TINY:
        return AutoConfig.from_pretrained(_tiny_dir())
    try:
        return AutoConfig.from_pretrained(model_id, trust_remote_code=is_mosaic_dir(model_id))
    except (OSError, ValueError) as e:
        shipped = shipped_config_path(model_id)
        if shipped_ok and shipped is not None:
            if model_id not in _NOTED:  # a stage may read the config more than once: one note per process
                _NOTED.add(model_id)
                why = "HF_HUB_OFFLINE is set and it is not in the local cache" if _offline() else _first_line(e)
                print(f"note: {model_id} is not reachable ({why}); using the shipped config (dimensions only)",
                      file=sys.stderr)
            return _config_from_file(shipped)
        raise _unresolvable(model_id, e) from None


def load_model(model_id: str, dtype: str = "float32", device: str = "cpu"):
    """Load a teacher with its weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    torch_dtype = getattr(torch, dtype)
    if model_id == TINY:
        model = AutoModelForCausalLM.from_pretrained(_tiny_dir(), dtype=torch_dtype)
        model.name_or_path = TINY
        return model.eval().to(device)
    config = load_config(model_id)
    auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(model_id, dtype=torch_dtype, trust_remote_code=is_mosaic_dir(model_id))
    except (OSError, ValueError) as e:
        raise _unresolvable(model_id, e) from None
    return model.eval().to(device)


def model_from_config(config, dtype: str = "float32", seed: int = 0):
    """A randomly initialised model of this config (for latency work, where values do not matter)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM
    return auto.from_config(config, dtype=getattr(torch, dtype)).eval()


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


def _tiny_dir() -> str:
    """The embedded teacher's directory, or a one-line error saying how to recreate it."""
    if not (TINY_DIR / "config.json").is_file() or not (TINY_DIR / "model.safetensors").is_file():
        raise MosaicError(f"the embedded teacher is missing from {TINY_DIR} (a broken install?); recreate it with "
                          f"`python -m mosaic_search.assets.train_tiny --out {TINY_DIR}`")
    return str(TINY_DIR)


def is_mosaic_dir(model_id: str) -> bool:
    """Whether `model_id` is a local directory holding a model mosaic built (its config names our remote code)."""
    cfg = Path(model_id) / "config.json"
    return cfg.is_file() and b'"mosaic_' in cfg.read_bytes()  # bytes: a binary file is transformers' to refuse


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _unresolvable(model_id: str, e: Exception) -> UsageError:
    if Path(model_id).exists():
        return UsageError(f"{model_id}: not a loadable model directory ({_first_line(e)})")
    hint = "pass a local model directory" + (" (HF_HUB_OFFLINE is set)" if _offline() else "")
    known = f"; configs ship for: {', '.join(shipped_ids())}" if shipped_config_path(model_id) is None else ""
    return UsageError(f'cannot resolve model "{model_id}": not a local directory and not reachable on the hub; '
                      f"{hint}{known}")
