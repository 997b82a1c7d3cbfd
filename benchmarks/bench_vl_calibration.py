"""What image rows in the calibration data change, on the embedded VLM teacher `tiny-vl`: for the same TPOT targets and
one latency profile, plans scored on text-only calibration against plans scored on text + image calibration.

    python benchmarks/bench_vl_calibration.py --out DIR [--targets 1.25,1.5] [--calibrations text,mixed]

- `text`: `mosaic score --teacher tiny-vl --data mosaic_search/assets/tiny/calibration.txt` (tiny's calibration text
  and recall, which tiny-vl reads with the same byte tokens);
- `mixed`: `mosaic score --teacher tiny-vl` (its default calibration.jsonl: image conversations alternating with that
  text).
For each target: `mosaic solve` (TPOT, every decode workload of the profile), `mosaic build` with that table's
candidate library, `mosaic distill` (both stages, DISTILL_STEPS steps each, on tiny-vl's default data, the same for
every plan so that only the plan differs), and `mosaic eval` before and after (held-out text, recall, the 256 held-out
image questions). The profile (the demo's workloads) is made once, DIR/profile.json, and shared. Results:
DIR/<calibration>.json (one per calibration, so both can run at once, one thread each) and DIR/<calibration>.log.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

TEXT = "mosaic_search/assets/tiny/calibration.txt"
DISTILL_STEPS = 30  # the demo's budget per stage, so that four distillations fit the machine's time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default="1.25,1.5", help="TPOT targets, e.g. 1.25,1.5")
    ap.add_argument("--calibrations", default="text,mixed", help="which scorings, of: text, mixed")
    ap.add_argument("--steps", type=int, default=DISTILL_STEPS, help="distill steps per stage")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from mosaic_search import builder
    from mosaic_search.artifacts.distill_record import load_distill_record
    from mosaic_search.demo import WORKLOADS
    from mosaic_search.latency.profiler import profile
    from mosaic_search.quality import scorer
    from mosaic_search.quality.evaluation import evaluate
    from mosaic_search.quality.library import library_path
    from mosaic_search.recovery.distill import distill
    from mosaic_search.search import solver

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prof_path = out / "profile.json"
    if not prof_path.is_file():
        profile("tiny-vl", device="cpu", workloads=list(WORKLOADS), out=prof_path, seed=args.seed)
    prof = json.loads(prof_path.read_text())
    decode = [w["name"] for w in prof["workloads"] if w["phase"] == "decode"]
    targets = [float(t) for t in args.targets.split(",")]
    for calibration in args.calibrations.split(","):
        if calibration not in ("text", "mixed"):
            ap.error(f"--calibrations: unknown {calibration!r}")
        log = (out / f"{calibration}.log").open("a")

        def say(line: str) -> None:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        clock = time.perf_counter()
        scores = out / f"sensitivity-{calibration}.json"
        table = scorer.score("tiny-vl", data=TEXT if calibration == "text" else None, out=scores, seed=args.seed,
                             resume=scores.is_file())
        result = {"machine": f"{platform.machine()} {platform.processor()}, torch {torch.__version__}, "
                             f"{torch.get_num_threads()} threads, load average {__import__('os').getloadavg()}",
                  "calibration": calibration, "data": table.data, "score_seconds": time.perf_counter() - clock,
                  "distill_steps_per_stage": args.steps, "teacher": evaluate("tiny-vl", teacher="tiny-vl"),
                  "plans": {}}
        say(f"{calibration}: scored in {result['score_seconds']:.0f} s on {table.data}")
        for target in targets:
            name = f"{calibration}-tpot-{target}x"
            plan = solver.solve(tpot_speedup=target, workloads=decode, profile=str(prof_path), scores=str(scores),
                                out=str(out / f"plan-{name}.json"), overwrite=True)
            built = builder.build(out / f"plan-{name}.json", library=library_path(scores),
                                  out=out / "models" / name, overwrite=True, seed=args.seed)
            clock = time.perf_counter()
            distilled = distill(str(built), out=out / "models" / f"{name}-distilled", steps=args.steps,
                                seed=args.seed, overwrite=True)
            quality = load_distill_record(distilled).quality
            result["plans"][str(target)] = {"pattern": plan.pattern, "layers": [c.label for c in plan.layers],
                                            "predicted_loss": plan.objective, "predicted": plan.predicted,
                                            "built": quality["before"], "distilled": quality["after"],
                                            "distill_seconds": time.perf_counter() - clock}
            say(f"{name} {plan.pattern}: image accuracy {quality['before']['questions']['accuracy']:.1%} -> "
                f"{quality['after']['questions']['accuracy']:.1%}, held-out loss "
                f"{quality['before']['heldout_loss']:.4f} -> {quality['after']['heldout_loss']:.4f}, KL "
                f"{quality['before']['kl']:.4f} -> {quality['after']['kl']:.4f}")
            (out / f"{calibration}.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    main()
