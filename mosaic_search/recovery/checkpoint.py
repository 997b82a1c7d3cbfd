"""Durable distillation: the trainable weights and optimizer state, written whole every few steps into
`<out>.checkpoint/` with the settings that made them, and read back by a resumed run with the same settings only."""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts.files import atomic_dir, write_json
from ..artifacts.header import sha256_file, sha256_json
from ..artifacts.plan import PLAN_FILE
from ..errors import StaleInputError
from ..hf import distributed

STATE = "state.json"
TENSORS = "state.safetensors"


def checkpoint_path(out: Path) -> Path:
    """The checkpoint folder of a run writing `out`: `<out>.checkpoint` beside it (removed when the run ends)."""
    return out.with_name(out.name + ".checkpoint")


def exists(ckpt: Path) -> bool:
    """Whether a checkpoint was written at `ckpt`."""
    return (ckpt / STATE).is_file()


def model_sha256(model: str) -> str:
    """The model directory's identity without hashing gigabytes of weights: its config and plan record."""
    return sha256_json([sha256_file(Path(model) / name) for name in ("config.json", PLAN_FILE)])


def fingerprint(recorded: dict) -> str:
    """The fingerprint of a run's recorded settings (`DistillSettings.recorded` and its data)."""
    return sha256_json(recorded)


def save(ckpt: Path, recorded: dict, step: int, losses: list, params, opt, write: bool = True) -> None:
    """Trainable weights and optimizer state after `step` steps, written whole (the old checkpoint stays until then).
    With FSDP2 every process calls it (the shards are gathered) and one `write`s."""
    from safetensors.torch import save_file

    tensors = {f"param/{n}": distributed.whole(p.detach()).contiguous().cpu() for n, p in params}
    state = opt.state_dict()
    for idx, st in state["state"].items():
        for key, value in st.items():
            tensors[f"opt/{idx}/{key}"] = distributed.whole(value.detach()).contiguous().cpu().reshape(value.shape)
    if not write:
        return
    with atomic_dir(ckpt) as tmp:
        save_file(tensors, str(tmp / TENSORS))
        write_json(tmp / STATE, {"fingerprint": fingerprint(recorded), "settings": recorded, "step": step,
                                 "losses": losses, "param_groups": state["param_groups"]})


def check(ckpt: Path, recorded: dict) -> None:
    """Refuse, naming them, the settings in which the checkpoint at `ckpt` (if any) differs from `recorded`."""
    meta = ckpt / STATE
    if not meta.is_file():
        return
    saved, now = json.loads(meta.read_text()).get("settings", {}), json.loads(json.dumps(recorded))
    differ = [f"{k} ({saved[k]} there, {now[k]} now)" for k in now if k in saved and saved[k] != now[k]]
    if differ:
        raise StaleInputError(f"{ckpt}: the checkpoint was made with other {', '.join(differ)}; rerun with the same "
                              "arguments, or without --resume to start over")


def restore(ckpt: Path, recorded: dict, params, opt) -> tuple[int, list]:
    """(step, losses) of the checkpoint at `ckpt`, loaded into `params` and `opt`; (0, []) when there is none; a
    StaleInputError when it was made with other settings, model, data or process count."""
    import torch
    from safetensors.torch import load_file

    meta = ckpt / STATE
    if not meta.is_file():
        return 0, []
    obj = json.loads(meta.read_text())
    if obj.get("fingerprint") != fingerprint(recorded):
        check(ckpt, recorded)
        raise StaleInputError(f"{ckpt}: the checkpoint was made with other settings, model, data or process count; "
                              "rerun with the same arguments, or without --resume to start over")
    tensors = load_file(str(ckpt / TENSORS))
    with torch.no_grad():
        for n, p in params:
            p.copy_(distributed.shard_like(tensors[f"param/{n}"], p))
    state = {"state": {}, "param_groups": obj["param_groups"]}
    for key, value in sorted(tensors.items()):  # one order on every process: sharding is collective
        if key.startswith("opt/"):
            _, idx, name = key.split("/")
            p = params[int(idx)][1]
            state["state"].setdefault(int(idx), {})[name] = (distributed.shard_like(value, p) if value.shape == p.shape
                                                              else value)
    opt.load_state_dict(state)
    return int(obj["step"]), list(obj["losses"])
