"""Stage 1: what each candidate mixer costs, as one whole decoder layer, on the device the model will use.

Every decoder layer of a homogeneous teacher has the same dimensions, so each (candidate, workload) is
timed once, in a randomly initialised model with the real dimensions, and that measurement is recorded for
every layer: the candidate goes into the first `layers_per_sample` layers (all of them on CPU, one on CUDA),
a sample runs them in sequence, and the entry is the sample over that count. Also timed: the fixed part
(embeddings, final norm, LM head on the last token) and the whole-model baseline, both through the same
`TextStack` the layers run in. The baseline is the teacher's math with mosaic's mixer of the teacher's own
operator in every layer (gqa, or swa where the teacher slides: numerically the teacher's attention; see tests),
so baseline, layers and validation share one harness (`harness.Bench`). On CPU the timer is paired: every sample
runs right after a step of an untouched copy of the teacher, and is recorded at that reference's typical speed
(`timing.Pool`).
"""

from __future__ import annotations

import logging
import re
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from ..artifacts.files import PROFILES_DIR, check_not_input, check_output, output_path
from ..artifacts.header import Header, save
from ..artifacts.profile import LatencyProfile, ProfileEntry, Workload, parse_workload
from ..errors import UsageError, check, flags, integer, invalid, listed, path_arg
from ..hf import surgery
from ..hf.device import DTYPE_BYTES, check_device, default_dtype, environment
from ..hf.models import resolve, slug
from ..operators import Candidate, pattern_string
from . import timing
from .harness import Bench, load_bench
from .memory import check_fits

logger = logging.getLogger(__name__)

CPU_WORKLOADS = ("prefill:256", "prefill:1k", "decode:256", "decode:2k", "decode:512:b4")
CUDA_WORKLOADS = ("prefill:4k", "prefill:32k", "prefill:96k", "prefill:4k:b8",
                  "decode:1k", "decode:16k", "decode:96k", "decode:1k:b8", "decode:16k:b8")
# The typical (median) entry's p80/p20 above which `profile` warns that the machine was busy: the committed CPU
# profiles (benchmarks/results/cpu, a quiet 2-core VM) measure 1.09-1.14 and the H100 one 1.01, while a CPU profile
# taken with other jobs on the same cores measured 1.5; candidates whose latencies differ by less than the spread
# cannot be ranked.
NOISY_SPREAD = 1.3
# entries cheaper than this share of one teacher layer are left out of the spread: the ratio of two near-zero
# times (a dropped layer's, 26x on that busy machine) says nothing about the machine
SPREAD_MIN_SHARE = 0.05


