"""CPU measurements behind BENCHMARKS.md for the embedded teacher (`tiny`): how long the default profile
takes, predicted-vs-measured whole-model latency, and measured-vs-predicted speedup of solved plans.

    python benchmarks/bench_cpu.py [--scores layer_plans/tiny/<table>.json] [--out DIR]

Plans need a sensitivity table; without --scores the script runs `mosaic score` on the defaults first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = (1.3, 1.6)  # TPOT speedups solved for (every decode workload)


def main():
    import torch

    import mosaic_search as mosaic
    from mosaic_search.profiler import validate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scores")
    p.add_argument("--out", default="benchmarks/results/cpu")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, " \
              f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    print(f"machine: {machine}\ndate: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")

    t0 = time.perf_counter()
    prof = mosaic.profile("tiny", device="cpu", out=out / "profile.json")
    print(f"\nprofile (defaults): {time.perf_counter() - t0:.1f} s, {len(prof.entries)} entries")

    rows = validate(prof, "tiny")
    print("\n| assignment | workload | predicted ms | measured ms | error |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['assignment']} | {r['workload']} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | "
              f"{r['error_pct']:+.1f}% |")
    worst = max(abs(r["error_pct"]) for r in rows)
    print(f"\nworst additivity error: {worst:.1f}%")
    # the same whole teacher, measured by the profile and again by the validation minutes later: the
    # machine's own repeatability, the floor under any additivity figure taken across the two
    print("\n| workload | teacher in the profile ms | teacher in the validation ms | difference |\n|---|---|---|---|")
    for r in rows:
        if r["assignment"].startswith("teacher"):
            first = prof.baseline_ms[r["workload"]]
            print(f"| {r['workload']} | {first:.3f} | {r['measured_ms']:.3f} | "
                  f"{100 * (r['measured_ms'] - first) / first:+.1f}% |")

    scores = args.scores
    if scores is None:
        t0 = time.perf_counter()
        table = mosaic.score("tiny", out=out / "scores.json")
        scores = str(out / "scores.json")
        print(f"\nscore (defaults): {time.perf_counter() - t0:.1f} s, {len(table.entries)} entries")
    decode = [w.name for w in prof.workloads if w.phase == "decode"]
    print("\n| target | pattern | workload | predicted | measured | error |\n|---|---|---|---|---|---|")
    results = []
    for target in TARGETS:
        plan = mosaic.solve(profile=str(out / "profile.json"), scores=scores, tpot_speedup=target, workloads=decode,
                            out=str(out / f"plan-tpot-{target}.json"))
        for r in mosaic.bench(str(out / f"plan-tpot-{target}.json")):
            results.append({"target": target, "pattern": plan.pattern, **r})
            print(f"| {target}x TPOT | `{plan.pattern}` | {r['workload']} | {r['predicted_speedup']:.3f}x | "
                  f"{r['measured_speedup']:.3f}x | {r['error_pct']:+.1f}% |")
    (out / "results.json").write_text(json.dumps({"machine": machine, "validation": rows, "bench": results},
                                                 indent=2))


if __name__ == "__main__":
    main()
