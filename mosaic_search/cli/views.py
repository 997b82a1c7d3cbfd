"""What each `mosaic` command prints from the library's result: its tables, or with --json its JSON."""

from __future__ import annotations

from pathlib import Path

from .terminal import console, emit_json, ms, print_table, x


def _wrote(*paths) -> None:
    console.print("wrote " + " and ".join(str(p) for p in paths if p))


def profile(prof, path, table=None, as_json: bool = False) -> None:
    """Stage 1: per-layer latency of every candidate at layer 0 (speedup vs gqa), the timing spread, additivity."""
    from ..latency import profiler

    rows, noise = prof.validation, profiler.spread(prof)
    if as_json:
        return emit_json({"profile": str(path), "validation": list(rows), "spread": noise, "table": table})
    layer0 = {(e.candidate, e.workload): e for e in prof.entries if e.layer == 0}
    gqa = {w: layer0.get((profiler.Candidate.teacher(), w)) for w in (w.name for w in prof.workloads)}
    body = []
    for cand in dict.fromkeys(c for c, _ in layer0):
        cells = []
        for w in prof.workloads:
            e, ref = layer0[(cand, w.name)], gqa[w.name]
            if e.status != "ok":
                cells.append(e.status)
            else:
                ratio = f" ({x(ref.latency_ms / e.latency_ms)})" if ref and ref.status == "ok" and e.latency_ms else ""
                cells.append(f"{ms(e.latency_ms)}{ratio}")
        body.append((cand.label, *cells))
    body.append(("fixed part", *(ms(prof.fixed_ms.get(w.name)) for w in prof.workloads)))
    body.append(("whole teacher", *(ms(prof.baseline_ms.get(w.name)) for w in prof.workloads)))
    print_table(f"latency per decoder layer, ms (speedup vs gqa): {prof.header.env.get('device_name')}",
                [("candidate", "label"), *((w.name, "num") for w in prof.workloads)], body)
    if noise:
        console.print(f"timing spread, p80/p20 per entry: median {noise['median']:.2f}x, max {noise['max']:.2f}x "
                      f"({noise['worst']}) over {noise['entries']} entries")
    _wrote(path, table)
    if rows:
        print_table("additivity: fixed + sum of layers vs whole model",
                    [("assignment", "text"), ("pattern", "text"), ("workload", "label"), ("predicted ms", "num"),
                     ("measured ms", "num"), ("error %", "num")],
                    [(r["assignment"], r["pattern"], r["workload"], ms(r["predicted_ms"]), ms(r["measured_ms"]),
                      f"{r['error_pct']:+.1f}") for r in rows], lead=3)


def score(table, path, seconds: float, table_out=None, as_json: bool = False) -> None:
    """Stage 2: the KL heat table, layers by candidates, with block influence, the work done and the files."""
    from rich.text import Text

    from ..artifacts.header import to_json
    from ..hf.data import SELF
    from ..quality import scorer
    from ..quality.library import library_of, library_path

    library, rho = library_of(path), scorer.proxy_agreement(table)
    # a library beside the table that this run did not write (it scored no aligned candidate) is an earlier table's
    kept = library_path(path) if library is None and library_path(path).is_file() else None
    if as_json:
        return emit_json({**to_json(table), "path": str(path), "seconds": seconds, "library": str(library)
                          if library else None, "kept_library": str(kept) if kept else None,
                          "block_influence_vs_drop": rho, "table": table_out})
    cands = list(dict.fromkeys(e.candidate for e in table.entries))
    cell = {(e.layer, e.candidate): e.kl for e in table.entries}
    top = max(cell.values()) or 1.0
    bi, rows, c = scorer.block_influence(table), [], table.data["cost"]
    for layer in sorted({e.layer for e in table.entries}):
        shade = [f"on color({232 + round(12 * (cell[layer, k] / top) ** 0.5)})" for k in cands]
        milli = [1e3 * cell[layer, k] for k in cands]
        rows.append((str(layer), *(Text(f"{m:.3g}" if m < 1e3 else f"{m:.0f}", style=s) for m, s in zip(milli, shade)),
                     f"{bi.get(layer, float('nan')):.2f}"))
    source = table.data["source"]
    source = source if source == SELF else Path(source).name  # the file's name: its folder made titles wrap
    print_table(f"KL(teacher || swapped), 1e-3 nats/token: {table.header.model.id}, {table.data['tokens']} tokens "
                f"of {source}",
                [("layer", "num"), *((k.label, "num") for k in cands), ("BI", "num")], rows,
                caption=f"work {c['done_full_forwards']:.1f} full-forward equivalents vs "
                        f"{c['naive_full_forwards']:.1f} naive ({c['ratio']:.0%}); {seconds:.0f} s"
                        + ("" if rho is None else f"\nBI (block influence) vs drop KL, rank correlation {rho:.2f}"))
    _wrote(path, library, table_out)
    if kept:
        console.print(f"kept {kept}: an earlier run's library, for another table (no candidate scored now needs "
                      "aligned weights; plans solved on this table build without it)")


