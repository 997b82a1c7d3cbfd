"""Do two versions of mosaic write the same artifacts for the same inputs? (A refactor's check.)

    python benchmarks/same_outputs.py record DIR [--profile PROFILE]   # run the stages with this checkout's code
    python benchmarks/same_outputs.py compare DIR_A DIR_B             # exit 1 and list every difference

`record` runs the demo's chain through the command line (`python -m mosaic_search`, so it works on any version):
profile (the demo's workloads), score, solve at the demo's two TPOT targets and the sweep, build, a short distill,
eval. With `--profile` it takes that profile instead of timing its own, so that two versions' plans are compared on
the same measured latencies (compare two runs' own profiles, without it, for the profile's structure). `compare` strips what differs between any two runs (dates, versions, argv,
timings, durations) and compares the rest: every JSON artifact field by field, every weight tensor bit by bit.
To run an older version: `git worktree add /tmp/old REV` and `PYTHONPATH=/tmp/old python benchmarks/...`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

WORKLOADS = ("prefill:512", "decode:1k", "decode:256:b4")
TARGETS = (1.25, 1.5)
DISTILL_STEPS = 4
CHECKOUT = "checkout.txt"  # where the code that ran lives: records name files shipped in it by absolute path
# keys whose values differ between two runs of the same code: when and by what it ran, and measured times
# (and the sha256 of files that hold such values)
VOLATILE = {"created_at", "created_by", "command", "env", "inputs", "seconds", "latency_ms", "p20_ms", "p80_ms",
            "baseline_ms", "fixed_ms", "measured_ms", "error_pct", "plan_sha256", "model_sha256", "scores_sha256"}


def _mosaic(*args: str) -> None:
    run = subprocess.run([sys.executable, "-m", "mosaic_search", *args], capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"mosaic {' '.join(args)} failed ({run.returncode}): {run.stderr.strip()[-400:]}")


def record(d: Path, profile: str | None) -> None:
    """Run the chain into the empty folder `d`."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    where = subprocess.run([sys.executable, "-c", "import mosaic_search, pathlib; "
                            "print(pathlib.Path(mosaic_search.__file__).parents[1])"], capture_output=True, text=True)
    (d / CHECKOUT).write_text(where.stdout.strip())
    if profile:  # timing is the slow, load-sensitive stage: reuse the other run's and compare the rest
        shutil.copyfile(profile, d / "profile.json")
    else:
        _mosaic("profile", "--device", "cpu", *[a for w in WORKLOADS for a in ("--workload", w)],
                "--out", str(d / "profile.json"), "--seed", "0")
    _mosaic("score", "--out", str(d / "sensitivity.json"), "--seed", "0")
    solve_on = str(d / "profile.json")
    for t in TARGETS:
        _mosaic("solve", "--tpot-speedup", str(t), "--profile", solve_on, "--scores", str(d / "sensitivity.json"),
                "--workload", "decode-b1-c1k", "--workload", "decode-b4-c256", "--out", str(d / f"plan-{t}.json"))
        _mosaic("build", str(d / f"plan-{t}.json"), "--out", str(d / f"model-{t}"), "--seed", "0")
        _mosaic("distill", str(d / f"model-{t}"), "--steps", str(DISTILL_STEPS), "--batch-size", "2",
                "--seq-len", "128", "--out", str(d / f"model-{t}-distilled"), "--seed", "0")
    _mosaic("solve", "--sweep", "1.05:2.0:0.05", "--profile", solve_on, "--scores", str(d / "sensitivity.json"),
            "--workload", "decode-b1-c1k", "--workload", "decode-b4-c256", "--out", str(d / "pareto.json"))


def _strip(value, run: Path):
    """`value` without its volatile keys, the run's folder and its checkout spelled `<run>`, `<checkout>`."""
    if isinstance(value, dict):
        return {k: _strip(v, run) for k, v in value.items() if k not in VOLATILE and not k.endswith("_s")}
    if isinstance(value, list):
        return [_strip(v, run) for v in value]
    if isinstance(value, str):
        return value.replace(str(run), "<run>").replace((run / CHECKOUT).read_text().strip(), "<checkout>")
    return value


def _digest(path: Path, run: Path):
    """What a file must match: stripped JSON, or per-tensor sha256 of a safetensors file, or its bytes' sha256."""
    if path.suffix == ".json":
        return _strip(json.loads(path.read_text()), run)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in load_file(path).items()}
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _diff(a, b, where="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in {'A' if k in a else 'B'}" for k in sorted(set(a) ^ set(b))]
        return out + [d for k in sorted(set(a) & set(b)) for d in _diff(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {str(a)[:80]} != {str(b)[:80]}"]


def compare(a: Path, b: Path) -> list[str]:
    """Every difference between the runs in `a` and `b` (empty when they match)."""
    skip = {".py", ".png", ".csv", ".txt"}  # remote code moves with the package; pictures and tables restate the JSON
    files = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.suffix not in skip}
    files |= {p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.suffix not in skip}
    out = []
    for rel in sorted(files):
        if not (a / rel).exists() or not (b / rel).exists():
            out.append(f"{rel}: only in {'A' if (a / rel).exists() else 'B'}")
            continue
        out += [f"{rel}{d}" for d in _diff(_digest(a / rel, a), _digest(b / rel, b))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("dir", type=Path)
    r.add_argument("--profile")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.cmd == "record":
        record(args.dir, args.profile)
        return
    diffs = compare(args.a, args.b)
    print("\n".join(diffs) if diffs else f"same outputs: {args.a} and {args.b}")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
