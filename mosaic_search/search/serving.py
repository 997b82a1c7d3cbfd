"""The serving regime's throughput target: the plan and the largest batch that fit a memory budget (memory as
`memory.py` counts it: weights + batch x cache at the context) with batch / TPOT at least X times the teacher's.

Throughput at batch B:
B / TPOT(B), TPOT from the profile's decode workload at (B, context); the teacher's reference is its own largest
batch that fits the same memory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..artifacts import files
from ..artifacts.files import PLANS_DIR
from ..artifacts.header import save
from ..artifacts.plan import LayerPlan
from ..errors import InfeasibleError, UsageError, check, invalid
from .memory import memory_bytes, teacher_memory
from .problem import _cache_workload, check_keywords, prepare, read_paths
from .specs import positive
from .solver import _plan, check_gap, memory_note, plan_path, run_mip, verify


def solve_serving(throughput_speedup, memory, context=None, *, time_limit_s=60, mip_gap=1e-4, out=None, write=True,
                  overwrite=False, **inputs) -> LayerPlan:
    """The least-loss plan, and the largest batch the profile holds for it, whose weights + cache at `context`
    fit `memory` (bytes, or at most 1: a fraction of the teacher's at its smallest batch) and whose throughput,
    batch / TPOT(batch), is at least `throughput_speedup` times the teacher's at its own largest fitting batch.

    Other keywords are `problem.prepare`'s, less those it sets (speedups, workloads, memory and cache bounds). The
    plan, verified, goes to `out` (as `solver.solve` writes); its `constraints["serving"]` records the batch,
    throughputs (tokens/s) and memory. Raises InfeasibleError (exit 3) naming the smallest reachable memory when
    nothing fits, or the best reachable throughput speedup.
    """
    x = positive("throughput_speedup", throughput_speedup)
    check(x >= 1, "throughput_speedup", f"must be at least 1 (a speedup over the teacher), got {throughput_speedup}: "
                                        "below 1 it would allow serving slower than the teacher")
    positive("memory", memory)
    check_keywords(solve_serving, inputs)
    check_gap(mip_gap)
    positive("time_limit_s", time_limit_s)
    for key in ("speedup", "ttft_speedup", "tpot_speedup", "workloads", "max_memory", "cache_batch", "cache_context",
                "max_cache_bytes"):
        if inputs.pop(key, None) not in (None, 1 if key == "cache_batch" else None):
            raise UsageError(f"`throughput_speedup` chooses the batch and the TPOT targets itself; drop `{key}`")
    base = prepare(**inputs)
    path = plan_path(base.profile.header.model.id, out, plans_dir=inputs.get("plans_dir", PLANS_DIR))
    if write:
        files.check_not_input([path], read_paths(base))
        files.check_output(path, overwrite=overwrite)
    ctx = _cache_workload(base.profile, context).seq_len
    decode = sorted((w for w in base.profile.workloads if w.phase == "decode" and w.seq_len == ctx),
                    key=lambda w: w.batch_size)
    if not decode:
        raise invalid("context", f"{ctx}: the profile has no decode workload at that context")
    smallest = decode[0].batch_size
    limit = memory * teacher_memory(base.profile, decode[0].name, smallest) if memory <= 1 else memory
    fits = [w for w in decode if teacher_memory(base.profile, w.name, w.batch_size) <= limit]
    ref_w = max(fits or decode[:1], key=lambda w: w.batch_size / base.profile.teacher_ms(w.name))
    ref = 1000 * ref_w.batch_size / base.profile.teacher_ms(ref_w.name)  # tokens per second
    found, best_reach = [], {}
    for w in reversed(decode):
        need = x * ref * base.profile.teacher_ms(w.name) / (1000 * w.batch_size)  # TPOT speedup over the teacher
        p = prepare(workloads=[w.name], max_memory=limit, cache_batch=w.batch_size, cache_context=ctx,
                    **inputs).with_speedups(tpot_speedup=need, floor=0)
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
    plan = _plan(p, verify(p, chosen, info["objective"]), {"strategy": "mip", **info})
    plan = dataclasses.replace(plan, constraints={**plan.constraints, "serving": record})
    if write:
        save(plan, Path(path))
    return plan