def profile(model: str = "tiny", device: str = "cpu", ops=None, workloads=None, out=None, timer=None,
            dtype: str | None = None, seed: int = 0, progress=None, compile_decode: bool | None = None,
            rounds: int | None = None, image_tokens: int = 0, layers_per_sample: int | None = None,
            validate: bool = False) -> LatencyProfile:
    """Time every candidate as a whole decoder layer for every workload and write a latency profile.

    `ops`: candidates (a list or 'gqa,swa:window=1024,...'); `workloads`: Workloads or specs such as
    'decode:96k:b8'; `timer`: a callable `timer(fn, phase) -> [ms]` (default: CUDA events / perf_counter);
    `progress(done, total, label)`: called after each measurement; `compile_decode`: see `load_bench`;
    `rounds`: passes over everything, samples pooled per entry (default: `timing.default_rounds`); `image_tokens`:
    for a VLM, prefill (fixed part and whole model) also encodes one image of that many tokens per sequence;
    `layers_per_sample`: the candidate goes into that many consecutive layers, run in sequence by each sample
    (default: `default_layers_per_sample`); `validate`: also time the whole models of `default_assignments`
    in every pass and record predicted vs measured in the profile's `validation`.
    Bad input (device, workloads, ops, depth, an existing output of another kind) raises UsageError before any
    timing; an operator out of memory is recorded `status: oom` and profiling goes on.
    """
    path_arg("model", model, what="a model id or directory")
    timing.check_settings(rounds, dtype, image_tokens, seed)
    flags(validate=validate, compile_decode=compile_decode)
    device = check_device(device)
    machine = environment(device)
    path = check_output(profile_path(model, machine, out), kind=LatencyProfile.kind)  # before minutes of measuring
    check_not_input([path], {"model": model})
    wls = _workloads(workloads, device)
    resolved = resolve(model, shipped_ok=True)  # once: every step below reads this record
    cands = surgery.candidates(ops, resolved.config)  # bad ops fail here, before any work
    depth = _depth(device, resolved.dims.num_layers, layers_per_sample)
    timer = timer or timing.default_timer(device)
    # before any allocation: the timed model, a paired timer's reference and the largest workload must fit
    check_fits(resolved.dims, wls, DTYPE_BYTES[dtype or default_dtype(device)], 2 if timing.is_paired(timer) else 1,
               device)
    _, bench = load_bench(resolved, device, dtype, seed, compile_decode, image_tokens)
    dims = resolved.dims
    rounds = rounds or timing.default_rounds(device)
    # a paired timer times every sample right after a whole step of this untouched teacher (see CpuTimer.pairs)
    reference = load_bench(resolved, device, dtype, seed, compile_decode, image_tokens)[1] \
        if timing.is_paired(timer) else None
    pool = timing.Pool(timer)
    pool.failed.update(_unsupported(cands, wls, device))
    checks = default_assignments(sorted(c for c in cands if (c, wls[0].name) not in pool.failed),
                                 dims.num_layers, bench.teacher) if validate else {}
    schedule = _Schedule(wls, cands, checks, depth, rounds, _same_as_gqa(cands, wls))
    _measure(schedule, bench, reference, pool, progress)

    stats = pool.stats()
    median = lambda key: stats[key].median_ms if key in stats else None  # noqa: E731
    baseline = {w.name: median(("baseline", w.name)) for w in wls}
    fixed = {w.name: median(("fixed", w.name)) for w in wls}
    entries = _entries(schedule, stats, pool.failed, dims, bench.stack.embed.weight.element_size(), bench.teacher)
    header = Header.new(resolved.ref, env={
        **machine, "timer": type(timer).__name__, "cuda_graphs": bool(getattr(timer, "graphs", False)),
        "compiled_decode": bench.compile_decode, "compile_fallbacks": bench.fallbacks, "rounds": rounds,
        "layers_per_sample": depth, "paired": reference is not None, "image_tokens": image_tokens})
    weights, fixed_weights = weight_bytes(bench, [c for c in cands if (c, wls[0].name) not in pool.failed])
    result = LatencyProfile(header=header, workloads=tuple(wls), baseline_ms=baseline, fixed_ms=fixed,
                            entries=tuple(entries), teacher=tuple(bench.teacher), weight_bytes=weights,
                            fixed_weight_bytes=fixed_weights)
    measured = {(name, w.name): median(("whole", name, w.name)) for name in checks for w in wls}
    result = replace(result, validation=tuple(additivity(result, checks, measured)))
    save(result, path)
    _warn_if_noisy(result, device)
    return result


@dataclass(frozen=True)
class _Schedule:
    """What every pass of a profile measures, per workload: the baseline (unless paired), the fixed part, each
    candidate in the first `depth` layers (but those in `same_as_gqa`), and the whole models of `checks`."""

    workloads: list[Workload]
    candidates: list[Candidate]
    checks: dict  # {assignment name: a Candidate per layer}, see `default_assignments`
    depth: int
    rounds: int
    same_as_gqa: set  # (candidate, workload name) recorded with gqa's timing (`covers_context`)

    def total(self, paired: bool) -> int:
        """How many measurements the whole schedule takes (for progress)."""
        per_workload = len(self.candidates) + (1 if paired else 2) + len(self.checks)
        return self.rounds * (len(self.workloads) * per_workload - len(self.same_as_gqa))


def _depth(device: str, num_layers: int, layers_per_sample: int | None) -> int:
    """Layers per sample: as asked, or `default_layers_per_sample`; UsageError outside 1..num_layers."""
    depth = default_layers_per_sample(device, num_layers) if layers_per_sample is None else layers_per_sample
    if not integer(depth) or not 1 <= depth <= num_layers:
        raise invalid("layers_per_sample", f"must be 1..{num_layers} (the model's layers), got {depth}")
    return depth


def _unsupported(cands, wls, device: str) -> dict:
    """{(candidate, workload name): ("unsupported", why)} for the candidates without a fast path on CUDA."""
    failed = {}
    if device.startswith("cuda"):
        for c in cands:
            ok, why = c.spec.fast_path()
            failed.update({} if ok else {(c, w.name): ("unsupported", why) for w in wls})
    return failed


