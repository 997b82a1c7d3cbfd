"""Stage 1: what each candidate mixer costs, as one whole decoder layer, on the device the model will use.

Every decoder layer of a homogeneous teacher has the same dimensions, so each (candidate, workload) is
timed once, in a randomly initialised model with the real dimensions, and that measurement is recorded for
every layer: the candidate goes into the first `layers_per_sample` layers (all of them on CPU, one on CUDA),
a sample runs them in sequence, and the entry is the sample over that count. Also timed: the fixed part
(embeddings, final norm, LM head on the last token) and the whole-model baseline, both through the same
`TextStack` the layers run in. The baseline is the teacher's math with mosaic's mixer of the teacher's own
operator in every layer (gqa, or swa where the teacher slides: numerically the teacher's attention; see tests),
so baseline, layers and validation share one harness. On CPU the timer is paired: every sample runs right after a step of an untouched copy of the
teacher, and is recorded at that reference's typical speed (`timing.Pool`).
"""

from __future__ import annotations

import platform
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .files import check_output, output_path
from .operators import Candidate, parse_candidates
from .schema import PROFILE_KIND, Header, LatencyProfile, ProfileEntry, Workload, save

KIB = 1024
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
_SPEC = re.compile(r"^(prefill|decode):(\d+)(k?)(?::b(\d+))?$")


def parse_workload(text: str) -> Workload:
    """Parse 'prefill:32k', 'decode:96k' or 'decode:16k:b8' (phase:tokens[k][:b<batch>])."""
    m = _SPEC.match(text.strip().lower())
    if not m:
        raise UsageError(f'cannot parse workload "{text}": expected phase:tokens[:bN], e.g. prefill:32k or '
                         "decode:16k:b8")
    phase, n, k, b = m.groups()
    seq = int(n) * (KIB if k else 1)
    batch = int(b or 1)
    if seq <= 0 or batch <= 0:
        raise UsageError(f'workload "{text}": tokens and batch must be positive')
    return Workload(name=workload_name(phase, batch, seq), phase=phase, batch_size=batch, seq_len=seq)


def workload_from_name(name: str) -> Workload:
    """Invert `workload_name`: 'decode-b1-c96k' -> Workload(decode, batch 1, 98304)."""
    m = re.match(r"^(prefill|decode)-b(\d+)-[pc](\d+)(k?)$", name)
    if not m:
        raise UsageError(f'"{name}" is not a workload name like decode-b1-c96k or prefill-b8-p4k')
    phase, b, n, k = m.groups()
    return parse_workload(f"{phase}:{n}{k}:b{b}")


def workload_name(phase: str, batch: int, seq: int) -> str:
    """Canonical workload name, e.g. decode-b1-c96k / prefill-b8-p4k."""
    size = f"{seq // KIB}k" if seq % KIB == 0 else str(seq)
    return f"{phase}-b{batch}-{'p' if phase == 'prefill' else 'c'}{size}"


def environment(device: str) -> dict:
    """The device and library fingerprint recorded in profiles (a profile is only valid for these)."""
    import importlib.metadata as md

    import torch

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    env = {"device": device, "torch": torch.__version__, "transformers": version("transformers"),
           "fla": version("flash-linear-attention") or version("fla-core"), "triton": version("triton")}
    if device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["driver"] = _driver_version()
    else:
        env["device_name"] = platform.processor() or platform.machine()
        env["cpu_threads"] = torch.get_num_threads()
    return env


def _driver_version():
    try:
        import subprocess

        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def check_device(device: str) -> str:
    """Validate the device string against this machine (exit 2 for a device that is not present)."""
    import torch

    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {device} is not available on this machine (no CUDA device); use --device cpu")
        return device
    raise UsageError(f'unknown device "{device}": use cpu or cuda')


