"""The timed model that `profile`, `bench` and validation share: a teacher of the real dimensions with random weights
(`load_bench`), its parts as closures per workload (`Bench`) and the static cache a built model decodes with. One
harness, so what the profiler times is what `bench` times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..artifacts.profile import Workload
from ..errors import invalid
from ..hf import surgery
from ..hf.device import check_dtype, default_dtype
from ..hf.models import model_from_config, resolve
from ..hf.vision import image_encoder, random_image
from ..modeling.architectures import image_architectures
from ..operators import cache_layout
from .timing import is_oom


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
class Bench:
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
    current: list = field(default_factory=list)  # the operator in each layer now (`assign`); starts as `teacher`
    # each (layer, candidate) mixer is built once and reinstalled later: a profile revisits every candidate once per
    # workload, and building one copies (MLA: factorises) the teacher's weights
    _built: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self.current = list(self.current or self.teacher)

    def assign(self, candidates) -> None:
        """Layer i of the model gets candidates[i] (a sequence of `Candidate`, at most one per layer), swapping only
        the layers that change."""
        for i, c in enumerate(candidates):
            if self.current[i] != c:
                # an MLP candidate alone runs under the teacher's own operator (mosaic's mixer of it, as the teacher
                # layers here are: a sliding teacher's window included), and takes its cache slot
                choice = c if c.spec.axis == "mixer" else self.teacher[i].with_mlp(c)
                if (i, choice) not in self._built:
                    self._built[i, choice] = surgery.build_modules(self.model, i, choice)
                surgery.install(self.model, i, choice, *self._built[i, choice])
                self.layer_types[i] = choice.spec.layer_type
                self.current[i] = c

    def prefill_caches(self):
        """A function making empty dynamic caches for the current mixers, each built by transformers from the cache
        layout a build of them would have (`cache_layout`), as generate does; the config is made once, here."""
        from transformers import DynamicCache

        teacher = surgery.architecture(self.model.config).text(self.model.config)
        windows = [_window(layer) for layer in self.stack.layers]
        config = type(teacher).from_dict({**teacher.to_dict(), **cache_layout(self.layer_types, windows)})
        return lambda: DynamicCache(config=config)

    def decode_cache(self, context: int):
        """The static cache a built model decodes with, for one step at `context` past tokens (`static_cache`)."""
        return static_cache(self.stack.layers, self.layer_types, context)

    def inputs(self, w: Workload):
        """Random (hidden [batch, t, hidden], ids [batch, t], start position) for `w`: t is the prompt for a prefill,
        one token at position `seq_len` for a decode step."""
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
        if w.phase != "prefill" or not self.image_tokens:
            return None
        encode = image_encoder(self.model)
        if encode is None:
            raise invalid("image_tokens", f"{self.image_tokens}: the model has no vision tower")
        pixels, grid = random_image(self.model.config.vision_config, self.image_tokens, w.batch_size, self.device,
                                    self.dtype)
        return lambda: encode(pixels, grid)

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
                    if is_oom(e):
                        raise
                    self.fallbacks.append(f"{label}: {' '.join(str(e).split())[:160]}")
                    state["compiled"] = False
            return run(_eager)

        return step


def _eager(fn):
    return fn


def load_bench(model, device: str, dtype: str | None = None, seed: int = 0, compile_decode: bool | None = None,
               image_tokens: int = 0):
    """The teacher (an id, or a stage's `Resolved` record; a shipped config will do) with random weights and
    mosaic's mixer of the teacher's own operator in every layer
    (`surgery.teacher_ops`: gqa, or swa where the teacher slides), on `device`.

    `compile_decode` (default: on CUDA) runs decode steps through torch.compile (see `Bench`); a VLM's
    prefill also encodes an image of `image_tokens` tokens (`Bench.vision_fn`)."""
    import torch

    dtype = check_dtype(dtype) or default_dtype(device)
    resolved = resolve(model, shipped_ok=True)
    config, model = resolved.config, resolved.id
    if image_tokens < 0:
        raise invalid("image_tokens", f"must be 0 or more, got {image_tokens}")
    if image_tokens and getattr(config, "vision_config", None) is None:
        raise invalid("image_tokens", f"{image_tokens}: {model} is a text-only model")
    if image_tokens and not resolved.arch.record.image_inputs:
        raise invalid("image_tokens", f"{image_tokens}: mosaic encodes images only through the vision towers of "
                         f"{', '.join(image_architectures())} (profile {model} without it: its text layers)")
    with torch.device(device):
        net = model_from_config(config, dtype=dtype, seed=seed)
    teacher = resolved.teacher_ops
    for i, c in enumerate(teacher):
        surgery.swap(net, i, c)
    return config, Bench(net, surgery.text_stack(net), device, getattr(torch, dtype),
                         compile_decode=default_compile(device, compile_decode), image_tokens=image_tokens,
                         layer_types=[c.spec.layer_type for c in teacher], teacher=teacher)


def default_compile(device: str, compile_decode: bool | None) -> bool:
    """Decode steps are compiled on CUDA unless asked otherwise (CPU: compile time would dwarf the profile)."""
    return device.startswith("cuda") if compile_decode is None else compile_decode