def _same_as_gqa(cands, wls) -> set:
    """A window covering every token a query sees computes exactly what gqa does: it gets gqa's timing, not a second
    measurement of the same work that would differ only by noise (and win or lose a plan on it)."""
    gqa = Candidate.teacher()
    return {(c, w.name) for c in cands for w in wls
            if gqa in cands and covers_context(c, w) and "kv_heads" not in c.kwargs}


def _measure(todo: _Schedule, bench: Bench, reference: Bench | None, pool, progress) -> None:
    """Run every pass of `todo` into `pool`, leaving the teacher installed in `bench`. With a `reference` (paired
    timer), its whole step is each workload's reference, and doubles as the whole-teacher baseline."""
    total, done = todo.total(reference is not None), 0

    def measure(key, make, w, label, per: int = 1):
        nonlocal done
        pool.measure(key, make, w, per)
        done += 1
        if progress:
            progress(done, total, label + (f" (round {r + 1}/{todo.rounds})" if todo.rounds > 1 else ""))

    for r in range(todo.rounds):
        # everything of one workload back to back, so that the validation's whole models see the machine
        # the layers they are predicted from saw
        for w in todo.workloads:
            if reference:
                pool.reference = reference.model_fn(w)
            else:
                bench.assign(bench.teacher)
                measure(("baseline", w.name), lambda: bench.model_fn(w), w, f"{w.name} baseline")
            measure(("fixed", w.name), lambda: bench.fixed_fn(w), w, f"{w.name} fixed")
            for c in todo.candidates:
                if (c, w.name) in todo.same_as_gqa:
                    continue
                if (c, w.name) not in pool.failed:
                    bench.assign([c] * todo.depth)
                measure((c, w.name), lambda: bench.layers_fn(todo.depth, w), w, f"{c} {w.name}", per=todo.depth)
            for name, layers in todo.checks.items():
                bench.assign(layers)
                measure(("whole", name, w.name), lambda: bench.model_fn(w), w, f"{name} {w.name}")
    bench.assign(bench.teacher)


def _entries(schedule: _Schedule, stats: dict, failed: dict, dims, dtype_bytes: int, teacher) -> list[ProfileEntry]:
    """One entry per (candidate, workload) for every layer: its timing (gqa's where `same_as_gqa`), status and
    cache bytes (an MLP candidate's layer keeps the teacher's mixer `teacher[layer]`, and its cache)."""
    gqa = Candidate.teacher()
    entries = []
    for c in schedule.candidates:
        for w in schedule.workloads:
            key = (gqa, w.name) if (c, w.name) in schedule.same_as_gqa else (c, w.name)
            st = stats.get(key)
            status, reason = failed.get(key, ("ok", ""))
            for layer in range(dims.num_layers):
                mixer = c if c.spec.axis == "mixer" else teacher[layer]
                cache_bytes = mixer.spec.cache_bytes(dims, w.seq_len, dtype_bytes, **mixer.kwargs)
                entries.append(ProfileEntry(layer=layer, candidate=c, workload=w.name, latency_ms=st and st.median_ms,
                                            p20_ms=st and st.p20_ms, p80_ms=st and st.p80_ms, status=status,
                                            cache_bytes=cache_bytes, reason=reason))
    return entries


def weight_bytes(bench: Bench, candidates) -> tuple[tuple, int]:
    """((candidate, bytes of layer 0's weights with it installed), ...) and the bytes of every other weight of the
    model (embeddings and a tied head once, norms, a vision tower), from the modules the profile timed."""
    def nbytes(params) -> int:
        return sum(p.numel() * p.element_size() for p in {id(p): p for p in params}.values())

    out = []
    for c in candidates:
        bench.assign([c] + bench.teacher[1:])
        out.append((c, nbytes(bench.stack.layers[0].parameters())))
    bench.assign(bench.teacher)
    inside = {id(p) for layer in bench.stack.layers for p in layer.parameters()}
    kept = getattr(bench.model, surgery.ORIGINALS, None)
    inside |= {id(p) for p in kept.parameters()} if kept is not None else set()
    return tuple(out), nbytes(p for p in bench.model.parameters() if id(p) not in inside)


