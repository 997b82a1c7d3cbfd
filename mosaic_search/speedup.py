"""`mosaic bench`: end-to-end TTFT / TPOT of a mosaic model against its teacher, under the profiler's harness,
next to the plan's predicted speedup. (Named speedup, not bench, so the module never shadows the
`mosaic_search.bench` entry point once imported.)"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import MosaicError, UsageError
from .schema import LayerPlan, load_plan


def bench(target, vs: str | None = None, workloads=None, device: str = "cpu", dtype: str | None = None,
          timer=None, seed: int = 0, progress=None, compile_decode: bool | None = None,
          rounds: int | None = None, image_tokens: int = 0) -> list[dict]:
    """Measure speedup of `target` over the teacher `vs` for each workload.

    `target` is a built model directory (loaded with trust_remote_code, as a user would) or a plan JSON,
    which is applied with `surgery.swap` to the teacher's architecture with random weights (latency does
    not depend on values, so real-size plans can be timed without the teacher's weights).
    Workloads default to those the plan predicted; decode steps are compiled as in `profiler.load_bench`;
    `rounds` passes alternate teacher and model with samples pooled (`profiler.default_rounds`), and a
    paired timer (CPU) times each model step right after a teacher step and reports their typical ratio;
    `image_tokens`: a VLM's prefill also encodes an image (use the profile's value, see `profiler.profile`).
    Returns one row per workload.
    """
    from . import profiler, surgery
    from .timing import Pool, default_timer

    device = profiler.check_device(device)
    plan, model_dir = _resolve(target)
    teacher = vs or plan.header.model.id
    names = workloads or list(plan.predicted)
    if not names:
        raise UsageError("no workloads: the plan predicts none; pass --workload")
    wls = [w if not isinstance(w, str) else (profiler.parse_workload(w) if ":" in w else profiler.workload_from_name(w))
           for w in names]
    timer = timer or default_timer(device)
    _, base = profiler.load_bench(teacher, device, dtype, seed, compile_decode, image_tokens)
    if model_dir is None:
        _, mine = profiler.load_bench(teacher, device, dtype, seed, compile_decode, image_tokens)
        for i, c in enumerate(plan.layers):
            surgery.swap(mine.model, i, c)
    else:
        mine = _load_built(model_dir, device, dtype or base.stack.embed.weight.dtype, base.compile_decode, image_tokens)
    rounds = rounds or profiler.default_rounds(device)
    pool = Pool(timer)
    for r in range(rounds):  # teacher and model alternate, so a slow phase of the machine hits both
        for i, w in enumerate(wls):
            if pool.paired:
                pool.reference = base.model_fn(w)
            else:
                pool.measure(("baseline", w.name), lambda: base.model_fn(w), w)
            pool.measure(("model", w.name), lambda: mine.model_fn(w), w)
            if progress:
                progress(r * len(wls) + i + 1, rounds * len(wls), w.name)
    if pool.failed:
        (_, w), (status, reason) = next(iter(pool.failed.items()))
        raise MosaicError(f"{w}: {status}: {reason}")
    stats = pool.stats()
    rows = []
    for w in wls:
        teacher_ms = stats["baseline", w.name].median_ms
        model_ms = stats["model", w.name].median_ms
        measured = teacher_ms / model_ms
        pred = plan.predicted.get(w.name, {}).get("speedup")
        rows.append({"workload": w.name, "phase": w.phase, "batch_size": w.batch_size, "seq_len": w.seq_len,
                     "teacher_ms": teacher_ms, "model_ms": model_ms, "measured_speedup": measured,
                     "predicted_speedup": pred,
                     "error_pct": None if pred is None else 100 * (pred - measured) / measured})
    return rows


def _resolve(target) -> tuple[LayerPlan, Path | None]:
    path = Path(target)
    if path.is_dir():
        plan_file = path / "mosaic_plan.json"
        if not plan_file.is_file():
            raise UsageError(f"{path}: not a mosaic model directory (no mosaic_plan.json)")
        return load_plan(plan_file), path
    if path.suffix == ".json":
        return load_plan(path), None
    raise UsageError(f"{target}: expected a built model directory or a plan .json")


def _load_built(model_dir: Path, device: str, dtype, compile_decode: bool, image_tokens: int):
    """A built model loaded as users load it, wrapped for the harness."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from . import surgery
    from .profiler import _Bench

    config = json.loads((model_dir / "config.json").read_text())
    auto = AutoModelForImageTextToText if "vision_config" in config else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype).eval().to(device)
    return _Bench(model, surgery.text_stack(model), device, dtype if isinstance(dtype, torch.dtype) else
                  getattr(torch, dtype), compile_decode=compile_decode, image_tokens=image_tokens)
