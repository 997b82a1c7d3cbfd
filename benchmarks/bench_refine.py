"""Plans chosen by measured quality: `mosaic refine` against the additive MIP plan and search baselines, on `tiny`.

    python benchmarks/bench_refine.py --profile P.json --scores S.json --out DIR [--targets 1.25,1.5,1.75]

At each TPOT target (every decode workload of the profile): the MIP plan; the refined plan (`mosaic refine`, default
budget); EvoPress-style (1+lambda) from the teacher with moves that keep the latency budget (one layer faster, one
slower, then random speed-ups until every budget holds), multi-step selection on the same fidelities; greedy;
ShortGPT dropping (lowest block influence first, the fewest layers reaching the target); random feasible plans.
The searches (refine, EvoPress-style, random) get the same calibration windows and the same budget in tokens
measured (EvoPress-style: the same measurements at the same fidelities; random: as many full-fidelity plans as
refine's tokens allow). Every plan is applied with the table's aligned weights as `mosaic build` applies them and
measured as `mosaic eval` does: held-out KL and loss on the end of heldout.txt, recall on its probes. Also the
additive prediction vs the measured calibration KL of every plan the searches measured on every window, by the
number of swapped layers. `--rerank-steps N`: refine re-ranks its finalists (its best plans and the MIP's own) after N
distillation steps; every finalist's calibration KL as built and after is recorded with the refined plan and printed.
`--distill`: the MIP's and the refined plan distilled with `mosaic distill`'s defaults, then evaluated as above.
Results: DIR/refine-<targets>.json and the tables on stdout
(`--tables` prints them again for every results file in DIR, so targets can run as separate processes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path


TARGETS = (1.25, 1.5, 1.75)


def shortgpt(p, table, target):
    """The fewest layers of lowest block influence dropped (ShortGPT) that reach `target` on every workload."""
    from mosaic_search.operators import Candidate
    from mosaic_search.quality.scorer import block_influence
    from mosaic_search.search.problem import violations

    bi, drop, teacher = block_influence(table), Candidate.of("drop"), list(p.profile.teacher)
    order = sorted(range(p.num_layers), key=lambda i: bi[i])
    for k in range(1, p.num_layers):
        layers = [drop if i in order[:k] else c for i, c in enumerate(teacher)]
        if not violations(p, layers, 1e-9):
            return layers
    return None


def _faster(p, layers, rng, layer=None):
    """`layers` with one layer (random, or `layer`) on a random allowed candidate faster on the constrained work."""
    def cost(i, c):
        return sum(p.choice(i, c).latency_ms[w] for w in p.targets)

    i = rng.randrange(p.num_layers) if layer is None else layer
    options = [c for c in p.allowed[i] if cost(i, c) < cost(i, layers[i])]
    if options:
        layers = list(layers)
        layers[i] = rng.choice(options)
    return layers


def random_feasible(p, rng, start=None):
    """A random plan (uniform per layer, or `start`) made faster at random layers until every budget holds."""
    from mosaic_search.search.problem import violations

    layers = list(start) if start is not None else [rng.choice(cs) for cs in p.allowed]
    for _ in range(50 * p.num_layers):
        if not violations(p, layers, 1e-9):
            return tuple(layers)
        layers = _faster(p, layers, rng)
    return None


def level_switch(p, layers, rng):
    """EvoPress's level switch under a latency budget: one layer slower, one faster, then faster until feasible."""
    def cost(i, c):
        return sum(p.choice(i, c).latency_ms[w] for w in p.targets)

    i = rng.randrange(p.num_layers)
    slower = [c for c in p.allowed[i] if cost(i, c) > cost(i, layers[i])]
    out = list(layers)
    if slower:
        out[i] = rng.choice(slower)
    out = _faster(p, out, rng, rng.choice([j for j in range(p.num_layers) if j != i]))
    return random_feasible(p, rng, out)


