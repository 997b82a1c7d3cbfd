"""`mosaic score` on CPU with every default (teacher tiny, all operators, default data): wall time, where it goes,
decoder-layer forwards run vs the naive replace-and-rerun count, and the same accounting for a 36-layer model.

    python benchmarks/bench_score.py [--teacher tiny] [--data PATH] [--threads N] [--out DIR]

Prints a markdown report (the text of benchmarks/RESULTS-score.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path


BIG = "Qwen/Qwen3-VL-4B-Instruct"  # the 36-layer reference: its shipped config, dimensions only


def main():
    import torch

    from mosaic_search.hf import surgery
    from mosaic_search.hf.models import load_config
    from mosaic_search.operators import default_candidates
    from mosaic_search.quality import align, scorer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="tiny")
    p.add_argument("--data", default=None, help="calibration data (default: the scorer's default for the teacher)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="where the table goes (default: a temporary folder)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_score.")) / "sensitivity.json"

    calls = {"run_layer": 0, "align_s": 0.0, "teacher_s": 0.0}
    run_layer, align_fn, teacher_pass = surgery.TextStack.run_layer, align.align, scorer._teacher_pass

    def counted(self, *a, **k):
        calls["run_layer"] += 1
        return run_layer(self, *a, **k)

    def timed(key, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                calls[key] += time.perf_counter() - t
        return wrapper

    surgery.TextStack.run_layer = counted
    align.align = timed("align_s", align_fn)
    scorer._teacher_pass = timed("teacher_s", teacher_pass)

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    table = scorer.score(args.teacher, data=args.data, out=out)
    wall = time.perf_counter() - t0

    d, c = table.data, table.data["cost"]
    L = table.header.model.num_hidden_layers
    cands = list(dict.fromkeys(e.candidate for e in table.entries))
    scored = [k for k in cands if k.op != scorer.TEACHER_OP]
    rows = scorer._rows_per_batch(d["seq_len"], "cpu")
    n_score, n_align = -(-d["tokens"] // d["seq_len"] // rows), -(-d["align_windows"] // rows)
    naive_calls = len(scored) * L * L * n_score  # every item: a whole forward over the scored batches
    teacher_calls = (n_score + n_align) * L

    print(f"## `mosaic score` on CPU: {args.teacher}, every default\n")
    print(f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load:.2f} at the start")
    print(f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"- teacher: {table.header.model.id} ({L} layers); data: {d['source']}, {d['tokens']} tokens in windows of "
          f"{d['seq_len']}, {d['align_windows']} alignment windows; {len(scored)} scored candidates per layer "
          f"({', '.join(map(str, scored))}); {max(e.align_steps for e in table.entries)} "
          f"alignment steps for {', '.join(str(k) for k in scored if k.spec.aligned)}")
    print(f"\n| | seconds |\n|---|---|\n| whole run (wall) | {wall:.1f} |\n| teacher pass | {calls['teacher_s']:.1f} |"
          f"\n| local alignment ({sum(k.spec.aligned for k in scored) * L} items) | {calls['align_s']:.1f} |"
          f"\n| scoring and the rest | {wall - calls['teacher_s'] - calls['align_s']:.1f} |")
    print(f"\nTarget: under 180 s -> {'met' if wall < 180 else 'MISSED'}.\n")
    print("| work | ours | naive | ratio |\n|---|---|---|---|")
    print(f"| decoder-layer forwards run (counted) | {calls['run_layer']} | {naive_calls + teacher_calls} "
          f"| {calls['run_layer'] / (naive_calls + teacher_calls):.3f} |")
    print(f"| full-forward equivalents (accounting) | {c['done_full_forwards']:.1f} | {c['naive_full_forwards']:.1f} "
          f"| {c['ratio']:.3f} |")

    big = surgery.dims_of(load_config(BIG, shipped_ok=True))
    bc = scorer.cost(big, default_candidates(big), scorer.DEFAULT_TOKENS, scorer.DEFAULT_SEQ_LEN,
                     scorer.DEFAULT_ALIGN_STEPS)
    n = len([k for k in default_candidates(big) if k.op != scorer.TEACHER_OP])
    print(f"\n{BIG} ({big.num_layers} layers, {n} scored candidates per layer, the same defaults), from "
          f"`scorer.cost`: teacher {bc['teacher_full_forwards']:.2f} + items {bc['items_full_forwards']:.1f} + "
          f"alignment {bc['align_full_forwards']:.1f} = {bc['done_full_forwards']:.1f} full-forward equivalents vs "
          f"{bc['naive_full_forwards']:.1f} naive: ratio **{bc['ratio']:.3f}** (target <= 0.6 -> "
          f"{'met' if bc['ratio'] <= 0.6 else 'MISSED'}).")
    print(f"\nThe table: {out}")


if __name__ == "__main__":
    main()