def count_weight_bytes(model="tiny", ops=None, dtype: str = "bfloat16") -> tuple[tuple, int]:
    """`weight_bytes` of `model` (an id, a directory, a shipped config or a `Resolved` record) for the candidates
    `ops` (default: those `profile` times) at `dtype`, counted on the meta device: the profiler's own model and swaps,
    shapes without values, so a real-size model costs no memory and nothing is timed. UsageError for an unknown dtype
    or op."""
    import torch

    resolved = resolve(model, shipped_ok=True)
    cands = surgery.candidates(ops, resolved.config)
    with torch.device("meta"):  # every module the swaps build lands there too, not only the teacher's
        _, bench = load_bench(resolved, "meta", dtype)
        return weight_bytes(bench, cands)


def _warn_if_noisy(result: LatencyProfile, device: str) -> None:
    """Say on stderr when the machine was shared, or the timings too spread to rank close candidates."""
    if busy := timing.busy_machine(device):
        logger.warning(busy)
    noise = spread(result)
    if noise and noise["median"] > NOISY_SPREAD:
        logger.warning(f"warning: noisy timings: the typical entry's p80/p20 is {noise['median']:.2f}x (above "
                       f"{NOISY_SPREAD}x), so candidates that close cannot be told apart; re-run on a quiet machine "
                       "(no other jobs; on CPU pin the threads, e.g. taskset -c 0-3 with OMP_NUM_THREADS=4)")


def default_layers_per_sample(device: str, num_layers: int) -> int:
    """How many consecutive layers hold the candidate and run in each sample (the entry is the sample over
    that many): every layer on CPU, where a layer run alone keeps its weights and state in caches that the
    other layers of a whole model share (on `tiny`, one gqa layer run 8 times is 14-18% faster per call
    than 8 distinct gqa layers in sequence, which add up to the whole decode step within 1%); one on CUDA,
    where a step is bound by HBM reads and a layer alone added up to the whole model within 1.4%."""
    return 1 if device.startswith("cuda") else num_layers


def covers_context(c: Candidate, w: Workload) -> bool:
    """Whether `c` is a window at least as long as what one query attends to at `w` (a prefill's tokens, or a
    decode step's context plus the new token): sliding-window attention that is exactly full attention."""
    return c.window is not None and c.sees_all(w.seq_len + (w.phase == "decode"))


def spread(prof: LatencyProfile) -> dict | None:
    """How noisy a profile's timings are: over its ok entries (each candidate and workload once) that cost at
    least `SPREAD_MIN_SHARE` of a teacher layer, `median` and `max` of p80_ms / p20_ms (1.0: no spread) and the
    `worst` entry as 'candidate workload'; None when no entry has both percentiles."""
    layers = prof.header.model.num_hidden_layers
    teacher_layer = {w: (prof.baseline_ms[w] - prof.fixed_ms[w]) / layers for w in prof.baseline_ms
                     if prof.baseline_ms[w] is not None and prof.fixed_ms.get(w) is not None}
    ratios = {}
    for e in prof.entries:
        if e.status != "ok" or not e.p20_ms or e.p80_ms is None:
            continue
        if e.latency_ms < SPREAD_MIN_SHARE * teacher_layer.get(e.workload, 0.0):
            continue
        ratios[f"{e.candidate} {e.workload}"] = e.p80_ms / e.p20_ms
    if not ratios:
        return None
    worst = max(ratios, key=ratios.get)
    return {"median": statistics.median(ratios.values()), "max": ratios[worst], "worst": worst,
            "entries": len(ratios)}


def additivity(prof: LatencyProfile, assignments: dict, measured: dict) -> list[dict]:
    """Rows of predicted (the profile's fixed + sum of layers, `LatencyProfile.predicted_ms`) vs measured
    whole-model latency, one per (assignment, workload) with every part timed. `measured`: {(assignment name,
    workload): ms}."""
    rows = []
    for name, layers in assignments.items():
        for w in prof.workloads:
            pred, got = prof.predicted_ms(w.name, layers), measured.get((name, w.name))
            if pred is None or got is None:
                continue
            rows.append({"assignment": name, "pattern": pattern_string(layers), "workload": w.name,
                         "predicted_ms": pred, "measured_ms": got, "error_pct": 100 * (pred - got) / got})
    return rows


