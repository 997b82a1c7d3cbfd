"""GPU measurements behind BENCHMARKS.md: device copy bandwidth, the latency profile of a real-size teacher,
the teacher's decode step against its bandwidth floor, and predicted-vs-measured whole-model latency.

    python benchmarks/bench_gpu.py profile  --model Qwen/Qwen3-VL-4B-Instruct --out DIR
    python benchmarks/bench_gpu.py validate --model Qwen/Qwen3-VL-4B-Instruct --profile DIR/profile.json --out DIR
    python benchmarks/bench_gpu.py floor    --model Qwen/Qwen3-VL-4B-Instruct --out DIR
    python benchmarks/bench_gpu.py plans    --profile DIR/profile.json --out DIR   (solve, then `mosaic bench`)
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path


def copy_bandwidth_gbs(n_bytes: int = 2 << 30, reps: int = 20) -> float:
    """Device-to-device copy rate, counting bytes read plus bytes written."""
    import torch

    src = torch.randn(n_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    end.synchronize()
    return 2 * n_bytes * reps / (start.elapsed_time(end) / 1e3) / 1e9


def decode_bytes(model_id: str, context: int, batch: int = 1) -> int:
    """Bytes one decode step must read: decoder weights, final norm and LM head, plus the K/V cache."""
    import torch

    from mosaic_search.hf import surgery
    from mosaic_search.hf.models import load_config, model_from_config

    config = load_config(model_id, shipped_ok=True)
    with torch.device("meta"):
        model = model_from_config(config, dtype="bfloat16")
    stack = surgery.text_stack(model)
    weights = sum(p.numel() * 2 for m in (stack.layers, stack.norm, stack.lm_head) for p in m.parameters())
    dims = surgery.dims_of(config)
    kv = dims.num_layers * 2 * dims.kv_dim * context * batch * 2
    return weights + kv


def cmd_profile(args):
    import mosaic_search as mosaic

    out = Path(args.out)
    t0 = time.time()
    bw = copy_bandwidth_gbs()
    print(f"copy bandwidth {bw:.0f} GB/s", flush=True)

    def progress(done, total, what):
        print(f"[{time.time() - t0:6.1f}s] {done}/{total} {what}", flush=True)

    prof = mosaic.profile(model=args.model, device="cuda", out=out / "profile.json", progress=progress)
    elapsed = time.time() - t0
    rows = []
    for w in prof.workloads:
        if w.phase == "decode" and w.batch_size == 1 and prof.baseline_ms.get(w.name):
            floor_ms = decode_bytes(args.model, w.seq_len) / (bw * 1e9) * 1e3
            rows.append({"workload": w.name, "measured_ms": prof.baseline_ms[w.name], "floor_ms": floor_ms,
                         "ratio": prof.baseline_ms[w.name] / floor_ms})
    spread = [e.p80_ms / e.p20_ms for e in prof.entries if e.status == "ok" and e.layer == 0 and e.p20_ms]
    summary = {"date": datetime.date.today().isoformat(), "device": prof.header.env.get("device_name"),
               "env": prof.header.env, "copy_bandwidth_gbs": bw, "profile_seconds": elapsed,
               "floor": rows, "max_p80_over_p20": max(spread), "median_p80_over_p20": sorted(spread)[len(spread) // 2],
               "statuses": sorted({(str(e.candidate), e.workload, e.status) for e in prof.entries
                                   if e.status != "ok" and e.layer == 0})}
    (out / "profile_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "env"}, indent=1, default=str))


def cmd_validate(args):
    from mosaic_search.artifacts import schema
    from mosaic_search.latency.profiler import validate
    from mosaic_search.latency.timing import CudaTimer

    prof = schema.load_profile(args.profile)
    wanted = set(args.workload or [w.name for w in prof.workloads])
    prof = schema.LatencyProfile(header=prof.header, workloads=tuple(w for w in prof.workloads if w.name in wanted),
                                 baseline_ms=prof.baseline_ms, fixed_ms=prof.fixed_ms, entries=prof.entries)
    rows = validate(prof, model=args.model, device="cuda", timer=CudaTimer(warmup=2, repeats=7))
    Path(args.out, "validate.json").write_text(json.dumps(rows, indent=2))
    for r in rows:
        print(f"{r['assignment']:18s} {r['workload']:16s} predicted {r['predicted_ms']:9.3f} "
              f"measured {r['measured_ms']:9.3f} error {r['error_pct']:+6.2f}%")


def cmd_floor(args):
    """The teacher's batch-1 decode step, eager and compiled (both replayed from CUDA graphs), against the
    bandwidth floor; plus a kernel-level breakdown of one compiled step at the shortest context."""
    import torch

    from mosaic_search.artifacts.schema import parse_workload
    from mosaic_search.latency.harness import load_bench
    from mosaic_search.latency.timing import CudaTimer, Stats

    bw = copy_bandwidth_gbs()
    timer = CudaTimer()
    rows = []
    contexts = args.context or ["1k", "16k", "96k"]
    for compiled in (False, True):
        _, bench = load_bench(args.model, "cuda", compile_decode=compiled)
        for c in contexts:
            w = parse_workload(f"decode:{c}")
            t0 = time.time()
            stats = Stats.of(timer(bench.model_fn(w), "decode"))
            floor_ms = decode_bytes(args.model, w.seq_len) / (bw * 1e9) * 1e3
            rows.append({"workload": w.name, "compiled": compiled, "measured_ms": stats.median_ms,
                         "p20_ms": stats.p20_ms, "p80_ms": stats.p80_ms, "floor_ms": floor_ms,
                         "ratio": stats.median_ms / floor_ms, "seconds": time.time() - t0,
                         "fallbacks": list(bench.fallbacks)})
            print(json.dumps(rows[-1]), flush=True)
        if compiled:
            step = bench.model_fn(parse_workload(f"decode:{contexts[0]}"))
            with torch.inference_mode():
                step()
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    step()
                    torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
            Path(args.out, "floor_kernels.txt").write_text(table)
            print(table)
        del bench
        torch.cuda.empty_cache()
    summary = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
               "torch": torch.__version__, "copy_bandwidth_gbs": bw, "batch": 1, "dtype": "bfloat16",
               "cuda_graphs": True, "rows": rows}
    Path(args.out, "floor.json").write_text(json.dumps(summary, indent=2))


def cmd_plans(args):
    """Solve the 1.5x/2.5x TPOT-at-96k and 1.5x TTFT-at-32k plans on the profile (synthetic scores, see
    gpu_plans.py) and measure each with `mosaic bench` (random weights; one process, so compiled layers
    are shared between plans)."""
    from gpu_plans import solve_plans

    from mosaic_search.latency.bench import bench

    workloads = args.workload or ["decode-b1-c96k", "decode-b1-c16k", "prefill-b1-p32k"]
    for name, plan in solve_plans(args.profile, Path(args.out), Path(args.out) / "synthetic_scores.json").items():
        t0 = time.time()
        rows = bench(str(plan), workloads=workloads, device="cuda")
        Path(args.out, f"bench-{name}.json").write_text(json.dumps(rows, indent=2))
        for r in rows:
            print(f"{name:16s} {r['workload']:16s} teacher {r['teacher_ms']:9.3f} plan {r['model_ms']:9.3f} "
                  f"measured {r['measured_speedup']:.3f}x predicted {r['predicted_speedup'] or 0:.3f}x "
                  f"error {r['error_pct'] or 0:+.1f}%  ({time.time() - t0:.0f}s)", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["profile", "validate", "floor", "plans"])
    p.add_argument("--model", default="Qwen/Qwen3-VL-4B-Instruct")
    p.add_argument("--out", required=True)
    p.add_argument("--profile")
    p.add_argument("--workload", action="append")
    p.add_argument("--context", action="append", help="floor: decode contexts such as 1k (default 1k, 16k, 96k)")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    {"profile": cmd_profile, "validate": cmd_validate, "floor": cmd_floor, "plans": cmd_plans}[args.step](args)


if __name__ == "__main__":
    main()
