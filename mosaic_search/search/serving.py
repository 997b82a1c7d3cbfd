"""The serving regime: memory (weights + generation cache at a batch and a context) as a row of the MIP, and the
throughput target, which picks the plan and the largest batch that fit a memory budget.

Memory of a plan = the model's weights outside the decoder layers (`LatencyProfile.fixed_weight_bytes`) + per layer
its weights with its choice (`LatencyProfile.layer_weight_bytes`) + batch x its cache at the context
(`LatencyProfile.cache_bytes`), both axes composed as everywhere else (`operators.compose`). Throughput at batch B:
B / TPOT(B), TPOT from the profile's decode workload at (B, context); the teacher's reference is its own largest
batch that fits the same memory.
"""

from __future__ import annotations

from ..errors import InfeasibleError, UsageError
from .problem import Problem, _cache_workload, positive

MEMORY = "memory"  # `solver.run_mip(minimize=MEMORY)`: the least weights + cache


def _parts(p: Problem, layer: int, c, workload: str, batch: int) -> int:
    weights = p.profile.layer_weight_bytes(layer, c)
    cache = p.profile.cache_bytes(layer, c, workload)
    if weights is None or cache is None:
        raise UsageError(f"layer {layer} {c}: the profile records no weight or cache bytes for it; re-run mosaic "
                         "profile with this mosaic")
    return weights + batch * cache


def teacher_memory(p: Problem, workload: str, batch: int) -> int:
    """Bytes the teacher holds serving `batch` sequences at `workload`'s context: all its weights + its caches."""
    return p.profile.fixed_weight_bytes + sum(_parts(p, l, c, workload, batch)
                                              for l, c in enumerate(p.profile.teacher_layers()))


def set_memory(p: Problem, max_memory, batch: int, context) -> Problem:
    """Bound the plan's memory at `batch` sequences of `context` tokens (default: the profile's longest): `max_memory`
    in bytes, or, at most 1, as a fraction of the teacher's memory there. Fills `p.memory` per choice and
    `p.memory_limit` (the bytes left for the layers); returns `p`. UsageError for a profile without weight bytes."""
    if max_memory is None:
        return p
    value = positive("--max-memory", max_memory)
    if not p.profile.weight_bytes or p.profile.fixed_weight_bytes is None:
        raise UsageError("--max-memory: the profile records no weight bytes (written by an older mosaic); re-run "
                         "mosaic profile")
    ref = _cache_workload(p.profile, context)
    p.memory = {(ch.layer, ch.candidate): _parts(p, ch.layer, ch.candidate, ref.name, batch)
                for cs in p.choices for ch in cs}
    teacher = teacher_memory(p, ref.name, batch)
    limit = value * teacher if value <= 1 else value
    p.memory_limit = limit - p.profile.fixed_weight_bytes
    p.given.update(max_memory=max_memory, max_memory_bytes=limit, memory_batch=batch, memory_workload=ref.name,
                   teacher_memory_bytes=teacher)
    return p


def memory_bytes(p: Problem, layers) -> int | None:
    """The whole model's memory (bytes) with one choice per layer, at the problem's batch and context; None
    without a memory bound."""
    if p.memory_limit is None:
        return None
    return p.profile.fixed_weight_bytes + sum(p.memory[l, c] for l, c in enumerate(layers))


def smallest_memory(p: Problem, time_limit_s=60) -> int | None:
    """The least memory any buildable assignment allowed by `p` takes (its other budgets dropped), or None."""
    from .solver import run_mip

    limit, p.memory_limit = p.memory_limit, 1e300
    try:
        chosen, _ = run_mip(p, minimize=MEMORY, budgets=False, time_limit_s=time_limit_s)
    finally:
        p.memory_limit = limit
    return None if chosen is None else memory_bytes(p, [cs[0] for cs in chosen])


def memory_note(p: Problem, time_limit_s=60) -> str | None:
    """Why a memory-bounded problem is infeasible when its bound is below every plan's memory (one line), else
    None."""
    if p.memory_limit is None:
        return None
    least = smallest_memory(p, time_limit_s)
    have = p.memory_limit + p.profile.fixed_weight_bytes
    if least is not None and least <= have * (1 + 1e-9):
        return None
    at = f"batch {p.given['memory_batch']}, workload {p.given['memory_workload']}"
    return (f"memory limit {have:.0f} bytes is below the smallest reachable memory, {least} bytes (weights + cache "
            f"at {at})")