def sweep(front, table=None, as_json: bool = False) -> None:
    """Stage 3 --sweep: the Pareto frontier (a `Pareto` record), one row per target speedup."""
    from ..artifacts.header import to_json

    if as_json:
        return emit_json({**to_json(front), "table": table})
    workloads = front.constraints["workloads"]
    print_table(f"Pareto frontier: {front.header.model.id} (predicted loss, and speedup per workload, vs target)",
                [("target", "num"), ("loss", "num"), ("pattern", "label"), *((w, "num") for w in workloads)],
                [(x(pt["target_speedup"]), f"{pt['objective']:.4g}" if pt["feasible"] else "infeasible",
                  pt.get("pattern", ""),
                  *(x(pt["predicted"][w]["speedup"]) if pt["feasible"] else "-" for w in workloads))
                 for pt in front.points])
    console.print("wrote " + ", ".join([*front.files, *([table] if table else [])]))


def plans(plans: list, paths: list, table=None, as_json: bool = False, many: bool = False) -> None:
    """Stage 3: each plan's operator per layer, the loss it adds and the ms it saves, then predicted ms and speedup."""
    from ..artifacts.header import to_json
    from ..search.sources import describe

    if as_json:
        return emit_json([{**to_json(p), "path": str(path)} for p, path in zip(plans, paths)] if many else
                         {**to_json(plans[0]), "path": str(paths[0]), "table": table})
    for plan, path in zip(plans, paths):
        s, pred = plan.solver, plan.predicted
        gap = "-" if s.get("mip_gap") is None else f"{s['mip_gap']:.2g}"
        rows = [(str(row["layer"]), plan.layers[row["layer"]].label, f"{row['loss']:.4g}",
                 *(ms(row["saved_ms"].get(w)) for w in pred)) for row in s["per_layer"]]
        rows += [("", "predicted ms", "", *(ms(v["latency_ms"]) for v in pred.values())),
                 ("", "speedup", "", *(x(v["speedup"]) for v in pred.values()))]
        print_table(f"{plan.pattern}  loss {plan.objective:.4g}  ({s['name']}: {s['status']}, "
                    f"{s['seconds'] * 1000:.0f} ms, gap {gap}); ms saved per layer, by workload",
                    [("layer", "num"), ("operator", "label"), ("loss added", "num"), *((w, "num") for w in pred)],
                    rows, lead=2)
        if serving := plan.constraints.get("serving"):
            console.print(serving_line(serving), markup=False, highlight=False)
        for name, src in s.get("read", {}).items():
            console.print(f"{name}: {describe(src)}", markup=False, highlight=False)  # wrapped to the terminal
        _wrote(path, table)


def serving_line(s: dict) -> str:
    """What a serving plan (`solve --throughput-speedup`) serves: its batch, predicted throughput against the
    teacher's at the teacher's own largest fitting batch, and its memory against the limit."""
    teacher = (f"the teacher's {s['teacher_throughput_tokens_per_s']:.1f} at batch {s['teacher_batch']}"
               if s["teacher_fits"] else f"the teacher's {s['teacher_throughput_tokens_per_s']:.1f} at batch "
               f"{s['teacher_batch']}, which does not fit")
    return (f"serving: batch {s['batch']} at context {s['context']}, {s['throughput_tokens_per_s']:.1f} tokens/s "
            f"predicted, {s['throughput_tokens_per_s'] / s['teacher_throughput_tokens_per_s']:.2f}x {teacher}; "
            f"memory {s['memory_bytes'] / 1e9:.2f} GB of {s['memory_bytes_limit'] / 1e9:.2f} GB")