def profile_path(model: str, env: dict, out=None) -> Path:
    """Where a profile goes: `out`, or profiles/<model>--<device>.json."""
    return output_path(out, Path(PROFILES_DIR) / f"{slug(model)}--{_device_slug(env)}.json")


def validate(profile_obj: LatencyProfile, model: str = "tiny", device: str = "cpu", assignments=None,
             timer=None, dtype: str | None = None, seed: int = 0) -> list[dict]:
    """Time whole models (the teacher and mixed assignments) now and compare with an existing profile's
    fixed + sum of layers (rows as in `additivity`).

    Decode steps are compiled, and images encoded, exactly as in the profile, so both sides share one harness.
    A paired timer times each whole model against a teacher run just before it and puts the ratio on the
    profile's scale (its `baseline_ms`); otherwise the two sides are timed apart, and a machine whose speed
    drifts puts its drift into the error. On a GPU this lets a long profile and its check run as separate jobs;
    `profile(validate=True)` times both in the same passes."""
    device = check_device(device)
    env = profile_obj.header.env
    resolved = resolve(model, shipped_ok=True)
    _, bench = load_bench(resolved, device, dtype, seed, env.get("compiled_decode", False),
                               env.get("image_tokens", 0))
    n = resolved.dims.num_layers
    table = layer_table(profile_obj.entries)
    assignments = assignments or default_assignments(sorted({c for _, c, _ in table}), n, bench.teacher)
    timer = timer or timing.default_timer(device)
    reference = load_bench(resolved, device, dtype, seed, env.get("compiled_decode", False),
                           env.get("image_tokens", 0))[1] if timing.is_paired(timer) else None
    pool = timing.Pool(timer)
    for _ in range(env.get("rounds") or timing.default_rounds(device)):  # as the profile was taken
        for w in profile_obj.workloads:
            if reference:
                pool.reference = reference.model_fn(w)
            for name, layers in assignments.items():
                bench.assign(layers)
                pool.measure(("whole", name, w.name), lambda: bench.model_fn(w), w)
    stats = pool.stats(reference_ms=profile_obj.baseline_ms if reference else None)
    measured = {key[1:]: st.median_ms for key, st in stats.items() if key[0] == "whole"}  # (name, workload)
    return additivity(profile_obj, assignments, measured)


def layer_table(entries) -> dict:
    """{(layer, candidate, workload): latency_ms} of the ok profile entries."""
    return {(e.layer, e.candidate, e.workload): e.latency_ms for e in entries if e.status == "ok"}


def default_assignments(candidates, num_layers: int, teacher=None) -> dict:
    """The teacher (`teacher`: its own operator per layer, default gqa everywhere), two mixes of the given mixer
    candidates (interleaved, and reversed), and with MLP candidates a third whose mixers take them ("mix C": both
    axes composed, as plans do)."""
    gqa = Candidate.teacher()
    teacher = list(teacher or [gqa] * num_layers)
    others = [c for c in candidates if c != gqa and c.spec.axis == "mixer"] or [gqa]
    mlps = [c for c in candidates if c.spec.axis == "mlp"]
    mix = [gqa if i % 3 == 0 else others[i % len(others)] for i in range(num_layers)]
    name = "teacher (all gqa)" if teacher == [gqa] * num_layers else "teacher"
    out = {name: teacher, "mix A": mix,
           "mix B": [others[(i * 7) % len(others)] if i % 4 else gqa for i in range(num_layers)]}
    if mlps:
        out["mix C"] = [c.with_mlp(mlps[i % len(mlps)]) if c.op != "drop" else c for i, c in enumerate(mix)]
    return out


def _workloads(workloads, device: str) -> list[Workload]:
    """Workload specs (or Workloads) parsed, the device's defaults when none; UsageError on a duplicate."""
    specs = listed("workloads", workloads) or (CUDA_WORKLOADS if device.startswith("cuda") else CPU_WORKLOADS)
    for w in specs:
        check(isinstance(w, (Workload, str)), "workloads", f"items must be specs such as decode:1k, got {w!r}")
    wls = [w if isinstance(w, Workload) else parse_workload(w) for w in specs]
    names = [w.name for w in wls]
    if len(set(names)) != len(names):
        raise UsageError(f"duplicate workloads: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return wls


def _device_slug(env: dict) -> str:
    name = str(env.get("device_name") or env.get("device"))
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "device"