def static_cache(layers, layer_types, context: int):
    """The cache a built model's `generate` decodes with (its default static cache, transformers' own slot classes),
    sized for `context` past tokens plus the new one: `StaticLayer` for full attention, `StaticSlidingWindowLayer`
    with the layer's window for SWA, `LinearAttentionLayer` for the rest. Fill it with `fill_static`, and put it back
    at `context` tokens with `rewind` before each timed step, so a step can be replayed many times."""
    from transformers.cache_utils import Cache, LinearAttentionLayer, StaticLayer, StaticSlidingWindowLayer

    slots = []
    for layer, kind in zip(layers, layer_types):
        if kind == "linear_attention":
            slots.append(LinearAttentionLayer())
        elif kind == "sliding_attention":
            slots.append(StaticSlidingWindowLayer(max_cache_len=context + 1, sliding_window=_window(layer)))
        else:
            slots.append(StaticLayer(max_cache_len=context + 1))
    return Cache(layers=slots)


def _window(layer):
    """The SWA window of a decoder layer's mixer, or None."""
    return getattr(getattr(layer, "self_attn", layer), "window", None)


def fill_static(cache) -> None:
    """Random contents for the attention slots after their first (allocating) step: values never matter for
    latency, but zeros can run faster than real data."""
    for slot in cache.layers:
        if getattr(slot, "is_initialized", False) and getattr(slot, "keys", None) is not None:
            slot.keys.normal_()
            slot.values.normal_()


def rewind(cache, context: int) -> None:
    """Put every attention slot back at `context` tokens seen, so the next step decodes token `context` again."""
    import torch

    for slot in cache.layers:
        if hasattr(slot, "cumulative_length_int"):  # a sliding slot keeps a host-side count too
            slot.cumulative_length_int = context
        if isinstance(getattr(slot, "cumulative_length", None), torch.Tensor):
            slot.cumulative_length.fill_(min(context, slot.max_cache_len))


