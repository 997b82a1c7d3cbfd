"""The wider search space on the embedded teacher: at predicted TPOT speedups 1.25x, 1.5x and 2x, the plan solved
over mixers and MLP widths and KV heads together against the plan solved over mixers only, both built with the
scorer's candidate library and measured as `mosaic eval` measures (held-out KL) and as `mosaic bench` times them.

    python benchmarks/bench_wide.py [--out benchmarks/results/wide] [--quick]

One profile (the demo's workloads, the default candidate set) and one sensitivity table (the defaults) serve both
spaces; the mixer-only space is the same tables under `--ops gqa,swa,gdn,kda,mla,none,drop` (the teacher's gqa, no
narrower MLP, no fewer KV heads). Stages whose output exists are not rerun. Records the wall and CPU time of profile
and score, each plan, its predicted and measured speedups and its measured KL. `--quick` (for a busy machine): one
decode workload and one pass in the profile, 2048 scored tokens and 5 alignment steps, and no timing of the built
models (predicted speedups only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path


WORKLOADS = ("prefill:512", "decode:1k", "decode:256:b4")  # the demo's
TARGETS = (1.25, 1.5, 2.0)
SPACES = {"mixers": "gqa,swa,gdn,kda,mla,none,drop", "wide": None}


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/wide")
    parser.add_argument("--quick", action="store_true", help="reduced settings, no timing of the built models")
    args = parser.parse_args()
    workloads = ("decode:1k",) if args.quick else WORKLOADS
    score_kw = dict(tokens=2048, align_steps=5) if args.quick else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mosaic_search import builder
    from mosaic_search.artifacts.profile import load_profile
    from mosaic_search.errors import InfeasibleError
    from mosaic_search.latency.bench import bench
    from mosaic_search.latency.profiler import profile
    from mosaic_search.quality import scorer
    from mosaic_search.quality.evaluation import evaluate
    from mosaic_search.quality.library import library_path
    from mosaic_search.search import solver

    times = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}
    if not (out / "profile.json").is_file():
        _, times["profile"] = _timed(lambda: profile("tiny", workloads=list(workloads), out=out / "profile.json",
                                                     rounds=1 if args.quick else None))
    if not (out / "sensitivity.json").is_file():
        _, times["score"] = _timed(lambda: scorer.score("tiny", out=out / "sensitivity.json", **score_kw))
    (out / "times.json").write_text(json.dumps(times, indent=2))
    prof = load_profile(out / "profile.json")
    decode = [w.name for w in prof.workloads if w.phase == "decode"]
    inputs = dict(profile=str(out / "profile.json"), scores=str(out / "sensitivity.json"))
    rows = []
    for target in TARGETS:
        for space, ops in SPACES.items():
            name = f"{space}-tpot-{target}x"
            row = {"space": space, "target_tpot_speedup": target}
            try:
                plan = solver.solve(tpot_speedup=target, workloads=decode, ops=ops, out=str(out / f"{name}.json"),
                                    overwrite=True, **inputs)
            except InfeasibleError as e:
                rows.append({**row, "feasible": False, "why": str(e)})
                continue
            built = builder.build(out / f"{name}.json", library=library_path(out / "sensitivity.json"),
                                  out=out / "models" / name, overwrite=True)
            quality = evaluate(str(built), teacher="tiny")
            speed = None if args.quick else bench(str(built), workloads=decode)
            rows.append({**row, "feasible": True, "layers": [c.label for c in plan.layers],
                         "predicted_objective": plan.objective, "measured_kl": quality["kl"],
                         "heldout_loss": quality["heldout_loss"], "predicted": plan.predicted, "speed": speed})
            print(json.dumps(rows[-1]), flush=True)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "shared": "yes: other jobs ran on the same cores"},
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": f"python benchmarks/bench_wide.py --out {out}" + " --quick" * args.quick, "times": times,
              "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"times": times}, indent=2))


if __name__ == "__main__":
    main()
