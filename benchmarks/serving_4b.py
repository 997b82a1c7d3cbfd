"""The serving regime on the committed H100 profile of Qwen3-VL-4B: its measured latencies plus weight bytes COMPUTED
from the shipped config (that profile predates weight bytes), and what a memory budget that holds the teacher to one
sequence lets a plan serve.

    python benchmarks/serving_4b.py [--profile P] [--out benchmarks/results/serving-4b] [--context 16384]
                                    [--memory-gib 12] [--targets 2,4,8,12]

1. `profile-h100-with-weight-bytes.json`: the H100 profile's workloads, entries (latencies, cache bytes) and baselines
   unchanged, plus `weight_bytes` / `fixed_weight_bytes` counted by `profiler.count_weight_bytes` (the profiler's own
   model and swaps, built on the meta device from `assets/configs`) at bfloat16, the dtype the profile's own cache
   bytes show. Its `env.derived` says what was computed and `env.latencies_measured_at` when the rest was measured.
2. `frontier.json`, which needs no quality table: per plan family (the teacher and fixed-ratio hybrids) its weights,
   cache per sequence, the largest batch that fits the budget and its predicted throughput at the profiled batches;
   and per profiled batch the fastest plan that fits (`solver.run_mip(minimize=<decode workload>)`, latency only,
   every layer keeping a token mixer and its MLP: `KEEP_LAYERS`).
3. `serving-<X>x.json`: `mosaic solve --throughput-speedup X --memory M --context C` plans. No sensitivity table of
   Qwen3-VL-4B exists here: they are solved on the committed SYNTHETIC table `gpu_plans.py` made for the H100 latency
   checks, so which feasible plan is chosen says nothing about quality; their batch and predicted throughput are what
   the profile predicts for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections import Counter
from pathlib import Path

PROFILE = "benchmarks/results/profiles/Qwen--Qwen3-VL-4B-Instruct--nvidia-h100-80gb-hbm3.json"
SCORES = "benchmarks/results/h100_plans/synthetic_scores.json"
DTYPE = "bfloat16"
GIB = 1024 ** 3
# the latency-only frontier keeps every layer's token mixer and MLP: with `none` and `drop` allowed, the fastest plan
# that fits is a model of one layer, which says nothing without a quality table
KEEP_LAYERS = "gqa,swa,mla,gdn,kda"


def families(n: int) -> dict:
    """Hand-designed plans to place on the memory frontier: {name: one candidate spec per layer}."""
    every = lambda k, cheap, full: [full if i % k == k - 1 else cheap for i in range(n)]  # noqa: E731
    return {"teacher (all gqa)": ["gqa"] * n, "all swa:window=2048": ["swa:window=2048"] * n,
            "all mla:rank=256": ["mla:rank=256"] * n,
            "5 swa:window=2048 : 1 gqa": every(6, "swa:window=2048", "gqa"),
            "3 gdn : 1 gqa": every(4, "gdn", "gqa"), "3 kda : 1 mla:rank=512": every(4, "kda", "mla:rank=512"),
            "all gdn but one gqa": ["gqa"] + ["gdn"] * (n - 1)}


def mix(layers) -> dict:
    """{candidate: how many layers take it}."""
    return dict(Counter(str(c) for c in layers).most_common())


def derive(src: str, out: Path):
    """The profile at `src` with computed weight bytes, saved to `out`; refuses a config that is not the profile's."""
    from mosaic_search.artifacts.header import Header, save, sha256_file
    from mosaic_search.artifacts.profile import load_profile
    from mosaic_search.hf.device import DTYPE_BYTES
    from mosaic_search.hf.models import config_sha256, resolve
    from mosaic_search.latency.profiler import count_weight_bytes
    from mosaic_search.operators import Candidate

    prof = load_profile(src)
    resolved = resolve(prof.header.model.id, shipped_ok=True)
    if config_sha256(resolved.config) != prof.header.model.config_sha256:
        raise SystemExit(f"the shipped config of {prof.header.model.id} is not the one the profile was taken with")
    gqa = Candidate.teacher()
    w = next(w for w in prof.workloads if w.phase == "decode")
    if prof.cache_bytes(0, gqa, w.name) != gqa.spec.cache_bytes(resolved.dims, w.seq_len, DTYPE_BYTES[DTYPE]):
        raise SystemExit(f"the profile's cache bytes are not {DTYPE}'s")
    cands = sorted({e.candidate for e in prof.entries})
    weights, fixed = count_weight_bytes(resolved, cands, dtype=DTYPE)
    env = {**prof.header.env, "latencies_measured_at": prof.header.created_at,
           "derived": f"weight_bytes and fixed_weight_bytes computed from the shipped config "
                      f"(mosaic_search/assets/configs) on the meta device by profiler.count_weight_bytes at {DTYPE}, "
                      "not measured; workloads, entries, baseline_ms and fixed_ms as measured"}
    header = Header.new(prof.header.model, env=env, inputs={"profile": sha256_file(src)})
    derived = dataclasses.replace(prof, header=header, weight_bytes=weights, fixed_weight_bytes=fixed)
    save(derived, out)
    return derived


