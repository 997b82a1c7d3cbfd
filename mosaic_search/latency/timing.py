"""The timing harness shared by `profile` and `bench`: warm-up, repeated samples, median and p20/p80.

On CUDA: CUDA events, the L2 cache flushed before each prefill sample, and decode steps replayed from a
CUDA graph (several replays per sample) so launch overhead does not dominate. On CPU: a monotonic clock.
A timer is any callable `timer(fn, kind) -> list[float]` of per-call milliseconds, so tests inject their own.
A timer with a `pairs(reference, fn, kind) -> [(reference ms, fn ms)]` method is paired: callers time
everything against a reference run a moment before each sample (see `CpuTimer.pairs`, `scaled`).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from ..errors import check, integer
from ..hf.device import check_dtype

# One-minute load average, in cores, above which a CPU measurement ran beside other jobs. Our own threads count
# about one per core; more means threads took turns, which neither the spread nor the paired reference shows:
# both models slow down, by different amounts (observed with another job on 2 cores: every time ~10x, ratios
# between candidates off by up to 4x, the spread still ordinary).
BUSY_LOAD_PER_CORE = 1.5


def busy_machine(device: str) -> str | None:
    """One line saying the CPU was shared during a measurement that just ended, or None (on CUDA, or quiet)."""
    if not device.startswith("cpu") or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= BUSY_LOAD_PER_CORE * cores:
        return None
    return (f"warning: the machine was busy (load average {load:.1f} on {cores} cores): timings and the ratios "
            "between them are not to be trusted; re-run with nothing else running (or pin threads, e.g. taskset "
            "with OMP_NUM_THREADS)")


@dataclass(frozen=True)
class Stats:
    """Median and spread of a list of samples, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float

    @classmethod
    def of(cls, samples: list[float]) -> "Stats":
        """Summarise samples (nearest-rank percentiles)."""
        s = sorted(samples)

        def pct(p):
            return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]

        return cls(statistics.median(s), pct(0.2), pct(0.8))


