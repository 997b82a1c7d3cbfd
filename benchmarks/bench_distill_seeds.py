"""How far distillation's own randomness moves a plan's recovered quality: the yardstick for "plan A distills no
worse than plan B" when one run each differs by a fraction of a percent.

    python benchmarks/bench_distill_seeds.py --library L.json --out DIR --seeds 0,1,2 PLAN.json [PLAN.json ...]

Each plan is built once (`mosaic build` with the candidate library, build seed 0), then distilled by `mosaic distill`
with its defaults at every seed (the seed draws the teacher's samples, the batch order and the on-policy samples),
and each distilled model is measured by `mosaic eval` against the plan's teacher (its held-out windows and recall
probes, which distillation never reads). Results: DIR/seeds.json (every run) and a table on stdout: per plan the
held-out loss at each seed, their mean and standard deviation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plans", nargs="+", help="layer plans (mosaic solve or mosaic refine wrote them)")
    ap.add_argument("--library", required=True, help="the sensitivity table's candidate library (.safetensors)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from mosaic_search import builder
    from mosaic_search.artifacts.plan import load_plan
    from mosaic_search.quality.evaluation import evaluate
    from mosaic_search.recovery.distill import distill

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
                          f"load average at start {os.getloadavg()}", "seeds": seeds, "plans": {}}
    for plan_path in args.plans:
        name = Path(plan_path).name.removesuffix(".json").removesuffix(".plan")
        plan = load_plan(plan_path)
        built = builder.build(plan_path, library=args.library, out=out / "models" / name, overwrite=True, seed=0)
        runs = []
        for seed in seeds:
            clock = time.perf_counter()
            distilled = distill(str(built), out=out / "models" / f"{name}-seed{seed}", seed=seed, overwrite=True,
                                quality=False)
            quality = evaluate(str(distilled), teacher=plan.header.model.id)
            runs.append({"seed": seed, "seconds": time.perf_counter() - clock, **quality})
            print(f"{name} seed {seed}: held-out loss {quality['heldout_loss']:.4f}, KL {quality['kl']:.4f}",
                  flush=True)
        losses = [r["heldout_loss"] for r in runs]
        results["plans"][name] = {"layers": [c.label for c in plan.layers], "runs": runs,
                                  "mean_heldout_loss": statistics.mean(losses),
                                  "stdev_heldout_loss": statistics.stdev(losses) if len(losses) > 1 else 0.0}
        (out / "seeds.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    print("\n| plan | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd |")
    print("|---|" + "---|" * (len(seeds) + 2))
    for name, r in results["plans"].items():
        print(f"| {name} | " + " | ".join(f"{x['heldout_loss']:.4f}" for x in r["runs"])
              + f" | {r['mean_heldout_loss']:.4f} | {r['stdev_heldout_loss']:.4f} |")


if __name__ == "__main__":
    main()