def solve_serving(throughput_speedup, memory, context=None, *, time_limit_s=60, mip_gap=1e-4, **inputs):
    """The least-loss plan, and the largest batch the profile holds for it, whose weights + cache at `context`
    fit `memory` (bytes, or at most 1: a fraction of the teacher's at its smallest batch) and whose throughput,
    batch / TPOT(batch), is at least `throughput_speedup` times the teacher's at its own largest fitting batch.

    Returns (Problem, chosen layers, solver info, serving record) for `solver` to verify and write; the record
    (batch, throughputs in tokens/s, memory) goes into the plan's constraints. Raises InfeasibleError (exit 3)
    naming the smallest reachable memory when nothing fits, or the best reachable throughput speedup.
    """
    from .problem import prepare
    from .solver import run_mip

    x = positive("--throughput-speedup", throughput_speedup)
    positive("--memory", memory)
    for key in ("speedup", "ttft_speedup", "tpot_speedup", "workloads", "max_memory", "cache_batch", "cache_context",
                "max_cache_bytes"):
        if inputs.pop(key, None) not in (None, 1 if key == "cache_batch" else None):
            raise UsageError(f"--throughput-speedup chooses the batch and the TPOT targets itself; drop "
                             f"--{key.replace('_', '-')}")
    base = prepare(**inputs)
    ctx = _cache_workload(base.profile, context).seq_len
    decode = sorted((w for w in base.profile.workloads if w.phase == "decode" and w.seq_len == ctx),
                    key=lambda w: w.batch_size)
    if not decode:
        raise UsageError(f"--context {ctx}: the profile has no decode workload at that context")
    smallest = decode[0].batch_size
    limit = memory * teacher_memory(base, decode[0].name, smallest) if memory <= 1 else memory
    fits = [w for w in decode if teacher_memory(base, w.name, w.batch_size) <= limit]
    ref_w = max(fits or decode[:1], key=lambda w: w.batch_size / base.profile.teacher_ms(w.name))
    ref = 1000 * ref_w.batch_size / base.profile.teacher_ms(ref_w.name)  # tokens per second
    found, best_reach = [], {}
    for w in reversed(decode):
        need = x * ref * base.profile.teacher_ms(w.name) / (1000 * w.batch_size)  # TPOT speedup over the teacher
        p = prepare(workloads=[w.name], tpot_speedup=need, max_memory=limit, cache_batch=w.batch_size,
                    cache_context=ctx, **inputs)
        chosen, info = run_mip(p, time_limit_s=time_limit_s, mip_gap=mip_gap)
        if chosen is not None:
            found.append((info["objective"], -w.batch_size, w, p, chosen, info))
        elif memory_note(p, time_limit_s) is None:
            fast, _ = run_mip(p, minimize=w.name, budgets=False, time_limit_s=time_limit_s)
            ms = p.profile.predicted_ms(w.name, [cs[0] for cs in fast]) if fast else None
            if ms:
                best_reach[w.batch_size] = 1000 * w.batch_size / ms / ref
    if not found:
        if not best_reach:
            p = prepare(workloads=[decode[0].name], max_memory=limit, cache_batch=smallest, cache_context=ctx, **inputs)
            raise InfeasibleError(memory_note(p, time_limit_s) or "no buildable plan fits the memory")
        b, s = max(best_reach.items(), key=lambda kv: kv[1])
        raise InfeasibleError(f"throughput speedup {x:.3f}x not reachable within {limit:.0f} bytes; the best is "
                              f"{s:.3f}x, at batch {b}")
    objective, _, w, p, chosen, info = min(found, key=lambda f: f[:2])
    layers = [cs[0] for cs in chosen]
    ms = p.profile.predicted_ms(w.name, layers)
    record = {"throughput_speedup": x, "memory_bytes_limit": limit, "context": ctx, "batch": w.batch_size,
              "workload": w.name, "throughput_tokens_per_s": 1000 * w.batch_size / ms,
              "teacher_batch": ref_w.batch_size, "teacher_throughput_tokens_per_s": ref,
              "teacher_fits": bool(fits), "memory_bytes": memory_bytes(p, layers)}
    p.given["serving"] = record
    return p, chosen, info, record
