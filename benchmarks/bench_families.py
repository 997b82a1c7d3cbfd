"""CPU latency profiles of real-size configs, one per teacher family added after qwen3 / llama / qwen3_vl, each cut to
a few decoder layers (random weights: latency does not depend on their values).

    python benchmarks/bench_families.py [--layers 2] [--workload prefill:128 --workload decode:1k] [--out DIR]

Each config is a shipped one (mosaic_search/assets/configs), with `num_hidden_layers` cut to `--layers` consecutive
layers chosen to hold every layer type the teacher has (Gemma 3: one local, one global). Prints one table row per
candidate: ms per decoder layer on each workload and the ratio to the teacher's own operator.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path


MODELS = ("Qwen/Qwen2.5-7B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3", "microsoft/Phi-4-mini-instruct",
          "google/gemma-3-1b-it", "google/gemma-3-4b-it", "Qwen/Qwen2.5-VL-7B-Instruct")


def cut(model_id: str, layers: int, folder: Path) -> Path:
    """The shipped config of `model_id` with `layers` consecutive decoder layers covering every teacher layer type."""
    from mosaic_search.assets import shipped_config_path

    obj = json.loads(shipped_config_path(model_id).read_text())
    text = obj.get("text_config", obj)
    types = text.get("layer_types")
    if types:
        start = next(s for s in range(len(types)) if set(types[s:s + layers]) == set(types))
        text["layer_types"] = types[start:start + layers]
    text["num_hidden_layers"] = layers
    path = folder / model_id.replace("/", "--")
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(obj))
    return path


def main():
    import torch

    import mosaic_search as mosaic
    from mosaic_search.hf.surgery import teacher_ops

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--workload", action="append")
    p.add_argument("--model", action="append", help="a shipped model id (repeatable; default: one per family)")
    p.add_argument("--out", default="benchmarks/results/cpu_families")
    args = p.parse_args()
    workloads = args.workload or ["prefill:128", "decode:1k"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, " \
              f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    print(f"machine: {machine}\ndate: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"layers per model: {args.layers}; workloads: {', '.join(workloads)}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model_id in args.model or MODELS:
            folder = cut(model_id, args.layers, Path(tmp))
            t0 = time.perf_counter()
            prof = mosaic.profile(str(folder), device="cpu", workloads=workloads, rounds=1,
                                  out=out / f"{folder.name}.json")
            seconds = time.perf_counter() - t0
            from mosaic_search.hf.models import load_config

            own = [str(c) for c in teacher_ops(load_config(str(folder)))]
            names = [w.name for w in prof.workloads]
            layer0 = {(str(e.candidate), e.workload): e.latency_ms for e in prof.entries if e.layer == 0}
            print(f"\n{model_id}, {args.layers} layers (teacher: {', '.join(own)}), profiled in {seconds:.0f} s")
            print("| candidate | " + " | ".join(f"{n} ms/layer" for n in names) + " |")
            print("|---|" + "---|" * len(names))
            for cand in dict.fromkeys(c for c, _ in layer0):
                cells = []
                for n in names:
                    ms, ref = layer0.get((cand, n)), layer0.get((own[0], n))
                    cells.append("-" if ms is None else f"{ms:.2f} ({ref / ms:.2f}x)" if ms and ref else f"{ms:.2f}")
                print(f"| {cand} | " + " | ".join(cells) + " |")
            results[model_id] = {"seconds": seconds, "teacher": own, "layer0_ms": {f"{c} {w}": v for (c, w), v in
                                                                                  layer0.items()}}
    (out / "results.json").write_text(json.dumps({"machine": machine, "layers": args.layers, "workloads": workloads,
                                                 "results": results}, indent=2))


if __name__ == "__main__":
    main()
