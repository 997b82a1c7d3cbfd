"""Quality evidence on the embedded teacher: at equal predicted latency, what each strategy's plan
costs in held-out KL to the teacher, held-out loss and long-range recall.

    python benchmarks/quality.py [--out benchmarks/results/quality]

Strategies, all on the same profile and sensitivity table (the defaults of `mosaic profile` / `mosaic score`):
the MIP plan, greedy, ShortGPT-style layer dropping (lowest block influence first), and fixed interleaved
patterns (3 GDN : 1 GQA, 3 KDA : 1 MLA, 5 SWA : 1 GQA, all SWA), each pattern next to the MIP plan solved at
the pattern's own predicted speedup. Plans are applied with `surgery.swap` and the scorer's aligned weights,
exactly as `mosaic build` applies them. Evaluation text is the end of the held-out file, disjoint from the
windows the scorer used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path


TARGETS = (1.2, 1.4, 1.6)
PATTERNS = {"3 GDN : 1 GQA": "DDDG", "3 KDA : 1 MLA": "KKKM", "5 SWA : 1 GQA": "SSSSSG", "all SWA": "S"}
EVAL_WINDOWS, SEQ_LEN = 8, 1024  # longer than every default SWA window of tiny (128, 512)


def eval_data(tokenizer):
    """The last EVAL_WINDOWS windows of the held-out text, and the fixed recall probes."""
    import torch

    from mosaic_search.hf.data import TINY_HELDOUT

    ids = torch.tensor(tokenizer(TINY_HELDOUT.read_text())["input_ids"])
    n = EVAL_WINDOWS * SEQ_LEN
    windows = ids[-n:].view(EVAL_WINDOWS, SEQ_LEN)
    probes = [json.loads(line) for line in (TINY_HELDOUT.parent / "recall_eval.jsonl").read_text().splitlines()]
    return windows, probes


def evaluate(model, teacher_logp, windows, probes, tokenizer) -> dict:
    """Mean KL(teacher || model) and loss on the windows; exact-match recall of the probes by distance."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logp = F.log_softmax(model(windows).logits[:, :-1].float(), -1)
        kl = (teacher_logp.exp() * (teacher_logp - logp)).sum(-1).mean().item()
        loss = F.nll_loss(logp.flatten(0, 1), windows[:, 1:].flatten()).item()
        hits = {}
        for p in probes:
            prompt = tokenizer(p["prompt"])["input_ids"]
            ids = torch.tensor(prompt + tokenizer(p["answer"])["input_ids"])[None]
            pred = model(ids).logits[0].argmax(-1)
            a = len(prompt)
            ok = bool((pred[a - 1:a - 1 + len(p["answer"])] == ids[0, a:a + len(p["answer"])]).all())
            bucket = "short (<128)" if p["distance"] < 128 else "long (>=128)"
            hits.setdefault(bucket, []).append(ok)
    return {"kl": kl, "loss": loss, **{f"recall {k}": sum(v) / len(v) for k, v in sorted(hits.items())}}


def apply(model, plan, library):
    """Swap every layer as `mosaic build` does (aligned weights from the library when it has them)."""
    from mosaic_search.hf import surgery
    from mosaic_search.quality.library import load_library_entry

    for i, c in enumerate(plan.layers):
        surgery.swap(model, i, c, weights=load_library_entry(library, i, c) if c.spec.aligned else None)


def shortgpt_pattern(table, n, k) -> str:
    """Drop the k layers of lowest block influence (ShortGPT), keep the rest as the teacher's gqa."""
    from mosaic_search.quality.scorer import block_influence

    bi = block_influence(table)
    drop = set(sorted(range(n), key=lambda i: bi[i])[:k])
    return "".join("X" if i in drop else "G" for i in range(n))


def main():
    import torch

    import mosaic_search as mosaic
    from mosaic_search.artifacts.schema import load_profile, load_sensitivity
    from mosaic_search.errors import InfeasibleError
    from mosaic_search.hf.data import tokenizer_of
    from mosaic_search.hf.models import load_model
    from mosaic_search.quality.library import library_path
    from mosaic_search.search import solver

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/quality")
    ap.add_argument("--profile")
    ap.add_argument("--scores")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.platform()}, torch {torch.__version__}; "
          f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    profile = args.profile or str(out / "profile.json")
    if not args.profile:
        mosaic.profile("tiny", workloads=["prefill:512", "decode:1k", "decode:256:b4"], out=profile)
    scores = args.scores or str(out / "sensitivity.json")
    if not args.scores:
        mosaic.score("tiny", out=scores)
    table = load_sensitivity(scores)
    library = library_path(scores)
    prof = load_profile(profile)
    decode = [w.name for w in prof.workloads if w.phase == "decode"]
    n = table.header.model.num_hidden_layers
    inputs = dict(profile=profile, scores=scores, workloads=decode, write=False)

    def speed(plan):
        return min(plan.predicted[w]["speedup"] for w in decode)

    plans = []  # (group, strategy, plan)
    for t in TARGETS:
        plans.append((f"{t}x", "MIP", solver.solve(tpot_speedup=t, **inputs)))
        plans.append((f"{t}x", "greedy", solver.solve(tpot_speedup=t, strategy="greedy", **inputs)))
        for k in range(1, n + 1):
            drop = solver.solve(strategy=f"pattern:{shortgpt_pattern(table, n, k)}", **inputs)
            if speed(drop) >= t:
                plans.append((f"{t}x", f"ShortGPT drop {k}", drop))
                break
    for name, pattern in PATTERNS.items():
        fixed = solver.solve(strategy=f"pattern:{pattern}", **inputs)
        s = speed(fixed)
        plans.append((f"{name} ({s:.2f}x)", f"pattern {pattern}", fixed))
        try:
            plans.append((f"{name} ({s:.2f}x)", "MIP", solver.solve(tpot_speedup=s, **inputs)))
        except InfeasibleError as e:
            print(f"MIP at {s:.2f}x: {e}")

    tok = tokenizer_of("tiny")
    teacher = load_model("tiny")
    windows, probes = eval_data(tok)
    with torch.no_grad():
        teacher_logp = torch.log_softmax(teacher(windows).logits[:, :-1].float(), -1)
    base = evaluate(teacher, teacher_logp, windows, probes, tok)
    rows = [{"group": "teacher", "strategy": "all gqa", "pattern": "G" * n, "speedup": 1.0, "predicted_kl": 0.0,
             **base}]
    for group, strategy, plan in plans:
        model = load_model("tiny")
        apply(model, plan, library)
        rows.append({"group": group, "strategy": strategy, "pattern": plan.pattern, "speedup": speed(plan),
                     "predicted_kl": plan.objective, **evaluate(model, teacher_logp, windows, probes, tok)})
    (out / "quality.json").write_text(json.dumps(rows, indent=2))
    keys = [k for k in rows[0] if k.startswith("recall")]
    print("\n| target | strategy | pattern | predicted speedup | predicted KL (sum) | measured KL | held-out loss | "
          + " | ".join(keys) + " |")
    print("|---" * (7 + len(keys)) + "|")
    for r in rows:
        print(f"| {r['group']} | {r['strategy']} | `{r['pattern']}` | {r['speedup']:.2f}x | {r['predicted_kl']:.4f} | "
              f"{r['kl']:.4f} | {r['loss']:.4f} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