@dataclass(eq=False)  # hashed by identity: its bound methods key compiled wrappers
class _Bench:
    """The model under measurement and how to run its parts for one workload.

    With `compile_decode`, decode steps run through `torch.compile`d pieces (each decoder layer, the
    embedding + rotary prologue, the head): a step is otherwise ~25 tiny kernels per layer (norms in fp32,
    rotary, cache write) whose fixed cost, even replayed from a CUDA graph, is several times the weight
    reads at batch 1. Layers are compiled one by one, not the whole stack, so every layer of the same mixer
    shares one compiled graph and a profile needs one compilation per (candidate, shape), not per model.
    Prefill stays eager: it is dominated by large matmuls and attention, and SWA's block loop would unroll.
    """

    model: object
    stack: object
    device: str
    dtype: object
    compile_decode: bool = False
    fallbacks: list = field(default_factory=list)
    image_tokens: int = 0  # a VLM's prefill also encodes one image of this many (merged) tokens per sequence
    layer_types: list = field(default_factory=list)  # the cache slot type of each layer's current mixer
    teacher: list = field(default_factory=list)  # the teacher's own operator per layer, installed by `load_bench`

    def prefill_caches(self):
        """A function making empty dynamic caches for the current mixers, each built by transformers from the cache
        layout a build of them would have (`cache_layout`), as generate does; the config is made once, here."""
        from transformers import DynamicCache

        from . import surgery
        from .operators import cache_layout

        teacher = surgery.architecture(self.model.config).text(self.model.config)
        windows = [_window(layer) for layer in self.stack.layers]
        config = type(teacher).from_dict({**teacher.to_dict(), **cache_layout(self.layer_types, windows)})
        return lambda: DynamicCache(config=config)

    def decode_cache(self, context: int):
        """The static cache a built model decodes with, for one step at `context` past tokens (`static_cache`)."""
        return static_cache(self.stack.layers, self.layer_types, context)

    def inputs(self, w: Workload):
        import torch

        t = w.seq_len if w.phase == "prefill" else 1
        start = 0 if w.phase == "prefill" else w.seq_len
        hidden = torch.randn(w.batch_size, t, self.stack.embed.embedding_dim, device=self.device, dtype=self.dtype)
        ids = torch.randint(0, self.stack.embed.num_embeddings, (w.batch_size, t), device=self.device)
        return hidden, ids, start

    def vision_fn(self, w: Workload):
        """The vision tower on one image of `image_tokens` tokens per sequence (None: nothing to encode).

        Part of TTFT, so it belongs to the fixed part and to the whole model's prefill; the text stack is
        timed on `w.seq_len` tokens either way (the image's tokens are not added to the prompt)."""
        import torch

        if w.phase != "prefill" or not self.image_tokens:
            return None
        inner = getattr(self.model, "model", None)
        if not hasattr(inner, "get_image_features"):
            raise UsageError(f"--image-tokens {self.image_tokens}: the model has no vision tower")
        vc = self.model.config.vision_config
        m = vc.spatial_merge_size
        rows = next(d for d in range(int(self.image_tokens ** 0.5), 0, -1) if self.image_tokens % d == 0)
        grid = torch.tensor([[1, rows * m, self.image_tokens // rows * m]] * w.batch_size, device=self.device)
        patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
        pixels = torch.randn(int(grid.prod(-1).sum()), patch, device=self.device, dtype=self.dtype)
        return lambda: inner.get_image_features(pixels, grid)

    def layers_fn(self, count: int, w: Workload):
        """A closure running decoder layers 0..count-1 once, in sequence, for workload `w`."""
        import torch

        layers = self.stack.layers[:count]
        hidden, _, start = self.inputs(w)
        pe = self.stack.position_embeddings(hidden, start)

        def chain(compiled, cache):
            h = hidden
            for i, layer in enumerate(layers):
                h = self.stack.run_layer(compiled(layer), h, pe, cache, i)
            return h

        if w.phase == "prefill":
            new_cache = self.prefill_caches()
            return lambda: chain(_eager, new_cache())
        cache = self.decode_cache(w.seq_len)
        with torch.no_grad():  # not inference mode: timers may run the step outside it
            chain(_eager, cache)  # allocates the static slots / creates the states
        fill_static(cache)

        def step(compiled):
            rewind(cache, w.seq_len)
            return chain(compiled, cache)

        return self._decode_step(step, f"layers 0-{count - 1} {w.name}")

    def fixed_fn(self, w: Workload):
        """Embeddings, rotary tables, final norm and the LM head on the last token."""
        _, ids, start = self.inputs(w)

        def run(compiled):
            h, _ = compiled(self._prologue)(ids, start)
            return compiled(self.stack.head)(h)

        vision = self.vision_fn(w)
        if vision is not None:
            return lambda: (vision(), run(_eager))
        return (lambda: run(_eager)) if w.phase == "prefill" else self._decode_step(run, f"fixed {w.name}")

    def model_fn(self, w: Workload):
        """The whole text model once: a prefill, or one decode step against a cache at the context."""
        import torch

        _, ids, start = self.inputs(w)
        vision = self.vision_fn(w)
        new_cache = self.prefill_caches()
        if vision is not None:
            return lambda: (vision(), self.stack.forward(ids, new_cache(), start))
        if w.phase == "prefill":
            return lambda: self.stack.forward(ids, new_cache(), start)
        cache = self.decode_cache(w.seq_len)
        with torch.no_grad():
            self.stack.forward(ids, cache, start)
        fill_static(cache)

        def run(compiled):
            rewind(cache, w.seq_len)
            h, pe = compiled(self._prologue)(ids, start)
            for i, layer in enumerate(self.stack.layers):
                h = self.stack.run_layer(compiled(layer), h, pe, cache, i)
            return compiled(self.stack.head)(h)

        return self._decode_step(run, f"model {w.name}")

    def _prologue(self, ids, start: int):
        h = self.stack.embed(ids)
        return h, self.stack.position_embeddings(h, start)

    def _decode_step(self, run, label: str):
        """A no-argument step calling `run(compiled)`, where `compiled(fn)` gives the compiled `fn` with
        `compile_decode` (the same wrapper on every call) and `fn` itself otherwise. If compilation fails the
        step falls back for good to eager, and the failure is recorded in `fallbacks`."""
        if not self.compile_decode:
            return lambda: run(_eager)
        import torch

        # every (layer index, candidate, shape) is one more variant of the same decoder-layer code (the index
        # picks the cache slot); dynamo's FX-graph cache makes the repeats cheap, its default limit of 8 too low
        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, 1024)
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 8192)
        wrappers = {}  # keyed by the module or bound method itself (equal bound methods hash alike)

        def compiled(fn):
            if fn not in wrappers:
                wrappers[fn] = torch.compile(fn, dynamic=True)  # one graph for every context length
            return wrappers[fn]

        state = {"compiled": True}

        def step():
            if state["compiled"]:
                try:
                    return run(compiled)
                except Exception as e:  # noqa: BLE001 - a compiler failure; OOM is the caller's business
                    from .timing import is_oom

                    if is_oom(e):
                        raise
                    self.fallbacks.append(f"{label}: {' '.join(str(e).split())[:160]}")
                    state["compiled"] = False
            return run(_eager)

        return step


def _eager(fn):
    return fn


def load_bench(model: str, device: str, dtype: str | None = None, seed: int = 0, compile_decode: bool | None = None,
               image_tokens: int = 0):
    """The teacher with random weights and mosaic's mixer of the teacher's own operator in every layer
    (`surgery.teacher_ops`: gqa, or swa where the teacher slides), on `device`.

    `compile_decode` (default: on CUDA) runs decode steps through torch.compile (see `_Bench`); a VLM's
    prefill also encodes an image of `image_tokens` tokens (`_Bench.vision_fn`)."""
    import torch

    from . import surgery
    from .modeling.architectures import image_architectures
    from .models import load_config, model_from_config

    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    config = load_config(model, shipped_ok=True)
    if image_tokens < 0:
        raise UsageError(f"--image-tokens must be 0 or more, got {image_tokens}")
    if image_tokens and getattr(config, "vision_config", None) is None:
        raise UsageError(f"--image-tokens {image_tokens}: {model} is a text-only model")
    if image_tokens and not surgery.architecture(config).record.image_inputs:
        raise UsageError(f"--image-tokens {image_tokens}: mosaic encodes images only through the vision towers of "
                         f"{', '.join(image_architectures())} (profile {model} without it: its text layers)")
    with torch.device(device):
        net = model_from_config(config, dtype=dtype, seed=seed)
    teacher = surgery.teacher_ops(config)
    for i, c in enumerate(teacher):
        surgery.swap(net, i, c)
    return config, _Bench(net, surgery.text_stack(net), device, getattr(torch, dtype),
                          compile_decode=default_compile(device, compile_decode), image_tokens=image_tokens,
                          layer_types=[c.spec.layer_type for c in teacher], teacher=teacher)


def default_compile(device: str, compile_decode: bool | None) -> bool:
    """Decode steps are compiled on CUDA unless asked otherwise (CPU: compile time would dwarf the profile)."""
    return device.startswith("cuda") if compile_decode is None else compile_decode


def default_layers_per_sample(device: str, num_layers: int) -> int:
    """How many consecutive layers hold the candidate and run in each sample (the entry is the sample over
    that many): every layer on CPU, where a layer run alone keeps its weights and state in caches that the
    other layers of a whole model share (on `tiny`, one gqa layer run 8 times is 14-18% faster per call
    than 8 distinct gqa layers in sequence, which add up to the whole decode step within 1%); one on CUDA,
    where a step is bound by HBM reads and a layer alone added up to the whole model within 1.4%."""
    return 1 if device.startswith("cuda") else num_layers


def default_rounds(device: str) -> int:
    """Passes over every measurement, samples pooled: two on CPU, so each entry is taken at two moments
    tens of seconds apart (the paired timer already cancels the machine's drift within a measurement)."""
    return 1 if device.startswith("cuda") else 2


def profile(model: str = "tiny", device: str = "cpu", ops=None, workloads=None, out=None, timer=None,
            dtype: str | None = None, seed: int = 0, progress=None, compile_decode: bool | None = None,
            rounds: int | None = None, image_tokens: int = 0, layers_per_sample: int | None = None,
            validate: bool = False) -> LatencyProfile:
    """Time every candidate as a whole decoder layer for every workload and write a latency profile.

    `ops`: candidates (a list or 'gqa,swa:window=1024,...'); `workloads`: Workloads or specs such as
    'decode:96k:b8'; `timer`: a callable `timer(fn, phase) -> [ms]` (default: CUDA events / perf_counter);
    `progress(done, total, label)`: called after each measurement; `compile_decode`: see `load_bench`;
    `rounds`: passes over everything, samples pooled per entry (default: `default_rounds`); `image_tokens`:
    for a VLM, prefill (fixed part and whole model) also encodes one image of that many tokens per sequence;
    `layers_per_sample`: the candidate goes into that many consecutive layers, run in sequence by each sample
    (default: `default_layers_per_sample`); `validate`: also time the whole models of `default_assignments`
    in every pass and record predicted vs measured in the profile's `validation`.
    """
    from . import surgery
    from .models import load_config, model_ref
    from .timing import Pool, busy_machine, default_timer, is_paired

    device = check_device(device)
    machine = environment(device)
    path = check_output(profile_path(model, machine, out), kind=PROFILE_KIND)  # before minutes of measuring
    wls = _workloads(workloads, device)
    first = load_config(model, shipped_ok=True)
    cands = parse_candidates(ops, surgery.dims_of(first))  # bad --ops: before any work
    # the teacher's own operators are always timed: the baseline every speedup is predicted against sums them
    cands += [c for c in dict.fromkeys(surgery.teacher_ops(first)) if c not in cands]
    config, bench = load_bench(model, device, dtype, seed, compile_decode, image_tokens)
    teacher = bench.teacher
    dims = surgery.dims_of(config)
    timer = timer or default_timer(device)
    rounds = rounds or default_rounds(device)
    depth = default_layers_per_sample(device, dims.num_layers) if layers_per_sample is None else layers_per_sample
    if not 1 <= depth <= dims.num_layers:
        raise UsageError(f"--layers-per-sample must be 1..{dims.num_layers} (the model's layers), got {depth}")
    # a paired timer times every sample right after a whole step of this untouched teacher (see CpuTimer.pairs)
    reference = load_bench(model, device, dtype, seed, compile_decode, image_tokens)[1] if is_paired(timer) else None
    pool = Pool(timer)
    if device.startswith("cuda"):
        for c in cands:
            ok, why = c.spec.fast_path()
            pool.failed.update({} if ok else {(c, w.name): ("unsupported", why) for w in wls})
    checks = default_assignments(sorted(c for c in cands if (c, wls[0].name) not in pool.failed),
                                 dims.num_layers, teacher) if validate else {}
    put = _assigner(bench, dims.num_layers)
    gqa = Candidate.teacher()
    # a window covering every token a query sees computes exactly what gqa does: it gets gqa's timing, not a second
    # measurement of the same work that would differ only by noise (and win or lose a plan on it)
    same_as_gqa = {(c, w.name) for c in cands for w in wls if gqa in cands and covers_context(c, w)}
    total = rounds * (len(wls) * (len(cands) + (1 if reference else 2) + len(checks)) - len(same_as_gqa))
    done = 0

    def measure(key, make, w, label, per: int = 1):
        nonlocal done
        pool.measure(key, make, w, per)
        done += 1
        if progress:
            progress(done, total, label + (f" (round {r + 1}/{rounds})" if rounds > 1 else ""))

    for r in range(rounds):
        # everything of one workload back to back, so that the validation's whole models see the machine
        # the layers they are predicted from saw
        for w in wls:
            if reference:
                pool.reference = reference.model_fn(w)  # doubles as the whole-teacher baseline
            else:
                put(teacher)
                measure(("baseline", w.name), lambda: bench.model_fn(w), w, f"{w.name} baseline")
            measure(("fixed", w.name), lambda: bench.fixed_fn(w), w, f"{w.name} fixed")
            for c in cands:
                if (c, w.name) in same_as_gqa:
                    continue
                if (c, w.name) not in pool.failed:
                    put([c] * depth)
                measure((c, w.name), lambda: bench.layers_fn(depth, w), w, f"{c} {w.name}", per=depth)
            for name, layers in checks.items():
                put(layers)
                measure(("whole", name, w.name), lambda: bench.model_fn(w), w, f"{name} {w.name}")
    put(teacher)

    stats = pool.stats()
    median = lambda key: stats[key].median_ms if key in stats else None  # noqa: E731
    baseline = {w.name: median(("baseline", w.name)) for w in wls}
    fixed = {w.name: median(("fixed", w.name)) for w in wls}
    dtype_bytes = bench.stack.embed.weight.element_size()
    entries = []
    for c in cands:
        for w in wls:
            key = (gqa, w.name) if (c, w.name) in same_as_gqa else (c, w.name)
            st = stats.get(key)
            status, reason = pool.failed.get(key, ("ok", ""))
            cache_bytes = c.spec.cache_bytes(dims, w.seq_len, dtype_bytes, **c.kwargs)
            entries += [ProfileEntry(layer=layer, candidate=c, workload=w.name, latency_ms=st and st.median_ms,
                                     p20_ms=st and st.p20_ms, p80_ms=st and st.p80_ms, status=status,
                                     cache_bytes=cache_bytes, reason=reason) for layer in range(dims.num_layers)]
    rows = additivity(checks, wls, fixed, layer_table(entries),
                      {(name, w.name): median(("whole", name, w.name)) for name in checks for w in wls})
    header = Header.new(model_ref(model, config), env={
        **machine, "timer": type(timer).__name__, "cuda_graphs": bool(getattr(timer, "graphs", False)),
        "compiled_decode": bench.compile_decode, "compile_fallbacks": bench.fallbacks, "rounds": rounds,
        "layers_per_sample": depth, "paired": reference is not None, "image_tokens": image_tokens})
    result = LatencyProfile(header=header, workloads=tuple(wls), baseline_ms=baseline, fixed_ms=fixed,
                            entries=tuple(entries), validation=tuple(rows), teacher=tuple(teacher))
    save(result, path)
    if busy := busy_machine(device):
        print(busy, file=sys.stderr)
    noise = spread(result)
    if noise and noise["median"] > NOISY_SPREAD:
        print(f"warning: noisy timings: the typical entry's p80/p20 is {noise['median']:.2f}x (above "
              f"{NOISY_SPREAD}x), so candidates that close cannot be told apart; re-run on a quiet machine (no other "
              "jobs; on CPU pin the threads, e.g. taskset -c 0-3 with OMP_NUM_THREADS=4)", file=sys.stderr)
    return result


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


def _assigner(bench: _Bench, num_layers: int):
    """`put(candidates)`: layer i of the bench model gets candidates[i], swapping only the layers that change.

    Each (layer, candidate) mixer is built once and reinstalled later: a profile revisits every candidate once
    per workload, and building one copies (MLA: factorises) the teacher's weights."""
    from . import surgery

    current = list(bench.teacher)  # what load_bench installed
    built = {}

    def put(candidates):
        for i, c in enumerate(candidates):
            if current[i] != c:
                if (i, c) not in built:
                    built[i, c] = surgery.build_mixer(bench.model, i, c)
                surgery.install(bench.model, i, c, built[i, c])
                bench.layer_types[i] = c.spec.layer_type
                current[i] = c

    return put


def additivity(assignments: dict, workloads, fixed: dict, layer_ms: dict, measured: dict) -> list[dict]:
    """Rows of predicted (fixed + sum of layers) vs measured whole-model latency, one per (assignment, workload)
    with every part timed. `layer_ms`: `layer_table`; `measured`: {(assignment name, workload): ms}."""
    from .operators import pattern_string

    rows = []
    for name, layers in assignments.items():
        for w in workloads:
            parts = [layer_ms.get((i, c, w.name)) for i, c in enumerate(layers)]
            got = measured.get((name, w.name))
            if None in parts or fixed.get(w.name) is None or got is None:
                continue
            pred = fixed[w.name] + sum(parts)
            rows.append({"assignment": name, "pattern": pattern_string(layers), "workload": w.name,
                         "predicted_ms": pred, "measured_ms": got, "error_pct": 100 * (pred - got) / got})
    return rows


def profile_path(model: str, env: dict, out=None) -> Path:
    """Where a profile goes: `out`, or profiles/<model>--<device>.json."""
    from .models import slug

    return output_path(out, Path("profiles") / f"{slug(model)}--{_device_slug(env)}.json")


def validate(profile_obj: LatencyProfile, model: str = "tiny", device: str = "cpu", assignments=None,
             timer=None, dtype: str | None = None, seed: int = 0) -> list[dict]:
    """Time whole models (the teacher and mixed assignments) now and compare with an existing profile's
    fixed + sum of layers (rows as in `additivity`).

    Decode steps are compiled, and images encoded, exactly as in the profile, so both sides share one harness.
    A paired timer times each whole model against a teacher run just before it and puts the ratio on the
    profile's scale (its `baseline_ms`); otherwise the two sides are timed apart, and a machine whose speed
    drifts puts its drift into the error. On a GPU this lets a long profile and its check run as separate jobs;
    `profile(validate=True)` times both in the same passes."""
    from . import surgery
    from .timing import Pool, default_timer, is_paired

    device = check_device(device)
    env = profile_obj.header.env
    config, bench = load_bench(model, device, dtype, seed, env.get("compiled_decode", False),
                               env.get("image_tokens", 0))
    n = surgery.dims_of(config).num_layers
    table = layer_table(profile_obj.entries)
    assignments = assignments or default_assignments(sorted({c for _, c, _ in table}), n, bench.teacher)
    timer = timer or default_timer(device)
    reference = load_bench(model, device, dtype, seed, env.get("compiled_decode", False),
                           env.get("image_tokens", 0))[1] if is_paired(timer) else None
    pool, put = Pool(timer), _assigner(bench, n)
    for _ in range(env.get("rounds") or default_rounds(device)):  # as the profile was taken
        for w in profile_obj.workloads:
            if reference:
                pool.reference = reference.model_fn(w)
            for name, layers in assignments.items():
                put(layers)
                pool.measure(("whole", name, w.name), lambda: bench.model_fn(w), w)
    stats = pool.stats(reference_ms=profile_obj.baseline_ms if reference else None)
    measured = {key[1:]: st.median_ms for key, st in stats.items() if key[0] == "whole"}  # (name, workload)
    return additivity(assignments, profile_obj.workloads, profile_obj.fixed_ms, table, measured)


def layer_table(entries) -> dict:
    """{(layer, candidate, workload): latency_ms} of the ok profile entries."""
    return {(e.layer, e.candidate, e.workload): e.latency_ms for e in entries if e.status == "ok"}


def default_assignments(candidates, num_layers: int, teacher=None) -> dict:
    """The teacher (`teacher`: its own operator per layer, default gqa everywhere) and two mixes of the given
    candidates (interleaved, and reversed)."""
    gqa = Candidate.teacher()
    teacher = list(teacher or [gqa] * num_layers)
    others = [c for c in candidates if c != gqa] or [gqa]
    mix = [gqa if i % 3 == 0 else others[i % len(others)] for i in range(num_layers)]
    name = "teacher (all gqa)" if teacher == [gqa] * num_layers else "teacher"
    return {name: teacher, "mix A": mix,
            "mix B": [others[(i * 7) % len(others)] if i % 4 else gqa for i in range(num_layers)]}


def _workloads(workloads, device: str) -> list[Workload]:
    specs = workloads or (CUDA_WORKLOADS if device.startswith("cuda") else CPU_WORKLOADS)
    wls = [w if isinstance(w, Workload) else parse_workload(w) for w in specs]
    names = [w.name for w in wls]
    if len(set(names)) != len(names):
        raise UsageError(f"duplicate workloads: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return wls


def _device_slug(env: dict) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(env.get("device_name") or env.get("device"))).strip("-").lower() or "device"