def model_dir(path, as_json: bool = False) -> None:
    """Stage 4: where the built model went, from which teacher and plan (the plan it carries), and how to load it."""
    import json

    from ..artifacts.plan import PLAN_FILE

    plan = Path(path) / PLAN_FILE
    carried = json.loads(plan.read_text()) if plan.is_file() else {}
    made = {"teacher": carried.get("model", {}).get("id"), "pattern": carried.get("pattern")} if carried else {}
    if as_json:
        return emit_json({"model_dir": str(path), **made})
    if made:
        console.print(f"built {made['pattern']} from {made['teacher']}")
    console.print(f"wrote {path}  (load with from_pretrained(..., trust_remote_code=True))")


def distilled(model: str, path, record, as_json: bool = False) -> None:
    """Stage 5: quality before and after distillation (when measured) and the recovered model's directory, from
    its `DistillRecord`."""
    if as_json:
        return emit_json({"model_dir": str(path), "quality": record.quality, "losses": list(record.losses),
                          "teacher": record.settings.get("teacher"), "data": record.settings.get("data"),
                          "dtype": record.settings.get("dtype")})
    measured = record.quality
    if measured["after"] is not None:
        quality(f"{Path(model).name}: quality against {record.settings['teacher']} before and after distillation",
                {"before": measured["before"], "after": measured["after"]})
    data = (record.settings.get("data") or {}).get("source", "?")
    console.print(f"distilled from {record.settings.get('teacher')} on {data}; weights in "
                  f"{record.settings.get('dtype') or 'float32'}")
    console.print(f"wrote {path}  (load with from_pretrained(..., trust_remote_code=True))")


def evaluated(model: str, result: dict, as_json: bool = False) -> None:
    """`eval`: the model's KL, held-out loss and recall against its teacher."""
    if as_json:
        return emit_json(result)
    e = result["eval"]
    quality(f"{model} against {result['teacher']}: {e['windows']} x {e['seq_len']} tokens of {e['source']}"
            + (f", {e['probes']} probes" if e["probes"] else "")
            + (f", {e['questions']} questions" if e.get("questions") else ""), {"model": result})


def quality(title: str, rows: dict) -> None:
    """KL, held-out loss, recall per bucket and question accuracy (when measured), one row per measured model."""
    buckets = list(dict.fromkeys(b for q in rows.values() for b in q.get("recall", {})))
    asked = any("questions" in q for q in rows.values())
    print_table(title, [("", "label"), ("KL", "num"), ("held-out loss", "num"),
                        *((f"recall {b}", "num") for b in buckets), *([("questions", "num")] if asked else [])],
                [(name, f"{q['kl']:.4f}", f"{q['heldout_loss']:.4f}",
                  *(f"{q['recall'][b]:.1%}" if b in q.get("recall", {}) else "-" for b in buckets),
                  *([f"{q['questions']['accuracy']:.1%}" if "questions" in q else "-"] if asked else []))
                 for name, q in rows.items()])


def bench(rows: list, target: str, device: str, as_json: bool = False) -> None:
    """`bench`: measured vs predicted speedup per workload."""
    if as_json:
        return emit_json(rows)
    print_table(f"{target} vs {rows[0]['teacher']} on {device} (workloads: {rows[0]['workloads_from']})",
                [("workload", "label"), *((col, "num") for col in ("teacher ms", "model ms", "measured", "predicted",
                                                                   "error %"))],
                [(r["workload"], ms(r["teacher_ms"]), ms(r["model_ms"]), x(r["measured_speedup"]),
                  x(r["predicted_speedup"]), "-" if r["error_pct"] is None else f"{r['error_pct']:+.1f}")
                 for r in rows])


def bench_generate(rows: list, target: str, device: str, batch: int, new_tokens: int, as_json: bool = False) -> None:
    """`bench --generate`: TTFT, TPOT and tokens/s of model.generate per context, against all-gqa and stock."""
    if as_json:
        return emit_json(rows)
    body = []
    for r in rows:
        ratios = [x(r[f"tpot_speedup_vs_{ref}"]) for ref in ("all-gqa", "stock")]
        body.append((str(r["context"]), ms(r["model_ttft_ms"]), ms(r["model_tpot_ms"]),
                     f"{r['model_tokens_per_s']:.1f}", ms(r["all-gqa_tpot_ms"]), ms(r["stock_tpot_ms"]), *ratios,
                     x(r["predicted_tpot_speedup"])))
    print_table(f"{target}: model.generate on {device}, batch {batch}, {new_tokens} new tokens "
                f"(stock teacher: {rows[0]['stock_mode']} cache)",
                [(col, "num") for col in ("context", "TTFT ms", "TPOT ms", "tokens/s", "all-gqa TPOT", "stock TPOT",
                                          "TPOT vs all-gqa", "TPOT vs stock", "predicted")], body)


