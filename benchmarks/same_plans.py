"""Do two versions of mosaic's solver give the same plans for the same inputs? (A refactor's check of stage 3.)

    PYTHONPATH=CHECKOUT python benchmarks/same_plans.py dump OUT.json   # every plan that checkout's solver gives
    python benchmarks/same_plans.py compare A.json B.json               # exit 1 and list every difference

`dump` solves the synthetic 36-layer instances of that checkout's own `benchmarks/bench_solver.py` (both kinds,
8 seeds each) every way the solver offers: three speedup targets, greedy, a pinned pattern, cache / count / pin /
ops constraints together, three diverse plans and a 20-point sweep on three seeds each. Timings, dates, argv and the
fingerprints of in-memory inputs (which hash their creation time) are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VOLATILE = {"seconds", "created_at", "created_by", "command", "time_limit_s", "files", "inputs"}
CASES = {"1.5": dict(speedup=1.5), "2.5": dict(speedup=2.5),
         "ttft1.3-tpot2": dict(ttft_speedup=1.3, tpot_speedup=2.0),
         "greedy": dict(speedup=1.5, strategy="greedy"), "pattern": dict(strategy="pattern:GGGD", pins=["0=swa"]),
         "constrained": dict(speedup=1.2, max_cache_bytes=10**9, cache_batch=2, max_count={"gqa": 30},
                             min_count=["gdn=2"], pins=["3=gqa", "5=mla"], ops="gqa,swa,gdn,mla,kda,none")}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    return value


def dump(out: Path) -> None:
    """Every plan of the checkout on PYTHONPATH, as stripped JSON objects keyed by instance and case."""
    import mosaic_search
    from mosaic_search.search import solver

    sys.path.insert(0, str(Path(mosaic_search.__file__).resolve().parents[1] / "benchmarks"))
    import bench_solver  # that checkout's instances: the records' constructors change between versions

    try:
        from mosaic_search.artifacts.header import to_json
    except ImportError:  # versions with one schema module
        from mosaic_search.artifacts.schema import to_json
    res = {}
    for kind in ("realistic", "uncorrelated"):
        for seed in range(1000, 1008):
            p, s = bench_solver.instance(seed, kind)
            for label, kw in CASES.items():
                try:
                    res[f"{kind}-{seed}/{label}"] = _strip(to_json(solver.solve(p, s, write=False, **kw)))
                except Exception as e:  # noqa: BLE001 - the refusal is part of the behaviour compared
                    res[f"{kind}-{seed}/{label}"] = f"{type(e).__name__}: {e}"
            if seed < 1003:
                many = solver.solve_many(3, 2, profile=p, scores=s, speedup=1.8, write=False)
                res[f"{kind}-{seed}/many"] = [_strip(to_json(plan)) for plan in many]
                front = solver.sweep("1.1:3.0:0.1", profile=p, scores=s, write=False)
                res[f"{kind}-{seed}/sweep"] = _strip(front if isinstance(front, dict) else to_json(front))
    out.write_text(json.dumps(res, indent=1, sort_keys=True))
    print(f"{len(res)} results in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("dump").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.cmd == "dump":
        return dump(args.out)
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    diffs = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    print("\n".join(diffs) if diffs else f"same plans: {len(a)} results in {args.a} and {args.b}")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
