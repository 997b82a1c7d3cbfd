"""Recovery on the embedded teacher: how much of a plan's quality loss `mosaic distill` wins back, against
stage 1 alone and against plain cross-entropy fine-tuning on the same text (the INTERLACE recipe).

    python benchmarks/bench_distill.py --scores S.json [--profile P.json] --out DIR [--runs both,offpolicy,ce]

For each TPOT target (1.4x, 1.6x): `mosaic solve` on the profile and the sensitivity table, `mosaic build` with the
table's candidate library, then from that one build, every run with distill's defaults unless named:
- `distill` (both stages);
- `distill --stage offpolicy` (stage 1 alone, the same steps per stage);
- cross-entropy fine-tuning: the same loop, trainable set and text (the same teacher samples), both stages' worth of
  steps, at each learning rate of LRS, with the off-policy loss replaced by next-token cross-entropy (no teacher).
Every model is measured by `mosaic eval` (tiny's held-out windows and recall probes). Gap recovered = (held-out
loss built - after) / (built - teacher). Results: DIR/distill-<targets>.json and .log (one line per run).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


TARGETS = (1.4, 1.6)
LRS = (3e-4, 1e-3)
WORKLOADS = ("decode-b1-c2k", "decode-b4-c512")  # the committed CPU profile's decode workloads at tiny's contexts


def ce_loss(wrapped, ref, batch, hidden_weight):
    """Next-token cross-entropy on the data, the teacher unused: plain fine-tuning in distill's own loop."""
    import torch.nn.functional as F

    from mosaic_search.recovery.losses import forward

    logits = forward(wrapped, batch, False)[0][:, :-1]
    mask = batch.mask(logits.device)[:, 1:]
    nll = F.cross_entropy(logits.flatten(0, 1), batch.sequences.ids[:, 1:].flatten().to(logits.device),
                          reduction="none")
    return (nll * mask.flatten()).sum() / mask.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scores", required=True, help="sensitivity table of tiny (its library beside it)")
    ap.add_argument("--profile", default="benchmarks/results/cpu/profile.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=None, help="steps per stage (default: distill's default)")
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)), help="TPOT targets, e.g. 1.4,1.6")
    ap.add_argument("--runs", default="both,offpolicy,ce", help="which runs, of: both, offpolicy, ce")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (e.g. 1 per process, one per target)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from mosaic_search import builder
    from mosaic_search.artifacts.distill_record import load_distill_record
    from mosaic_search.hf.models import load_model
    from mosaic_search.quality.evaluation import eval_set, measure
    from mosaic_search.quality.library import library_path
    from mosaic_search.recovery import batches, losses
    from mosaic_search.recovery import distill as distill_mod
    from mosaic_search.recovery.settings import DEFAULT_STEPS, DEFAULTS
    from mosaic_search.search import solver

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or DEFAULT_STEPS
    runs = set(args.runs.split(","))
    if not runs <= {"both", "offpolicy", "ce"}:
        ap.error(f"--runs: unknown {', '.join(sorted(runs - {'both', 'offpolicy', 'ce'}))}")
    log = (out / f"distill-{args.targets}.log").open("a")
    teacher = load_model("tiny")
    evals = eval_set("tiny")
    results = {"machine": f"{platform.machine()} {platform.processor()}, torch {torch.__version__}, "
                          f"{torch.get_num_threads()} threads", "steps_per_stage": steps, "plans": {}}

    def say(line: str) -> None:
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    def run(name: str, model: Path, target_dir: Path, **kw) -> dict:
        start = time.perf_counter()
        path = distill_mod.distill(str(model), out=target_dir / name, overwrite=True, quality=False, **kw)
        seconds = time.perf_counter() - start
        q = measure(load_model(str(path)), teacher, evals)
        settings = load_distill_record(path).settings
        row = {"run": name, "seconds": seconds, **{k: settings[k] for k in ("stages", "steps_per_stage", "lr",
                                                                            "trainable", "data")}, **q}
        say(f"{target_dir.name} {name}: KL {q['kl']:.4f} loss {q['heldout_loss']:.4f} recall {q['recall']} "
            f"{seconds:.0f} s")
        return row

    results["teacher"] = measure(teacher, teacher, evals)
    say(f"teacher: loss {results['teacher']['heldout_loss']:.4f} recall {results['teacher']['recall']}")
    for target in [float(t) for t in args.targets.split(",")]:
        plan_file = out / f"plan-tpot-{target}x.json"
        plan = solver.solve(tpot_speedup=target, workloads=list(WORKLOADS), profile=args.profile,
                            scores=args.scores, out=str(plan_file), overwrite=True)
        d = out / f"tpot-{target}x"
        built = builder.build(plan_file, library=library_path(args.scores), out=d / "built", overwrite=True)
        before = measure(load_model(str(built)), teacher, evals)
        say(f"{d.name} built {plan.pattern}: KL {before['kl']:.4f} loss {before['heldout_loss']:.4f} "
            f"recall {before['recall']} predicted loss {plan.objective:.4f}")
        rows = [run(stage, built, d, stage=stage, steps=steps) for stage in ("both", "offpolicy") if stage in runs]
        kl_loss, sequences = losses.offpolicy_loss, batches.SELF_SEQUENCES
        losses.offpolicy_loss = ce_loss
        batches.SELF_SEQUENCES = steps * DEFAULTS.batch_size  # the same samples as the distill runs
        try:
            rows += [run(f"ce-lr{lr:g}", built, d, stage="offpolicy", steps=2 * steps, lr=lr)
                     for lr in LRS if "ce" in runs]
        finally:
            losses.offpolicy_loss, batches.SELF_SEQUENCES = kl_loss, sequences
        gap = before["heldout_loss"] - results["teacher"]["heldout_loss"]
        for r in rows:
            r["gap_recovered"] = (before["heldout_loss"] - r["heldout_loss"]) / gap
        results["plans"][str(target)] = {"pattern": plan.pattern, "predicted_loss": plan.objective,
                                         "predicted": plan.predicted, "built": before, "runs": rows}
        (out / f"distill-{args.targets}.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