def demo(path) -> None:
    """`demo`: where the report went."""
    console.print(f"wrote {path / 'report.md'} (plots: sensitivity.png, pareto.png, plans.png)")


OPS_WIDE = 120  # terminal columns from which `ops` shows each operator's description in its table


def ops(specs, as_json: bool = False) -> None:
    """`ops`: every registered operator, its axis (mixer or MLP), HF layer type, params (optional ones marked '?')
    and whether its fast path runs here."""
    rows = []
    for spec in specs:
        ok, why = spec.fast_path()
        rows.append({"op": spec.name, "symbol": spec.symbol, "axis": spec.axis, "layer_type": spec.layer_type,
                     "params": [p + "?" * (p in spec.optional) for p in spec.params], "fast_path": ok,
                     "fast_path_note": why, "summary": spec.summary})
    if as_json:
        return emit_json(rows)
    # why a fast path does not run, once per distinct reason under the table: an install hint stays on one line
    notes = list(dict.fromkeys(r["fast_path_note"] for r in rows if not r["fast_path"]))
    # a terminal too narrow for the descriptions beside the table gets them under it, one per operator
    beside = console.width >= OPS_WIDE
    columns = [("op", "label"), ("sym", "label"), ("axis", "label"), ("HF layer type", "label"), ("params", "label"),
               ("fast path", "label")] + [("what", "text")] * beside
    print_table("mosaic operators", columns, [
        (r["op"], r["symbol"], r["axis"], r["layer_type"] or "-", ",".join(r["params"]) or "-",
         "yes" if r["fast_path"] else f"no ({notes.index(r['fast_path_note']) + 1})", r["summary"])[:len(columns)]
        for r in rows], lead=len(columns))
    if not beside:
        for r in rows:
            console.print(f"{r['op']}: {r['summary']}")
    for k, note in enumerate(notes, 1):
        console.print(f"({k}) {note}")


def check(results: list, model: str, layer: int, tokens: int, as_json: bool = False) -> None:
    """`check`: per candidate, whether generation with a cache equals generation without, and its tokens."""
    from ..operators import Candidate

    if as_json:
        return emit_json(results)
    print_table(f"swap check: {model}, layer {layer}, {tokens} new tokens",
                [("candidate", "label"), ("cache == no cache", "label"), ("tokens", "text")],
                [(Candidate.parse(r["candidate"]).label, "yes" if r["match"] else "NO",
                  " ".join(map(str, r["tokens"]))) for r in results], lead=3)


def refined(plan, path, record, record_path, table=None, as_json: bool = False) -> None:
    """`refine`: the plan chosen by measured KL next to its seeds (additive prediction vs measured), then the plan."""
    from ..artifacts.header import to_json

    if as_json:
        return emit_json({"plan": {**to_json(plan), "path": str(path)}, "search_record": str(record_path),
                          "table": table})
    high = [r for r in record.evaluations if r["fidelity"] == "high"]
    seeds = [r for r in high if r["origin"] != "move"]
    best = record.evaluations[record.best]
    shown = seeds + ([best] if best["origin"] == "move" else [])
    rows = [(r["origin"] + (" (chosen)" if r["index"] == record.best else ""), r["pattern"], f"{r['predicted_kl']:.4g}",
             f"{r['measured_kl']:.4g}", *(x(v["speedup"]) for v in r["predicted"].values())) for r in shown]
    workloads = list(best["predicted"])
    print_table(f"refine: {len(record.evaluations)} measurements ({len(high)} on every window, {best['tokens']} tokens "
                f"each); predicted = sum of single-swap scores, measured = KL(teacher || plan)",
                [("plan", "label"), ("pattern", "label"), ("predicted KL", "num"), ("measured KL", "num"),
                 *((w, "num") for w in workloads)], rows, lead=2)
    plans([plan], [path], table)
    _wrote(record_path)
