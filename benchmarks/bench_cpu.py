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
import time
from pathlib import Path


TARGETS = (1.3, 1.6)  # TPOT speedups solved for (every decode workload)


def main():
    import torch

    import mosaic_search as mosaic
    from mosaic_search.latency.timing import CpuTimer

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

    # additivity: whole models timed in the same passes as the layers, with the default (paired) timer and
    # again with the same timer unpaired (each measurement on its own clock), to show what pairing buys
    checks = {}
    for label, timer in (("paired", CpuTimer()), ("unpaired", lambda fn, kind, cpu=CpuTimer(): cpu(fn, kind))):
        t0 = time.perf_counter()
        checked = mosaic.profile("tiny", device="cpu", out=out / f"profile-validate-{label}.json", timer=timer,
                                 validate=True)
        checks[label] = list(checked.validation)
        print(f"\nprofile --validate, {label} timer: {time.perf_counter() - t0:.1f} s")
    print("\n| assignment | pattern | workload | predicted ms | measured ms | error | unpaired error |")
    print("|---|---|---|---|---|---|---|")
    for r, u in zip(checks["paired"], checks["unpaired"]):
        print(f"| {r['assignment']} | `{r['pattern']}` | {r['workload']} | {r['predicted_ms']:.3f} | "
              f"{r['measured_ms']:.3f} | {r['error_pct']:+.1f}% | {u['error_pct']:+.1f}% |")
    for label, rows in checks.items():
        print(f"worst additivity error, {label}: {max(abs(r['error_pct']) for r in rows):.1f}%")

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
    (out / "results.json").write_text(json.dumps({"machine": machine, "validation": checks, "bench": results},
                                                 indent=2))


if __name__ == "__main__":
    main()
