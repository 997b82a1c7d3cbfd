"""What a plan holds in memory while serving: the model's weights plus the generation cache at a batch and a context,
read from the profile (`LatencyProfile.fixed_weight_bytes`, `layer_weight_bytes`, `cache_bytes`; both axes composed
by `operators.compose`), and the memory bound it puts in the solver's problem (`Problem.rows`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError

MEMORY = "memory"  # `solver.run_mip(minimize=MEMORY)`: the least weights + cache


@dataclass(frozen=True)
class MemoryBound:
    """At most `limit_bytes` of weights + cache for `batch` sequences at the context of `workload`: `value` as given
    (bytes, or at most 1: that fraction of `teacher_bytes`, the teacher's there). `layer_limit`: what is left for the
    decoder layers once the fixed part's weights are counted; `per_choice`: {(layer, candidate): its weights + batch x
    cache bytes}."""

    value: float
    limit_bytes: float
    layer_limit: float
    workload: str
    batch: int
    teacher_bytes: int
    per_choice: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        """As a plan's `constraints` records it."""
        return {"max_memory": self.value, "max_memory_bytes": self.limit_bytes, "memory_batch": self.batch,
                "memory_workload": self.workload, "teacher_memory_bytes": self.teacher_bytes}


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
                                            for l, c in enumerate(profile.teacher))


def memory_bound(profile, options, value: float, batch: int, workload) -> MemoryBound:
    """The bound on the memory of `batch` sequences at `workload`'s context: `value` bytes, or, at most 1, that
    fraction of the teacher's memory there, costed for every choice of `options` (choices per layer). UsageError
    for a profile without weight bytes."""
    if not profile.weight_bytes or profile.fixed_weight_bytes is None:
        raise UsageError("`max_memory`: the profile records no weight bytes (written by an older mosaic); re-run "
                         "mosaic profile")
    per_choice = {(ch.layer, ch.candidate): layer_bytes(profile, ch.layer, ch.candidate, workload.name, batch)
                  for cs in options for ch in cs}
    teacher = teacher_memory(profile, workload.name, batch)
    limit = value * teacher if value <= 1 else value
    return MemoryBound(value, limit, limit - profile.fixed_weight_bytes, workload.name, batch, teacher, per_choice)


def memory_bytes(p, layers) -> int | None:
    """The whole model's memory (bytes) with one choice per layer at problem `p`'s memory bound; None without one."""
    if p.memory is None:
        return None
    return p.profile.fixed_weight_bytes + sum(p.memory.per_choice[l, c] for l, c in enumerate(layers))
