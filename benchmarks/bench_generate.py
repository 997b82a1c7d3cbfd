"""`model.generate` end to end for searched plans against an all-gqa build and the stock teacher class: what a user
gets, next to what the profiler's harness predicted.

Plans: TPOT 1.5x and 2.5x at decode-b1-c96k, and one with every operator (gqa, swa, gdn, kda, mla with minimum
counts, TPOT 1.3x; `--targets` changes the three), all solved on a committed profile with `gpu_plans.py`'s SYNTHETIC scores (latency check only:
there are no teacher weights on these machines). Every model has random weights of the teacher's dimensions and is
the built model class in memory (`hf.assembly.as_built`: the same remote code a built directory loads, without writing
8 GB per plan), called through `generate` with its default generation config (the static cache: on CUDA,
transformers compiles the decode step and replays it from a CUDA graph). The stock teacher runs in its best mode
(`bench.stock_mode`). Per context and batch: TTFT, TPOT, tokens/s (medians), TPOT speedup over the all-gqa build
measured and predicted.

    python benchmarks/bench_generate.py --model Qwen/Qwen3-VL-4B-Instruct --device cuda --contexts 1k,16k,96k \\
        --profile benchmarks/results/profiles/Qwen--Qwen3-VL-4B-Instruct--nvidia-h100-80gb-hbm3.json --out DIR
    python benchmarks/bench_generate.py --model tiny --profile profiles/tiny--<cpu>.json --contexts 256 \\
        --targets 1.1,1.2,1.05 --every-op-min gdn=1,kda=1,mla=1 --out DIR   (a CPU dry run of the same script)

Writes DIR/generate.json (rows, plans, environment, command) and DIR/generate.md (the table). A GPU run fits two
calls of under 8 minutes: `--contexts 1k,16k` then `--contexts 96k --batches 1` (first-call compilation and fla
autotuning are paid once per model and context, in the warm-up call, and reported).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path


def solve_plans(profile_path: str, out: Path, targets, every_op_min: str) -> dict:
    """{name: LayerPlan}: two TPOT targets over any operator, then the third with every operator, solved on the
    profile with the synthetic scores, each constrained on the profile's batch-1 decode workload of the longest
    context (decode-b1-c96k on a GPU profile), named like `tpot-2.5x-decode-b1-c96k`."""
    from gpu_plans import synthetic_scores

    from mosaic_search.artifacts import schema
    from mosaic_search.search import solver

    profile = schema.load_profile(profile_path)
    scores = str(schema.save(synthetic_scores(profile), out / "synthetic_scores.json"))
    workload = max((w for w in profile.workloads if w.phase == "decode" and w.batch_size == 1),
                   key=lambda w: w.seq_len).name
    mins = {op: int(n) for op, n in (item.split("=") for item in every_op_min.split(","))}
    extra = ({}, {}, dict(ops="gqa,swa,gdn,kda,mla", min_count=mins))
    plans = {}
    for kind, target, kwargs in zip(("tpot", "tpot", "every-op"), targets, extra):
        name = f"{kind}-{target}x-{workload}"
        plans[name] = solver.solve(profile=profile_path, scores=scores, out=str(out / f"{name}.json"),
                                   tpot_speedup=target, workloads=[workload], **kwargs)
        print(f"{name}: {plans[name].pattern}  predicted {plans[name].predicted[workload]['speedup']:.3f}x on "
              f"{workload}", flush=True)
    return plans


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="Qwen/Qwen3-VL-4B-Instruct")
    p.add_argument("--profile", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--contexts", default="1k,16k,96k")
    p.add_argument("--batches", default="1,8", help="batch sizes; a batch that runs out of memory is recorded")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--targets", default="1.5,2.5,1.3", help="TPOT targets: two plans of any operator, one of every operator")
    p.add_argument("--every-op-min", default="gdn=4,kda=4,mla=2")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch

    from mosaic_search.artifacts import schema
    from mosaic_search.hf import device
    from mosaic_search.latency import bench as bench_mod
    from mosaic_search.latency.timing import is_oom

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plans = solve_plans(args.profile, out, [float(t) for t in args.targets.split(",")], args.every_op_min)
    dtype = device.default_dtype(args.device)
    models = {"stock": (bench_mod.stock_teacher(args.model, args.device, dtype), bench_mod.stock_mode(args.device)),
              "all-gqa": (bench_mod.random_build(args.model, args.device, dtype), {})}
    for name, plan in plans.items():
        models[name] = (bench_mod.random_build(args.model, args.device, dtype, layers=plan.layers), {})
    contexts = [schema.parse_workload(f"decode:{c}").seq_len for c in args.contexts.split(",")]
    rows, started = [], time.time()
    for batch in map(int, args.batches.split(",")):
        for context in contexts:
            t0 = time.time()
            try:
                row = bench_mod.time_generate(models, [context], args.new_tokens, batch, args.device, args.rounds)[0]
            except Exception as e:  # noqa: BLE001 - a batch that does not fit is a result, not a crash
                if not is_oom(e):
                    raise
                rows.append({"context": context, "batch_size": batch, "status": "oom"})
                torch.cuda.empty_cache()
                continue
            row["seconds"] = time.time() - t0
            w = schema.workload_name("decode", batch, context)
            for name, plan in plans.items():
                row[f"{name}_pattern"] = plan.pattern
                row[f"{name}_measured_tpot_speedup"] = row["all-gqa_tpot_ms"] / row[f"{name}_tpot_ms"]
                row[f"{name}_predicted_tpot_speedup"] = plan.predicted.get(w, {}).get("speedup")
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"command": sys.argv, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "env": device.environment(args.device), "dtype": dtype, "seconds": time.time() - started,
              "regime": "model.generate, greedy, static cache (compiled + CUDA graphs on CUDA), random weights",
              "plans": {n: p.pattern for n, p in plans.items()}, "rows": rows}
    (out / "generate.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / "generate.md").write_text(markdown(result) + "\n")
    print(markdown(result))


def markdown(result: dict) -> str:
    """The results as a table: TPOT (ms) per model and context, and each plan's speedup over all-gqa."""
    names = ["stock", "all-gqa", *result["plans"]]
    lines = [f"{result['env'].get('device_name')}, {result['dtype']}, {result['regime']}; {result['date']}", "",
             "| batch | context | " + " | ".join(f"{n} TPOT ms" for n in names) + " | "
             + " | ".join(f"{n} measured / predicted" for n in result["plans"]) + " |",
             "|" + "---|" * (2 + len(names) + len(result["plans"]))]
    for r in result["rows"]:
        if r.get("status") == "oom":
            lines.append(f"| {r['batch_size']} | {r['context']} | out of memory |")
            continue
        tpots = " | ".join(f"{r[f'{n}_tpot_ms']:.2f}" for n in names)
        ratios = " | ".join(f"{r[f'{n}_measured_tpot_speedup']:.2f}x / "
                            + ("-" if r[f"{n}_predicted_tpot_speedup"] is None
                               else f"{r[f'{n}_predicted_tpot_speedup']:.2f}x") for n in result["plans"])
        lines.append(f"| {r['batch_size']} | {r['context']} | {tpots} | {ratios} |")
    lines += ["", "TTFT ms: " + "; ".join(
        f"c{r['context']} b{r['batch_size']}: " + ", ".join(f"{n} {r[f'{n}_ttft_ms']:.0f}" for n in names)
        for r in result["rows"] if r.get("status") != "oom")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