class CpuTimer:
    """Wall-clock timing with time.perf_counter, each sample starting from cold L1/L2 caches.

    A layer timed alone would otherwise keep its weights in L2, which inside a whole model the other
    layers evict; the last-level cache is left warm, as it is for a small model run layer after layer.
    """

    def __init__(self, warmup: int = 1, repeats: int = 9, flush_bytes: int = 4 << 20, budget_ms: float = 500.0,
                 warm_ms: float = 50.0):
        import torch

        self.warmup, self.repeats, self.budget_ms, self.warm_ms = warmup, repeats, budget_ms, warm_ms
        self.graphs = False
        self._flush = torch.empty(flush_bytes // 4, dtype=torch.float32)

    def __call__(self, fn, kind: str = "prefill") -> list[float]:
        return [ms for (ms,) in self._run([fn])]

    def pairs(self, reference, fn, kind: str = "prefill") -> list[tuple[float, float]]:
        """(reference ms, fn ms) per sample, the two run back to back.

        A shared VM's speed drifts by 10-20% over seconds (other tenants; Python-bound steps the most), so
        two measurements taken seconds apart disagree by that much; the ratio of two runs a millisecond
        apart does not. Callers express fn at the reference's typical speed (`scaled`)."""
        return self._run([reference, fn])

    def _run(self, fns) -> list[tuple[float, ...]]:
        import torch

        with torch.inference_mode():
            first = sum(self._sample(fn) for fn in fns)
            # at least warm_ms of warm-up: a millisecond step's first calls in a fresh process (allocator
            # growth, first-touch pages, lazy init) run well over its steady state
            for _ in range(calls_to_fill(first, self.warmup - 1, self.warm_ms, cap=1000)):
                for fn in fns:
                    fn()
            return [tuple(self._sample(fn) for fn in fns)
                    for _ in range(sample_count(first, self.repeats, self.budget_ms))]

    def _sample(self, fn) -> float:
        self._flush.fill_(1.0)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


class CudaTimer:
    """CUDA-event timing; prefill samples start from a cold L2, decode samples replay a CUDA graph."""

    def __init__(self, warmup: int = 3, repeats: int = 15, replays: int = 20, graphs: bool = True,
                 budget_ms: float = 4000.0, spin_up_ms: float = 200.0, min_sample_ms: float = 1.0):
        import torch

        self.warmup, self.repeats, self.replays, self.graphs = warmup, repeats, replays, graphs
        self.budget_ms, self.spin_up_ms, self.min_sample_ms = budget_ms, spin_up_ms, min_sample_ms
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        self._flush = torch.empty(2 * l2 // 4 + 1, dtype=torch.float32, device="cuda")

    def _graph(self, fn):
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay

    def __call__(self, fn, kind: str = "prefill") -> list[float]:
        import torch

        with torch.inference_mode():
            if kind == "decode":
                step = fn
                if self.graphs:
                    try:
                        step = self._graph(fn)
                    except Exception:  # a kernel that cannot be captured: time it eagerly instead
                        torch.cuda.synchronize()
                        step = fn
                return self._time(step, self.replays, flush=False)
            return self._time(fn, 1, flush=True)

    def _time(self, fn, inner: int, flush: bool) -> list[float]:
        import torch

        first = _elapsed_ms(fn, torch)
        # keep the GPU busy for spin_up_ms first: after seconds of CPU-only work (compiling a step) its clocks
        # are down, and a sub-millisecond step's samples would all fall inside the ramp back up
        for _ in range(calls_to_fill(first, self.warmup - 1, self.spin_up_ms, cap=20_000)):
            fn()
        if inner > 1:  # replays: each sample spans min_sample_ms, so a step of microseconds (a dropped layer)
            inner = calls_to_fill(first, inner, self.min_sample_ms, cap=1000)  # is not timed at event resolution
        out = []
        for _ in range(sample_count(first * inner, self.repeats, self.budget_ms)):
            if flush:
                self._flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / inner)
        return out


class Pool:
    """Samples pooled per key over every pass, and the keys that could not be timed (out of memory).

    With a paired timer, each sample comes with one of `reference`, the closure the caller sets for the
    current workload (mosaic's callers: the whole teacher's step), taken just before it; `stats` expresses
    every sample as its ratio to that reference times the reference's median over the whole run."""

    def __init__(self, timer):
        self.timer, self.paired, self.reference = timer, is_paired(timer), None
        self.raw, self.failed = {}, {}  # key -> [(reference ms or None, ms per call)]; key -> (status, reason)
        self.refs = {}  # workload -> reference samples

    def measure(self, key, make, w, per: int = 1):
        """Time the closure `make()` returns for workload `w` (a `profile.Workload`), as `per` calls of what
        the key counts; out-of-memory is recorded in `failed`, anything else raised."""
        import torch

        if key in self.failed:
            return
        try:
            fn = make()
            got = self.timer.pairs(self.reference, fn, w.phase) if self.paired else \
                [(None, ms) for ms in self.timer(fn, w.phase)]
        except Exception as e:  # noqa: BLE001 - only OOM is tolerated, everything else re-raised
            if not is_oom(e):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.failed[key] = ("oom", " ".join(str(e).split())[:200])
            return
        self.raw.setdefault(key, []).extend((ref, ms / per) for ref, ms in got)
        if self.paired:
            self.refs.setdefault(w.name, []).extend(ref for ref, _ in got)

    def stats(self, reference_ms: dict | None = None) -> dict:
        """{key: Stats} in milliseconds (every key ends with its workload's name); with pairing also
        {("baseline", workload): the reference's Stats}, and samples are scaled to the reference's median,
        or to `reference_ms[workload]` when given (an earlier profile's baseline)."""
        if not self.paired:
            return {key: Stats.of([ms for _, ms in v]) for key, v in self.raw.items()}
        out = {("baseline", w): Stats.of(v) for w, v in self.refs.items()}
        scale = reference_ms or {w: st.median_ms for (_, w), st in out.items()}
        for key, v in self.raw.items():
            if scale.get(key[-1]) is not None:  # None: the teacher itself did not fit at that workload
                out[key] = Stats.of(scaled(v, scale[key[-1]]))
        return out


def calls_to_fill(first_ms: float, at_least: int, fill_ms: float, cap: int) -> int:
    """How many calls of about `first_ms` fill `fill_ms` (at most `cap`), and never fewer than `at_least`."""
    return max(at_least, min(int(fill_ms / max(first_ms, 1e-4)), cap))


def sample_count(first_ms: float, repeats: int, budget_ms: float) -> int:
    """How many samples to take: `repeats`, fewer (at least 3) when one call would blow the time budget."""
    return max(3, min(repeats, int(budget_ms / max(first_ms, 1e-3))))


def _elapsed_ms(fn, torch) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def is_paired(timer) -> bool:
    """Whether a timer times against a reference (has `pairs`)."""
    return callable(getattr(timer, "pairs", None))


def scaled(pairs, reference_ms: float) -> list[float]:
    """Paired samples as milliseconds at the reference's typical speed: each fn/reference ratio times
    `reference_ms` (typically the median of all the reference's samples)."""
    return [ms / ref * reference_ms for ref, ms in pairs]


def default_timer(device: str):
    """The timer for a device: CUDA events on cuda, perf_counter on cpu."""
    return CudaTimer() if device.startswith("cuda") else CpuTimer()


def default_rounds(device: str) -> int:
    """Passes over every measurement, samples pooled: two on CPU, so each entry is taken at two moments
    tens of seconds apart (the paired timer already cancels the machine's drift within a measurement)."""
    return 1 if device.startswith("cuda") else 2


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is an out-of-memory failure (CUDA or host)."""
    import torch

    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def check_settings(rounds, dtype, image_tokens, seed) -> None:
    """Refuse, naming the parameter, what `profile` and `bench` cannot time with: rounds below 1 (no sample: latencies
    None), an unknown dtype (`check_dtype`), a negative image size, a seed that is not an integer."""
    check(rounds is None or (integer(rounds) and rounds >= 1), "rounds", f"must be an integer >= 1, got {rounds!r}")
    check_dtype(dtype)
    check(integer(image_tokens) and image_tokens >= 0, "image_tokens",
          f"must be an integer >= 0, got {image_tokens!r}")
    check(integer(seed), "seed", f"must be an integer, got {seed!r}")