def evopress(p, fit, budget_rows, low_n, survivors, seed):
    """(1+lambda) from the teacher with multi-step selection, as many measurements at each fidelity as refine used."""
    rng = random.Random(seed)
    parent = random_feasible(p, rng, p.profile.teacher)
    rows = []
    high_left, low_left = sum(r["fidelity"] == "high" for r in budget_rows), low_n
    best = (fit.measure(parent, True)[0], parent)
    rows.append(best)
    high_left -= 1
    while high_left > 0 and low_left > 0:
        lam = min(low_left, max(survivors + 1, 6))
        kids = [k for k in (level_switch(p, best[1], rng) for _ in range(lam)) if k is not None]
        if not kids:
            break
        low_left -= len(kids)
        screened = sorted((fit.measure(k, False)[0], k) for k in kids)
        for _, k in screened[:min(survivors, high_left)]:
            kl = fit.measure(k, True)[0]
            high_left -= 1
            rows.append((kl, k))
            best = min(best, (kl, k))
    return best[1], rows


def measure_heldout(plan_layers, library, ref, evals, teacher_model, seed=0):
    """`mosaic eval`'s numbers for a plan applied as `mosaic build` applies it (the library's aligned mixers and
    narrower MLPs' channels, `library.library_weights`; `ref`: the table's model)."""
    import torch

    from mosaic_search.hf import surgery
    from mosaic_search.hf.models import load_model
    from mosaic_search.quality.evaluation import measure
    from mosaic_search.quality.library import library_weights

    model = load_model("tiny")
    weights = library_weights(library, plan_layers, ref, False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, c in enumerate(plan_layers):
            surgery.swap(model, i, c, weights=weights.get(i))
    return measure(model, teacher_model, evals)


def distilled_quality(plan_path, library, out, seed=0):
    """Build a plan with the library, `mosaic distill` it with its defaults, and return `mosaic eval`'s numbers of the
    distilled model (held-out windows and probes, which distillation never reads)."""
    from mosaic_search import builder
    from mosaic_search.quality.evaluation import evaluate
    from mosaic_search.recovery.distill import distill

    built = builder.build(plan_path, library=library, out=out, seed=seed, overwrite=True)
    distilled = distill(str(built), out=Path(f"{out}-distilled"), seed=seed, overwrite=True, quality=False)
    return evaluate(str(distilled), teacher="tiny")


def main():
    import torch

    from mosaic_search.artifacts.header import save
    from mosaic_search.artifacts.profile import load_profile
    from mosaic_search.artifacts.sensitivity import load_sensitivity
    from mosaic_search.artifacts.search_record import load_search_record
    from mosaic_search.hf.models import load_model
    from mosaic_search.operators import pattern_string
    from mosaic_search.quality import fitness, refine
    from mosaic_search.quality.evaluation import eval_set
    from mosaic_search.quality.library import library_path
    from mosaic_search.search import repair, solver
    from mosaic_search.search.problem import predicted, prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--out", default="benchmarks/results/refine")
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)))
    ap.add_argument("--evaluations", type=int, default=refine.DEFAULT_EVALUATIONS)
    ap.add_argument("--data", help="Calibration text of every search (default: the table's, as refine's default).")
    ap.add_argument("--tables", action="store_true", help="Only print the tables of every refine-*.json in --out.")
    ap.add_argument("--rerank-steps", type=int, default=0, help="refine's re-ranking after distillation (0: off).")
    ap.add_argument("--distill", action="store_true",
                    help="Also distill the MIP and the refined plan with mosaic distill's defaults and evaluate both.")
    args = ap.parse_args()
    out = Path(args.out)
    if args.tables:
        runs = [json.loads(f.read_text()) for f in sorted(out.glob("refine-*.json"))]
        for run in runs:
            print(f"{run['command']}: {run['machine']}")
        return _tables([r for run in runs for r in run["results"]], [r for run in runs for r in run["searched"]])
    out.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "load_avg_start": os.getloadavg(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(f"machine: {machine}")
    prof, table = load_profile(args.profile), load_sensitivity(args.scores)
    library = library_path(args.scores)
    if not library.is_file():  # without it every plan would be measured unaligned, and refine would only warn
        ap.error(f"{library}: the table's candidate library is missing (bench_wide.py writes it with the table)")
    decode = [w.name for w in prof.workloads if w.phase == "decode"]
    evals = eval_set("tiny")
    teacher = load_model("tiny")
    results, searched = [], []
    for target in (float(t) for t in args.targets.split(",")):
        inputs = dict(profile=args.profile, scores=args.scores, tpot_speedup=target, workloads=decode)
        p = prepare(**inputs)
        plans = {"MIP": tuple(solver.solve(**inputs, write=False).layers),
                 "greedy": tuple(solver.solve(**inputs, strategy="greedy", write=False).layers)}
        began = time.perf_counter()
        ref = refine.refine(**inputs, library=library, evaluations=args.evaluations, data=args.data,
                            rerank_steps=args.rerank_steps,
                            out=str(out / f"refined-{target}x.json"), overwrite=True)
        refine_s = time.perf_counter() - began
        plans["refined"] = tuple(ref.layers)
        record = load_search_record(out / f"refined-{target}x.search.json")
        rows = record.evaluations
        reranked = ref.solver.get("rerank")
        if reranked:  # refine's MIP seed must be the plan `mosaic solve` hands over, the one distilled below
            reranked = dict(reranked, mip_is_solve_plan=rows[reranked["mip"]["index"]]["layers"] == [
                str(c) for c in plans["MIP"]])
        searched += [dict(r, target=target, search="refine") for r in rows if r["fidelity"] == "high"]
        s = record.settings
        windows = fitness.calibration_windows("tiny", args.data or _source(table), s["data"]["seq_len"],
                                              s["high_windows"])
        weights = fitness.library_weights(library, p.allowed, table.header.model, False, p.inputs["scores"])
        fit = fitness.Fitness("tiny", windows, s["low_windows"], weights)
        low_n = sum(r["fidelity"] == "low" for r in rows)
        evo, evo_rows = evopress(p, fit, rows, low_n, s["survivors"], s["seed"])
        plans["EvoPress-style (1+lambda)"] = evo
        searched += [{"target": target, "search": "evopress", "measured_kl": kl, "predicted_kl":
                      repair.predicted_loss(p, k), "swapped_layers": sum(c != t for c, t in zip(
                          k, p.profile.teacher))} for kl, k in evo_rows]
        tokens = sum(r["tokens"] for r in rows)
        rng = random.Random(s["seed"])
        rand = []
        for _ in range(max(1, tokens // fit.tokens[True])):
            k = random_feasible(p, rng)
            if k is not None:
                rand.append((fit.measure(k, True)[0], k))
        plans["random feasible"] = min(rand)[1] if rand else None
        drop = shortgpt(p, table, target)
        plans["ShortGPT drop"] = tuple(drop) if drop else None
        for name, layers in plans.items():
            if layers is None:
                results.append({"target": target, "strategy": name, "pattern": None})
                continue
            q = measure_heldout(layers, library, table.header.model, evals, teacher)
            speed = min(v["speedup"] for v in predicted(p, layers).values())
            after = None
            if args.distill and name in ("MIP", "refined"):
                plan_file = out / f"{name.lower()}-{target}x.plan.json"
                save(repair.plan_record(p, layers, {"name": name}), plan_file)
                d = distilled_quality(plan_file, library, out / "models" / f"{name.lower()}-{target}x")
                after = {k: d[k] for k in ("kl", "heldout_loss", "recall")}
            results.append({"target": target, "strategy": name, "pattern": pattern_string(layers),
                            "layers": [c.label for c in layers], "distilled": after,
                            "predicted_speedup": speed, "predicted_kl": repair.predicted_loss(p, layers),
                            "heldout_kl": q["kl"], "heldout_loss": q["heldout_loss"], "recall": q["recall"],
                            **({"refine_seconds": refine_s, "measurements": len(rows), "tokens": tokens,
                                "rerank": reranked} if name == "refined" else {})})
            print(json.dumps(results[-1]), flush=True)
        machine["load_avg_end"] = os.getloadavg()  # written after every target: a long run keeps what it finished
        (out / f"refine-{args.targets}.json").write_text(json.dumps(
            {"machine": machine, "command": sys.argv, "results": results, "searched": searched}, indent=2))
    _tables(results, searched)


def _source(table):
    from mosaic_search.hf.data import default_source

    src = table.data.get("source")
    return src if src and Path(src).is_file() else default_source("tiny")


def _tables(results, searched):
    keys = sorted({k for r in results if r.get("recall") for k in r["recall"]})
    print("\n| target | strategy | pattern | predicted speedup | predicted KL (sum) | held-out KL | held-out loss | "
          + " | ".join(f"recall {k}" for k in keys) + " |")
    print("|---" * (7 + len(keys)) + "|")
    for r in results:
        if r["pattern"] is None:
            print(f"| {r['target']}x | {r['strategy']} | none reaches the target |" + " |" * (5 + len(keys)))
            continue
        plan = " ".join(r["layers"]) if any("+" in c for c in r.get("layers", ())) else r["pattern"]
        print(f"| {r['target']}x | {r['strategy']} | `{plan}` | {r['predicted_speedup']:.3f}x | "
              f"{r['predicted_kl']:.4f} | {r['heldout_kl']:.4f} | {r['heldout_loss']:.4f} | "
              + " | ".join(f"{r['recall'][k]:.2f}" for k in keys) + " |")
    distilled = [r for r in results if r.get("distilled")]
    if distilled:
        print("\n| target | strategy | held-out loss as built | after `mosaic distill` (defaults): KL | "
              "held-out loss | " + " | ".join(f"recall {k}" for k in keys) + " |")
        print("|---" * (5 + len(keys)) + "|")
        for r in distilled:
            d = r["distilled"]
            print(f"| {r['target']}x | {r['strategy']} | {r['heldout_loss']:.4f} | {d['kl']:.4f} | "
                  f"{d['heldout_loss']:.4f} | " + " | ".join(f"{d['recall'][k]:.2f}" for k in keys) + " |")
    reranked = [r for r in results if r.get("rerank")]
    if reranked:
        print("\n| target | finalist | origin | pattern | calibration KL as built | after N distillation steps | "
              "handed over |")
        print("|---" * 7 + "|")
        for r in reranked:
            k = r["rerank"]
            for f in k["finalists"]:
                mip = " (the MIP's plan" + (", added" if k["mip"]["added"] else "") + ")" \
                    if f["index"] == k["mip"]["index"] else ""
                print(f"| {r['target']}x | {f['index']} | {f['origin']}{mip} | `{f['pattern']}` | {f['built_kl']:.4f} "
                      f"| {f['distilled_kl']:.4f} (N={k['steps']}) | {'yes' if f['index'] == k['with'] else ''} |")
            print(f"| {r['target']}x | | refine's whole run, re-ranking included: {r['refine_seconds']:.0f} s wall | "
                  "| | | |")
    print("\n| swapped layers | plans | mean predicted KL | mean measured KL | median measured / predicted |")
    print("|---|---|---|---|---|")
    by = {}
    for r in searched:
        by.setdefault(r["swapped_layers"], []).append(r)
    for n in sorted(by):
        rs = by[n]
        ratios = [r["measured_kl"] / r["predicted_kl"] for r in rs if r["predicted_kl"] > 0]
        print(f"| {n} | {len(rs)} | {statistics.mean(r['predicted_kl'] for r in rs):.4f} | "
              f"{statistics.mean(r['measured_kl'] for r in rs):.4f} | "
              f"{statistics.median(ratios) if ratios else float('nan'):.2f}x |")


if __name__ == "__main__":
    main()
