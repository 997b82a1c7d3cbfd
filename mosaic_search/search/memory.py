"""What a plan holds in memory while serving: the model's weights plus the generation cache at a batch and a context,
read from the profile (`LatencyProfile.fixed_weight_bytes`, `layer_weight_bytes`, `cache_bytes`; both axes composed
by `operators.compose`), and the memory row it puts in the solver's problem."""

from __future__ import annotations

from ..errors import UsageError

MEMORY = "memory"  # `solver.run_mip(minimize=MEMORY)`: the least weights + cache


def layer_bytes(profile, layer: int, c, workload: str, batch: int) -> int:
    """One layer's weights with choice `c` + `batch` x its cache at `workload`'s context; UsageError without them."""
    weights, cache = profile.layer_weight_bytes(layer, c), profile.cache_bytes(layer, c, workload)
    if weights is None or cache is None:
        raise UsageError(f"layer {layer} {c}: the profile records no weight or cache bytes for it; re-run mosaic "
                         "profile with this mosaic")
    return weights + batch * cache


def teacher_memory(profile, workload: str, batch: int) -> int:
    """Bytes the teacher holds serving `batch` sequences at `workload`'s context: all its weights + its caches."""
    return profile.fixed_weight_bytes + sum(layer_bytes(profile, l, c, workload, batch)
                                            for l, c in enumerate(profile.teacher_layers()))


def set_memory(p, value: float, batch: int, workload) -> None:
    """Bound problem `p`'s memory at `batch` sequences of `workload`'s context: `value` bytes, or, at most 1, that
    fraction of the teacher's memory there. Fills `p.memory` per choice and `p.memory_limit` (the bytes left for the
    layers). UsageError for a profile without weight bytes."""
    prof = p.profile
    if not prof.weight_bytes or prof.fixed_weight_bytes is None:
        raise UsageError("--max-memory: the profile records no weight bytes (written by an older mosaic); re-run "
                         "mosaic profile")
    p.memory = {(ch.layer, ch.candidate): layer_bytes(prof, ch.layer, ch.candidate, workload.name, batch)
                for cs in p.choices for ch in cs}
    teacher = teacher_memory(prof, workload.name, batch)
    limit = value * teacher if value <= 1 else value
    p.memory_limit = limit - prof.fixed_weight_bytes
    p.given.update(max_memory=value, max_memory_bytes=limit, memory_batch=batch, memory_workload=workload.name,
                   teacher_memory_bytes=teacher)


def memory_bytes(p, layers) -> int | None:
    """The whole model's memory (bytes) with one choice per layer at problem `p`'s batch and context; None without a
    memory bound."""
    if p.memory_limit is None:
        return None
    return p.profile.fixed_weight_bytes + sum(p.memory[l, c] for l, c in enumerate(layers))
