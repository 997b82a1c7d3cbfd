"""Stage 4: apply a layer plan to its teacher and write a Hugging Face model directory (docs/design.md §7).

The plan is applied layer by layer through `surgery.swap`, the same call the scorer makes, so what is
scored is what is shipped. The directory is written into a temporary folder beside `out` and renamed at
the end (`files.atomic_dir`): a failure leaves nothing behind, the folder a killed build leaves is removed by
the next build to the same `out`, and `overwrite` replaces an old build only once the new one is whole.

Aligned weights come from the scorer's candidate library (library.py), found by the plan's scores when not given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from .artifacts.files import atomic_dir, check_not_input, check_output, output_path
from .artifacts.header import check_same_model, to_json
from .artifacts.plan import PLAN_FILE, LayerPlan, load_plan
from .assets import EMBEDDED, embedded_dir
from .errors import UsageError, check, flags, integer, invalid, path_arg
from .hf import surgery
from .hf.assembly import as_built, as_mosaic_model, mosaic_config
from .hf.device import check_dtype
from .hf.models import Resolved, load_model, resolve
from .operators import Candidate, pattern_string, unbuildable
from .quality.library import find_library, library_weights

logger = logging.getLogger(__name__)

# what is copied from the teacher besides weights and config: tokenizer, processor, chat template (its generation
# config is the loaded teacher's, saved with the model)
TEACHER_FILES = ("tokenizer*", "vocab.*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                 "chat_template*", "*preprocessor_config.json", "processor_config.json", "*.tiktoken", "spiece.model")


def build(plan, teacher: str | None = None, library=None, out=None, dtype: str = "float32", overwrite: bool = False,
          allow_stale: bool = False, *, seed: int = 0, max_shard_size: int | str = "5GB") -> Path:
    """Build the model directory of a plan (a path or a LayerPlan) and return its path.

    `teacher` defaults to the plan's model id, `out` to build/<model>-<pattern>. `library`: a candidate library
    (.safetensors); None takes the one that belongs to the plan's scores (`find_library`, named on stderr);
    False builds without one: the aligned operators then start from the teacher initialisation (with a warning
    on stderr). `seed` fixes the parts of that initialisation that are fresh (gates, decays), so a build is
    reproducible.
    """
    import torch

    check_dtype(dtype)
    check(integer(seed), "seed", f"must be an integer, got {seed!r}")
    _check_shard_size(max_shard_size)
    flags(overwrite=overwrite, allow_stale=allow_stale)
    path_arg("teacher", teacher, optional=True, what="a model id or directory")
    if not isinstance(plan, LayerPlan):
        path_arg("plan", plan, what="a plan file or a LayerPlan")
    check(library in (None, False) or isinstance(library, (str, os.PathLike)), "library",
          f"must be a path, None (the plan's own) or False (none), got {library!r}")
    plan, plan_bytes, plan_name = _read_plan(plan)
    teacher = teacher or plan.header.model.id
    resolved = resolve(teacher)  # once: every step below reads this record
    if resolved.built:
        raise UsageError(f"{teacher} is already a model built by mosaic; build from its teacher")
    ref = resolved.ref
    if len(plan.layers) != ref.num_hidden_layers:
        raise UsageError(f"{plan_name}: the plan has {len(plan.layers)} layers but {teacher} has "
                         f"{ref.num_hidden_layers}")
    check_same_model(ref, plan.header.model, f"plan {plan_name}", allow_stale)
    if why := unbuildable(plan.layers):
        raise UsageError(f"{plan_name}: {why}")
    for candidate in plan.layers:
        candidate.check_fits(resolved.dims)  # before minutes of loading the teacher
    out = output_path(out, default_out(resolved.slug, plan.layers), folder=True)
    if library is None:
        library = find_library(plan, None if plan_name.startswith("<") else Path(plan_name))
        if library is not None:
            logger.info(f"note: using {library}, the candidate library written with this plan's scores")
    check_not_input([out], {"plan": plan_name, "teacher": teacher, "library": library})  # the one found too
    _check_out(out, overwrite)
    weights = library_weights(library or None, plan.layers, ref, allow_stale, plan.header.inputs.get("scores"))

    model = load_model(resolved, dtype=dtype)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's random state
        torch.manual_seed(seed)
        for layer, candidate in enumerate(plan.layers):
            surgery.swap(model, layer, candidate, weights=weights.get(layer))
    config = mosaic_config(model.config, plan.layers, hashlib.sha256(plan_bytes).hexdigest(), seed)
    return _write(model, config, teacher, plan_bytes, out, max_shard_size, overwrite)


def check_generation(model_id: str, layer: int = 0, new_tokens: int = 8, candidates=None, prompt_len: int = 12,
                     seed: int = 0) -> list[dict]:
    """Build, in memory, the teacher with each candidate in `layer` (the built model class, as `build` writes it) and
    compare its greedy `generate` with the static cache (the default), the dynamic cache and no cache."""
    import torch

    from .operators import default_candidates

    if new_tokens < 1:
        raise invalid("new_tokens", f"must be 1 or more, got {new_tokens}")
    resolved = resolve(model_id)
    if resolved.built:
        raise UsageError(f"{model_id} is already a model built by mosaic; check its teacher")
    model = load_model(resolved)
    dims = resolved.dims
    if not 0 <= layer < dims.num_layers:
        raise UsageError(f"layer {layer} is out of range: the model has {dims.num_layers} layers "
                         f"(0..{dims.num_layers - 1})")
    if candidates is None:
        # a window shorter than prompt + generation, so decoding runs past it
        candidates = list(dict.fromkeys(c if c.op != "swa" else Candidate.of("swa", {"window": 4})
                                        for c in default_candidates(dims)))
    prompt = torch.randint(3, dims.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                  attention_mask=torch.ones_like(prompt))
    own = resolved.teacher_ops
    for i, c in enumerate(own):  # every layer as the built class holds it (e.g. Phi-3's fused qkv split)
        surgery.swap(model, i, c)
    # an MLP candidate is checked as a layer choice: under the teacher's own mixer
    candidates = [c if c.spec.axis == "mixer" else own[layer].with_mlp(c) for c in candidates]
    results = []
    for cand in candidates:
        layers = list(own)
        layers[layer] = cand
        surgery.swap(model, layer, cand)
        built = as_built(model, layers, seed)
        with torch.no_grad():
            runs = {mode: built.generate(prompt, **kwargs, **extra)[0, prompt_len:].tolist() for mode, extra in
                    (("static", {}), ("dynamic", {"cache_implementation": "dynamic"}), ("none", {"use_cache": False}))}
        results.append({"candidate": str(cand), "match": runs["static"] == runs["dynamic"] == runs["none"],
                        "tokens": runs["none"]})
        surgery.restore(model, layer)
    return results


# ---- inputs --------------------------------------------------------------------------------------

def _read_plan(plan) -> tuple[LayerPlan, bytes, str]:
    if isinstance(plan, LayerPlan):
        text = json.dumps(to_json(plan), indent=2, sort_keys=True) + "\n"
        return plan, text.encode(), f"<{plan.pattern}>"
    path = Path(plan)
    loaded = load_plan(path)
    return loaded, path.read_bytes(), str(path)


def default_out(teacher_slug: str, layers) -> Path:
    """Where a plan of `layers` is built by default: build/<model>-<pattern> when the pattern's letters say every
    layer's choice (operators without params, the teacher's MLP), else the pattern (its first 32 letters) and the
    first 8 hex digits of the layers' sha256, so that plans differing only in a window, a rank, KV heads or an MLP
    never share a folder."""
    pattern = pattern_string(layers)
    if len(pattern) <= 64 and not any(c.params or c.mlp for c in layers):
        return Path("build") / f"{teacher_slug}-{pattern}"
    digest = hashlib.sha256(json.dumps([c.to_json() for c in layers], sort_keys=True).encode()).hexdigest()
    return Path("build") / f"{teacher_slug}-{pattern[:32]}-{digest[:8]}"


def _check_out(out: Path, overwrite: bool) -> None:
    check_output(out, folder=True, overwrite=overwrite)  # refuses a file, and any existing out without overwrite
    if out.exists() and any(out.iterdir()) and not (out / PLAN_FILE).is_file():
        raise UsageError(f"{out} is not empty and is not a mosaic build (no {PLAN_FILE}); refusing to replace it")


def _check_shard_size(value) -> None:
    """Refuse a `max_shard_size` that save_pretrained would fail on only once the model is built: a positive number of
    bytes, or a positive size with a unit, e.g. "5GB" (units KB, MB, GB, TB: powers of 1000, as the hub counts)."""
    ok = integer(value) and value > 0
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(KB|MB|GB|TB)\s*", value, flags=re.IGNORECASE)
        ok = m is not None and float(m.group(1)) > 0
    check(ok, "max_shard_size", f'must be a positive number of bytes or a size such as "5GB" (KB, MB, GB, TB), got '
                                f"{value!r}")


# ---- output --------------------------------------------------------------------------------------

def _write(model, config, teacher: str, plan_bytes: bytes, out: Path, max_shard_size, overwrite: bool) -> Path:
    with atomic_dir(out, replace=overwrite) as tmp:
        built = as_mosaic_model(model, config)
        built.save_pretrained(tmp, max_shard_size=max_shard_size)
        here = Path(__file__).parent / "modeling"
        for source in sorted(here.glob("*.py")):
            shutil.copyfile(source, tmp / source.name)
        _copy_teacher_files(teacher, tmp)
        (tmp / PLAN_FILE).write_bytes(plan_bytes)
    return out


def _teacher_dir(teacher: str) -> Path | None:
    if teacher in EMBEDDED:
        return Path(embedded_dir(teacher))  # its tokenizer (and processor) ship beside the weights
    if Path(teacher).is_dir():
        return Path(teacher)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(teacher, allow_patterns=list(TEACHER_FILES)))
    except Exception as e:  # offline and not cached, gated, ...: the model still builds
        logger.warning(f"warning: cannot fetch the tokenizer of {teacher} ({type(e).__name__}); the built model has "
                       "none")
        return None


def _copy_teacher_files(teacher: str, dest: Path) -> None:
    source = _teacher_dir(teacher)
    if source is None:
        return
    copied = set()
    for pattern in TEACHER_FILES:
        for f in source.glob(pattern):
            if f.is_file() and f.name not in copied:
                shutil.copyfile(f, dest / f.name)
                copied.add(f.name)
    if not any(n.startswith("tokenizer") for n in copied):
        logger.info(f"note: {teacher} has no tokenizer files; the built model has none")