def frontier(prof, scores: str, context: int, limit: float) -> dict:
    """Plan families and the fastest fitting plan per profiled batch, at `context` under `limit` bytes; throughput
    speedups are over the teacher at its largest fitting profiled batch."""
    from mosaic_search.operators import Candidate, pattern_string
    from mosaic_search.search import problem, solver
    from mosaic_search.search.memory import memory_bytes

    decode = sorted((w for w in prof.workloads if w.phase == "decode" and w.seq_len == context),
                    key=lambda w: w.batch_size)
    n = prof.header.model.num_hidden_layers
    teacher_ref = None
    rows = []
    for name, specs in families(n).items():
        layers = [Candidate.parse(s) for s in specs]
        weights = prof.fixed_weight_bytes + sum(prof.layer_weight_bytes(l, c) for l, c in enumerate(layers))
        cache = sum(prof.cache_bytes(l, c, decode[0].name) for l, c in enumerate(layers))  # per sequence
        fits = [w for w in decode if weights + w.batch_size * cache <= limit]
        tps = {w.name: 1000 * w.batch_size / prof.predicted_ms(w.name, layers) for w in decode}
        best = max(fits, key=lambda w: tps[w.name]) if fits else None
        row = {"family": name, "weights_bytes": weights, "cache_bytes_per_sequence": cache,
               "largest_batch_fitting": math.floor((limit - weights) / cache) if cache else None,
               "tokens_per_s": tps, "largest_profiled_batch_fitting": best and best.batch_size,
               "served_tokens_per_s": best and tps[best.name]}
        teacher_ref = teacher_ref or row["served_tokens_per_s"]
        rows.append(row)
    for row in rows:
        row["throughput_speedup"] = row["served_tokens_per_s"] and row["served_tokens_per_s"] / teacher_ref
    fastest = []
    for w in decode:
        p = problem.prepare(profile=prof, scores=scores, workloads=[w.name], max_memory=limit,
                            cache_batch=w.batch_size, cache_context=context, ops=KEEP_LAYERS)
        chosen, info = solver.run_mip(p, minimize=w.name, budgets=False)
        if chosen is None:
            fastest.append({"batch": w.batch_size, "fits": False})
            continue
        layers = [cs[0] for cs in chosen]
        ms = prof.predicted_ms(w.name, layers)
        fastest.append({"batch": w.batch_size, "fits": True, "pattern": pattern_string(layers), "mix": mix(layers),
                        "tpot_ms": ms, "tokens_per_s": 1000 * w.batch_size / ms,
                        "throughput_speedup": 1000 * w.batch_size / ms / teacher_ref,
                        "memory_bytes": memory_bytes(p, layers), "solver_status": info["status"]})
    return {"families": rows, "fastest_fitting_plan_per_batch": fastest, "teacher_tokens_per_s": teacher_ref}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=PROFILE)
    parser.add_argument("--scores", default=SCORES, help="the committed synthetic table (latency checks only)")
    parser.add_argument("--out", default="benchmarks/results/serving-4b")
    parser.add_argument("--context", type=int, default=16384)
    parser.add_argument("--memory-gib", type=float, default=12.0)
    parser.add_argument("--targets", default="2,4,8,12", help="throughput speedups over the teacher")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mosaic_search.errors import InfeasibleError
    from mosaic_search.search import serving
    from mosaic_search.search.memory import teacher_memory

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    derived_path = out / "profile-h100-with-weight-bytes.json"
    prof = derive(args.profile, derived_path)
    limit = args.memory_gib * GIB
    teacher = {w.name: teacher_memory(prof, w.name, w.batch_size) for w in prof.workloads
               if w.phase == "decode" and w.seq_len == args.context}
    summary = {"memory_bytes": limit, "context": args.context, "teacher_memory_bytes": teacher,
               "fixed_weight_bytes": prof.fixed_weight_bytes,
               "layer_weight_bytes": {str(c): n for c, n in prof.weight_bytes},
               **frontier(prof, args.scores, args.context, limit), "serving_plans_on_synthetic_scores": []}
    for x in (float(t) for t in args.targets.split(",")):
        try:
            plan = serving.solve_serving(x, limit, args.context, profile=str(derived_path), scores=args.scores,
                                         out=str(out / f"serving-{x:g}x.json"), overwrite=True)
        except InfeasibleError as e:
            summary["serving_plans_on_synthetic_scores"].append({"target": x, "feasible": False, "why": str(e)})
            continue
        got = plan.constraints["serving"]
        summary["serving_plans_on_synthetic_scores"].append(
            {"target": x, "feasible": True, "pattern": plan.pattern, "mix": mix(plan.layers), **got,
             "predicted_throughput_speedup": got["throughput_tokens_per_s"] / got["teacher_throughput_tokens_per_s"]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
