"""Plans for the GPU speedup check: solved on the committed H100 profile of Qwen3-VL-4B dimensions.

There are no Qwen3-VL-4B weights on these machines, so the sensitivity table here is SYNTHETIC, made only so
the solver has something to minimise; the check these plans serve is latency (measured vs predicted
speedup with random weights), not quality. Per candidate a fixed loss ordering (drop > none > gdn/kda/mla >
swa, wider windows cheaper) scaled by a seeded per-layer factor; gqa scores 0.

    python benchmarks/gpu_plans.py [--profile PROFILE] --out benchmarks/results/h100_plans [--scores-out FILE]

The synthetic table goes to --scores-out (default: benchmarks/results/h100_plans/synthetic_scores.json), never
under layer_plans/, where `mosaic solve` looks for real tables.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


PROFILE = "benchmarks/results/profiles/Qwen--Qwen3-VL-4B-Instruct--nvidia-h100-80gb-hbm3.json"
SCORES = Path("benchmarks/results/h100_plans/synthetic_scores.json")
BASE_LOSS = {"gqa": 0.0, "swa": 0.02, "mla": 0.05, "gdn": 0.06, "kda": 0.05, "none": 0.3, "drop": 0.6}
TARGETS = {"tpot-1.5x-c96k": dict(tpot_speedup=1.5, workloads=["decode-b1-c96k"]),
           "tpot-2.5x-c96k": dict(tpot_speedup=2.5, workloads=["decode-b1-c96k"]),
           "ttft-1.5x-p32k": dict(ttft_speedup=1.5, workloads=["prefill-b1-p32k"])}


def synthetic_scores(profile, seed: int = 0):
    """A seeded stand-in sensitivity table with the profile's model and candidates."""
    from mosaic_search.artifacts import schema

    rng = random.Random(seed)
    cands = sorted({e.candidate for e in profile.entries})
    n = profile.header.model.num_hidden_layers
    factor = [0.5 + rng.random() for _ in range(n)]
    entries = []
    for layer in range(n):
        for c in cands:
            loss = BASE_LOSS[c.op] * factor[layer]
            if c.op == "swa":
                loss *= 2048 / c.kwargs["window"]
            entries.append(schema.SensitivityEntry(layer=layer, candidate=c, kl=loss, delta_loss=loss, align_steps=0))
    return schema.SensitivityTable(header=schema.Header.new(profile.header.model), metric="kl",
                                   data={"source": "synthetic (benchmarks/gpu_plans.py), latency check only"},
                                   entries=tuple(entries))


def solve_plans(profile_path: str, out: Path, scores_out: Path = SCORES) -> dict:
    """{target name: plan path}, each plan solved on the profile with the synthetic scores (saved to `scores_out`)."""
    from mosaic_search.artifacts import schema
    from mosaic_search.search import solver

    profile = schema.load_profile(profile_path)
    scores = schema.save(synthetic_scores(profile), scores_out)
    paths = {}
    for name, target in TARGETS.items():
        paths[name] = out / f"{name}.json"
        plan = solver.solve(profile=profile_path, scores=str(scores), out=str(paths[name]), **target)
        w = target["workloads"][0]
        print(f"{name}: {plan.pattern}  predicted {plan.predicted[w]['speedup']:.3f}x on {w}", flush=True)
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default=PROFILE)
    p.add_argument("--out", default="benchmarks/results/h100_plans")
    p.add_argument("--scores-out", type=Path, default=SCORES)
    args = p.parse_args()
    solve_plans(args.profile, Path(args.out), args.scores_out)


if __name__ == "__main__":
    main()
