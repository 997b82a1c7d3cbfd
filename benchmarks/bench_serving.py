"""The serving regime on the embedded teacher: under a memory budget that holds the teacher to a small batch, the plan
and batch `mosaic solve --throughput-speedup X --memory M --context C` choose, and their throughput measured.

    python benchmarks/bench_serving.py [--out benchmarks/results/serving] [--scores S] [--targets 1.5,2,3]

`tiny` is profiled (the default candidate set) on decode steps at one context and batches 1-16; the memory budget M is
the teacher's own weights + cache at batch `--teacher-batch` (default 2) at that context, so the teacher serves at
most that batch. For each throughput target X the solver picks the least-loss plan and the largest profiled batch
whose weights + cache fit M with batch / TPOT(batch) >= X times the teacher's at its largest fitting batch. Each plan
is built (with the table's candidate library) and timed as `mosaic bench` times it, on the chosen batch's workload and
on the teacher's: measured throughput speedup = (B / TPOT of the plan at B) / (B_teacher / TPOT of the teacher at
B_teacher). `S`: a sensitivity table of `tiny` with its library (default: score one into `--out`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

CONTEXT = 1024
BATCHES = (1, 2, 4, 8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/serving")
    parser.add_argument("--scores", help="a sensitivity table of tiny (with its library); default: score one")
    parser.add_argument("--targets", default="1.5,2,3", help="throughput speedups over the teacher")
    parser.add_argument("--teacher-batch", type=int, default=2, help="the largest batch the teacher may serve in M")
    parser.add_argument("--rounds", type=int, default=5, help="bench passes, teacher and plan alternating (pooled): "
                                                              "two workloads timed apart drift with the machine")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mosaic_search import builder
    from mosaic_search.artifacts.profile import load_profile, workload_name
    from mosaic_search.errors import InfeasibleError
    from mosaic_search.latency.bench import bench
    from mosaic_search.latency.profiler import profile
    from mosaic_search.quality import scorer
    from mosaic_search.quality.library import library_path
    from mosaic_search.search import serving
    from mosaic_search.search.memory import teacher_memory

    began = time.perf_counter()
    if not (out / "profile.json").is_file():
        profile("tiny", workloads=[f"decode:{CONTEXT}:b{b}" for b in BATCHES], out=out / "profile.json")
    scores = Path(args.scores) if args.scores else out / "sensitivity.json"
    if not scores.is_file():
        scorer.score("tiny", out=scores)
    prof = load_profile(out / "profile.json")
    at = workload_name("decode", args.teacher_batch, CONTEXT)
    limit = teacher_memory(prof, at, args.teacher_batch)
    teacher_rows = [{"batch": b, "memory_bytes": teacher_memory(prof, workload_name("decode", b, CONTEXT), b),
                     "tpot_ms": prof.teacher_ms(workload_name("decode", b, CONTEXT)),
                     "tokens_per_s": 1000 * b / prof.teacher_ms(workload_name("decode", b, CONTEXT))} for b in BATCHES]
    rows = []
    for x in (float(t) for t in args.targets.split(",")):
        name = f"serving-{x:g}x"
        try:
            plan = serving.solve_serving(x, limit, CONTEXT, profile=str(out / "profile.json"), scores=str(scores),
                                         out=str(out / f"{name}.json"), overwrite=True)
        except InfeasibleError as e:
            rows.append({"target": x, "feasible": False, "why": str(e)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        s = plan.constraints["serving"]
        built = builder.build(out / f"{name}.json", library=library_path(scores), out=out / "models" / name,
                              overwrite=True)
        timed = {r["workload"]: r for r in bench(str(built), rounds=args.rounds, workloads=sorted({s["workload"],
                 workload_name("decode", s["teacher_batch"], CONTEXT)}))}
        mine, theirs = timed[s["workload"]], timed[workload_name("decode", s["teacher_batch"], CONTEXT)]
        measured = (s["batch"] / mine["model_ms"]) / (s["teacher_batch"] / theirs["teacher_ms"])
        rows.append({"target": x, "feasible": True, "pattern": plan.pattern, "layers": [c.label for c in plan.layers],
                     "batch": s["batch"], "teacher_batch": s["teacher_batch"], "memory_bytes": s["memory_bytes"],
                     "memory_limit_bytes": s["memory_bytes_limit"],
                     "predicted_tokens_per_s": s["throughput_tokens_per_s"],
                     "teacher_predicted_tokens_per_s": s["teacher_throughput_tokens_per_s"],
                     "predicted_throughput_speedup":
                         s["throughput_tokens_per_s"] / s["teacher_throughput_tokens_per_s"],
                     "measured_throughput_speedup": measured, "objective": plan.objective,
                     "timed": list(timed.values())})
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_at_end": os.getloadavg()},
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": f"python benchmarks/bench_serving.py --out {out} --targets {args.targets} "
                         f"--teacher-batch {args.teacher_batch} --rounds {args.rounds}" + (f" --scores {args.scores}" if args.scores else ""),
              "context": CONTEXT, "memory_limit_bytes": limit, "teacher": teacher_rows, "rows": rows,
              "seconds": round(time.perf_counter() - began, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
