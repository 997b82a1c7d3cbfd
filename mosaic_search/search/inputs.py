"""Stage 3's inputs: the latency profile and the sensitivity table, given or discovered, checked to belong together
and to the target, with their fingerprints."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..artifacts.files import PLANS_DIR, PROFILES_DIR
from ..artifacts.header import check_same_model, sha256_file, sha256_json, to_json
from ..artifacts.profile import LatencyProfile, load_profile
from ..artifacts.sensitivity import SensitivityTable, load_sensitivity
from ..errors import StaleInputError, UsageError, path_arg
from .sources import describe, source
from .specs import pairs

logger = logging.getLogger(__name__)


def _ranked(folder, kind: str, want=None) -> list[Path]:
    """Artifacts of `kind` under `folder`, newest `created_at` first, optionally only those for the model `want`."""
    found = []
    for path in Path(folder).glob("**/*.json"):
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # only the chosen file is validated, by its loader; others may belong to other tools
        if not isinstance(obj, dict) or obj.get("kind") != kind:
            continue
        m = obj.get("model") if isinstance(obj.get("model"), dict) else {}
        if want is not None and (m.get("config_sha256"), m.get("num_hidden_layers")) != (
                want.config_sha256, want.num_hidden_layers):
            continue
        found.append((str(obj.get("created_at", "")), str(path), path))
    return [p for *_, p in sorted(found, reverse=True)]


def _load(thing, loader, param: str):
    if thing is None or isinstance(thing, (LatencyProfile, SensitivityTable)):
        return thing, None
    path_arg(param, thing, what="a path or a record")
    return loader(thing), Path(thing)


def _fingerprint(artifact, path) -> str:
    return sha256_file(path) if path else sha256_json(to_json(artifact))


def _env_has(env: dict, key: str, value) -> bool:
    """Whether a profile's env matches: a device by name fragment ('h100' in 'NVIDIA H100 80GB HBM3'), else exactly."""
    if key == "device":
        return any(str(value).lower() in str(env.get(k, "")).lower() for k in ("device_name", "device"))
    return str(env.get(key, "")) == str(value)


def load_inputs(profile=None, scores=None, *, allow_stale=False, device=None, target_env=None,
                profiles_dir=PROFILES_DIR, plans_dir=PLANS_DIR) -> tuple[LatencyProfile, SensitivityTable, dict, dict]:
    """The profile and the sensitivity table (records, paths, or None for the newest matching ones under
    `profiles_dir` / `plans_dir`), {"profile", "scores": sha256}, and {"profile", "scores": `source`}: which file
    each is, for which model and device, made when, and whether it was discovered (a note on stderr says so too).
    They are checked to belong together.

    Raises UsageError (exit 2) when none is found or the layer counts differ, StaleInputError (exit 4) for
    another model, or a profile whose env lacks `device` / `target_env` ("KEY=VALUE"), unless `allow_stale`.
    """
    given_profile, given_scores = profile, scores
    profile, ppath = _load(profile, load_profile, "profile")
    scores, spath = _load(scores, load_sensitivity, "scores")
    if profile is None and scores is not None:
        ppath = next(iter(_ranked(profiles_dir, LatencyProfile.kind, scores.header.model)), None)
        if ppath is None:
            raise UsageError(f"no latency profile for {scores.header.model.id} under {profiles_dir}/; "
                             "run `mosaic profile` or pass `profile`")
        profile = load_profile(ppath)
    elif profile is None:
        for path in _ranked(profiles_dir, LatencyProfile.kind):
            loaded = load_profile(path)
            match = _ranked(plans_dir, SensitivityTable.kind, loaded.header.model)
            if match:
                profile, ppath, spath = loaded, path, match[0]
                scores = load_sensitivity(spath)
                break
        else:
            raise UsageError(f"no latency profile under {profiles_dir}/ with a matching sensitivity table under "
                             f"{plans_dir}/; run `mosaic profile` and `mosaic score`, or pass `profile`/`scores`")
    if scores is None:
        spath = next(iter(_ranked(plans_dir, SensitivityTable.kind, profile.header.model)), None)
        if spath is None:
            raise UsageError(f"no sensitivity table for {profile.header.model.id} under {plans_dir}/; "
                             "run `mosaic score` or pass `scores`")
        scores = load_sensitivity(spath)
    pm, sm = profile.header.model, scores.header.model
    if pm.num_hidden_layers != sm.num_hidden_layers:
        raise UsageError(f"the profile has {pm.num_hidden_layers} layers ({pm.id}) but the sensitivity table has "
                         f"{sm.num_hidden_layers} ({sm.id}); they cannot describe the same model")
    check_same_model(pm, sm, "sensitivity table", allow_stale)
    want = dict(pairs(target_env, "target_env"))
    if device:
        want["device"] = device
    env = profile.header.env
    for key, value in want.items():
        if not allow_stale and not _env_has(env, key, value):
            have = env.get("device_name", env.get("device")) if key == "device" else env.get(key)
            raise StaleInputError(f'the profile was measured with {key}="{have}", not "{value}"; '
                                  "profile on the target or pass `allow_stale`")
    inputs = {"profile": _fingerprint(profile, ppath), "scores": _fingerprint(scores, spath)}
    sources = {"profile": source(profile, ppath, given_profile), "scores": source(scores, spath, given_scores)}
    for name, src in sources.items():
        if src["discovered"]:
            logger.info("note: using the newest matching %s: %s", name, describe(src))
    return profile, scores, inputs, sources
