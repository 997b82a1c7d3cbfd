"""The operator registry's types: `OperatorSpec`, `Candidate`, `register` and the lookups every stage uses.

The operators themselves are registered by the files of this package (see `__init__`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UsageError, did_you_mean, invalid, listed


@dataclass(frozen=True)
class OperatorSpec:
    """Everything the stages need to know about one operator: the one truth about it.

    `build(dims, layer_idx, **params)` makes the module (the remote code's `{op: mixer class}` table,
    `modeling.mixers.MIXERS`, names its class, so built configs record only `op` and `params`).
    `init_from_teacher(new, teacher_attention)` copies or derives its weights from the teacher's attention (this code
    stays here: built models never call it). `cache_bytes(dims, context, dtype_bytes, **params)` is the generation
    cache one sequence needs at `context` tokens; `default_params(dims)` lists the params tried when the user names no
    candidates; `max_params(dims)` bounds params from above for a model of these dimensions (`Candidate.check_fits`).
    `teacher_layer_type`: the HF layer type of a teacher layer that is this operator as is (gqa: `full_attention`,
    swa: `sliding_attention`; see `Candidate.teacher`). `window(params)`: the tokens a query attends to at most
    (None: every token before it), which the cache layout and the profiler's equal-work check read.
    `axis`: "mixer" (the layer's token mixer) or "mlp" (its MLP: a layer's choice is one of each, see `Candidate`).
    `optional`: params that may be left out (the teacher's value). `check(dims, params)`: why these params do not
    fit a model of `dims` (naming the valid values), or None.
    """

    name: str
    symbol: str
    layer_type: str
    summary: str
    init_from_teacher: Callable[..., None]
    cache_bytes: Callable[..., int]
    params: tuple[str, ...] = ()
    default_params: Callable[[Any], list[dict]] = lambda dims: [{}]
    max_params: Callable[[Any], dict] = lambda dims: {}
    requires: tuple[str, ...] = ()
    aligned: bool = False
    teacher_layer_type: str | None = None
    window: Callable[[dict], int | None] = lambda params: None
    axis: str = "mixer"
    optional: tuple[str, ...] = ()
    check: Callable[[Any, dict], str | None] = lambda dims, params: None

    def build(self, dims, layer_idx: int, **params):
        """A fresh (randomly initialised) mixer module for one layer of a model of dimensions `dims` (`ModelDims`)."""
        from ..modeling.mixers import MIXERS  # torch: the registry itself stays importable without it

        return MIXERS[self.name](dims, layer_idx, **params)

    def defaults(self, dims) -> list[dict]:
        """`default_params(dims)` with repeats dropped, in order: at small sizes two rules can give one value (mla's
        rank floor), and a repeated candidate would be profiled, scored and listed twice."""
        out: list[dict] = []
        for params in self.default_params(dims):
            if params not in out:
                out.append(params)
        return out

    def fast_path(self) -> tuple[bool, str]:
        """Whether this operator's CUDA fast path can run here, and why not."""
        import importlib

        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return False, f"{module} is not installed (pip install 'mosaic-search[cuda]')"
        try:
            torch = importlib.import_module("torch")
        except ImportError:
            return False, "torch is not installed"
        if self.requires and not torch.cuda.is_available():
            return False, "no CUDA device (the PyTorch reference path runs instead)"
        return True, ""

    @property
    def counts_tokens(self) -> bool:
        """Whether a layer of this operator lets transformers' cache count the tokens seen (see `unbuildable`)."""
        return self.layer_type in COUNTING_LAYER_TYPES


AXES = ("mixer", "mlp")


# transformers' caches answer get_seq_length() from their attention slots only: a model without one cannot
# generate with a cache (positions and masks come from that count).
COUNTING_LAYER_TYPES = ("full_attention", "sliding_attention")

REGISTRY: dict[str, OperatorSpec] = {}


def register(spec: OperatorSpec) -> OperatorSpec:
    """Add an operator; names and symbols must be unique."""
    if spec.name in REGISTRY:
        raise ValueError(f"operator {spec.name} registered twice")
    if any(s.symbol.lower() == spec.symbol.lower() for s in REGISTRY.values()):  # `pattern_string` lowers them
        raise ValueError(f"symbol {spec.symbol} of {spec.name} is already taken")
    if spec.axis not in AXES:
        raise ValueError(f"operator {spec.name}: axis {spec.axis!r} is not one of {AXES}")
    REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> OperatorSpec:
    """The spec for a registry key, or a one-line error suggesting the nearest key."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f'unknown operator "{name}"{did_you_mean(name, REGISTRY)}; '
                         f'known: {", ".join(REGISTRY)}') from None


@dataclass(frozen=True, order=True)
class Candidate:
    """An operator with its params, e.g. swa with window=1024; hashable, so it keys tables.

    A layer's choice has two axes (`OperatorSpec.axis`): its mixer and its MLP. A mixer candidate may carry an MLP
    candidate in `mlp` (`(op, params)`, e.g. gqa with mlp:width=256, written 'gqa+mlp:width=256'); without one the
    layer keeps the teacher's MLP. Tables (profile, scores) hold each axis alone: an MLP candidate by itself is that
    MLP under the teacher's own mixer, which is how it is timed and scored (`compose` adds the two axes up).
    """

    op: str
    params: tuple[tuple[str, Any], ...] = field(default=())
    mlp: tuple = field(default=())

    @classmethod
    def of(cls, op: str, params: dict | None = None, mlp: "Candidate | None" = None) -> "Candidate":
        """Validate `op` and `params` against the registry and build the candidate; `mlp`: the MLP a mixer
        candidate takes (None: the teacher's)."""
        spec = get(op)
        if mlp is not None:
            check_pair(op, "+" if mlp.mlp else mlp.op, f"{op}+{mlp}")
        params = dict(params or {})
        for key, value in params.items():
            if key not in spec.params:
                allowed = ", ".join(spec.params) or "none"
                raise UsageError(f'{op}: unknown param "{key}"{did_you_mean(key, spec.params)}; allowed: {allowed}')
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"{op}: {key} must be a positive integer, got {value!r}")
        missing = [p for p in spec.params if p not in params and p not in spec.optional]
        if missing:
            raise UsageError(f"{op}: missing param {', '.join(missing)} (e.g. {op}:{missing[0]}=1024)")
        return cls(op, tuple(sorted(params.items())), () if mlp is None else (mlp.op, mlp.params))

    @classmethod
    def teacher(cls, layer_type: str = "full_attention", window: int | None = None) -> "Candidate":
        """The operator a softmax-attention teacher's decoder layer of HF type `layer_type` is, as is (the spec whose
        `teacher_layer_type` it is): gqa for full attention, swa with the teacher's `window` for sliding attention.
        A sliding layer without a window is full attention. Raises UsageError for any other layer type."""
        if layer_type == "sliding_attention" and not window:
            layer_type = "full_attention"
        for spec in REGISTRY.values():
            if spec.teacher_layer_type == layer_type:
                return cls.of(spec.name, {p: window for p in spec.params if p not in spec.optional})
        known = " / ".join(s.teacher_layer_type for s in REGISTRY.values() if s.teacher_layer_type)
        raise UsageError(f'layer type "{layer_type}": mosaic starts from softmax-attention teachers '
                         f"(layer_types {known})")

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        """Parse 'op' or 'op:key=value[:key=value]', e.g. 'swa:window=1024', or the short form the tables show,
        'swa:1024' (values in the operator's param order, see `label`); a mixer with an MLP joins both with '+',
        e.g. 'gqa+mlp:width=256'."""
        mixer, plus, rest = text.strip().partition("+")
        if plus:
            return cls.of(*cls._parse_one(mixer), mlp=cls.parse(rest))
        return cls.of(*cls._parse_one(text))

    @staticmethod
    def _parse_one(text: str) -> tuple[str, dict]:
        op, *parts = text.strip().split(":")
        names = get(op.strip()).params if parts else ()
        params = {}
        for i, part in enumerate(parts):
            key, sep, value = part.partition("=")
            if not sep and i < len(names):
                key, value = names[i], part
            elif not sep or not key:
                raise UsageError(f'cannot parse candidate "{text}": expected op:key=value')
            if key.strip() in params:  # last-wins would silently drop one of the two
                raise UsageError(f'cannot parse candidate "{text}": {key.strip()} is given twice')
            try:
                params[key.strip()] = int(value)
            except ValueError:
                raise UsageError(f'{op}: {key} must be a positive integer, got "{value}"') from None
        return op.strip(), params

    @property
    def spec(self) -> OperatorSpec:
        """The registry record of this candidate's operator."""
        return REGISTRY[self.op]

    @property
    def kwargs(self) -> dict:
        """The params as keyword arguments."""
        return dict(self.params)

    @property
    def aligned(self) -> bool:
        """Whether this candidate is distilled locally before scoring (`OperatorSpec.aligned`, or a teacher operator
        given fewer KV heads, whose pooled projections are no longer the teacher's)."""
        return self.spec.aligned or "kv_heads" in self.kwargs

    @property
    def mlp_candidate(self) -> "Candidate | None":
        """The MLP this layer choice takes (None: the teacher's); an MLP candidate by itself is its own."""
        if self.spec.axis == "mlp":
            return self
        return Candidate(*self.mlp) if self.mlp else None

    @property
    def mixer(self) -> "Candidate | None":
        """The mixer part of this choice (None for an MLP candidate by itself, which keeps the teacher's mixer)."""
        return None if self.spec.axis == "mlp" else Candidate(self.op, self.params)

    def with_mlp(self, mlp: "Candidate | None") -> "Candidate":
        """This mixer with MLP `mlp` (None: the teacher's)."""
        return Candidate.of(self.op, self.kwargs, mlp)

    def to_json(self) -> dict:
        """The structured form written into artifacts: {"op": ..., "params": {...}} (+ "mlp": the same form)."""
        out = {"op": self.op, "params": dict(self.params)}
        if self.mlp:
            out["mlp"] = {"op": self.mlp[0], "params": dict(self.mlp[1])}
        return out

    def __str__(self) -> str:
        text = ":".join([self.op, *(f"{k}={v}" for k, v in self.params)])
        return f"{text}+{self.mlp_candidate}" if self.mlp else text

    @property
    def window(self) -> int | None:
        """The tokens one query attends to at most (itself included), or None for every token before it."""
        return self.spec.window(self.kwargs)

    def sees_all(self, tokens: int) -> bool:
        """Whether a query that `tokens` tokens precede (itself included) attends to all of them: a window that
        long computes exactly full attention."""
        return self.window is None or self.window >= tokens

    def check_fits(self, dims) -> "Candidate":
        """Return self, or raise UsageError when a param exceeds what a model of `dims` allows (`max_params`) or
        breaks the operator's own rule (`OperatorSpec.check`, whose message names the valid values)."""
        for key, limit in self.spec.max_params(dims).items():
            if self.kwargs.get(key, 0) > limit:
                raise UsageError(f"{self}: {key} must be at most {limit} for this model, got {self.kwargs[key]}")
        if why := self.spec.check(dims, self.kwargs):
            raise UsageError(f"{Candidate(self.op, self.params)}: {why}")
        if self.mlp:
            self.mlp_candidate.check_fits(dims)
        return self

    @property
    def label(self) -> str:
        """The short name tables and plots show, e.g. 'swa:1024' for swa:window=1024 (`parse` reads it back); an
        optional param left out is not shown, one given is shown as key=value."""
        kw = self.kwargs
        parts = [str(kw[p]) for p in self.spec.params if p not in self.spec.optional]
        parts += [f"{p}={kw[p]}" for p in self.spec.optional if p in kw]
        text = ":".join([self.op, *parts])
        return f"{text}+{self.mlp_candidate.label}" if self.mlp else text


OPS_HELP = ("Comma-separated candidates, e.g. gqa,swa,gdn or swa:window=1024,mla:rank=256,mlp:width=256,nomlp. A "
            "bare operator with params (swa, mla, mlp) means its default params for this model: every default window "
            "/ rank / width (in solve: every one the profile and scores hold). MLP candidates (mlp, nomlp) are a "
            "second axis: each layer takes a mixer and an MLP; gqa+mlp:width=256 stands for both parts (swa+mlp: every "
            "default of each).")


def parse_candidates(ops, dims) -> list[Candidate]:
    """The candidates `ops` names for a model of dimensions `dims` (`surgery.dims_of`); duplicates dropped.

    `ops`: None (every operator with its default params), a string such as 'gqa,swa,mla:rank=64' or a list of
    such items and Candidates. A bare operator with params ('swa') stands for its `default_params(dims)`:
    the grammar of every command's --ops (`OPS_HELP`). Raises UsageError for unknown operators or params.
    """
    if ops is None:
        return default_candidates(dims)
    items = listed("ops", ops)
    out: list[Candidate] = []
    try:
        for item in items:
            if isinstance(item, Candidate):
                found = [item]
            elif not str(item).strip():
                continue
            elif "+" in str(item):  # a mixer with an MLP: each part as one item, every pairing of the two
                mixer, _, mlp = str(item).partition("+")
                found = [Candidate.of(m.op, m.kwargs, p) for m in _one(mixer, dims) for p in _one(mlp, dims)]
            else:
                found = _one(str(item), dims)
            out += [c for c in found if c not in out]
        if not out:
            raise UsageError("empty operator list")
        return [c.check_fits(dims) for c in out]
    except UsageError as e:  # named as every stage names it
        raise invalid("ops", f": {e}") from None


def check_pair(mixer: str, mlp: str, text: str) -> None:
    """UsageError naming `text` unless operators `mixer` + `mlp` make a layer choice: a mixer other than drop with an
    MLP candidate."""
    if get(mixer).axis != "mixer" or mlp not in REGISTRY or get(mlp).axis != "mlp":
        raise UsageError(f"{text}: a layer's choice is a mixer with an MLP (e.g. gqa+mlp:width=256)")
    if mixer == "drop":
        raise UsageError(f"{text}: drop skips the whole layer, its MLP too")


def _one(text: str, dims) -> list[Candidate]:
    """One item of `ops` without '+': itself, or for a bare operator with required params its defaults."""
    if ":" in text or not _required(get(text.strip())):
        return [Candidate.parse(text)]
    return [Candidate.of(text.strip(), p) for p in REGISTRY[text.strip()].defaults(dims)]


def _required(spec: OperatorSpec) -> tuple:
    """The params a candidate of `spec` must give: a bare operator whose params are all optional means itself."""
    return tuple(p for p in spec.params if p not in spec.optional)


def default_candidates(dims) -> list[Candidate]:
    """Every registered operator with its default params for a model of these dimensions."""
    return [Candidate.of(name, p) for name, spec in REGISTRY.items() for p in spec.defaults(dims)]


def compose(value: Callable[[Candidate], float | None], candidate: Candidate, teacher: Candidate) -> float | None:
    """A layer choice's value from the tables, which hold each axis alone: value(mixer) + value(MLP) - value(teacher)
    for a mixer with an MLP (the MLP's entry was measured under the teacher's own mixer `teacher`, so the teacher's
    part is counted once), else value(candidate). None when a part has no value. The one additive two-axis model:
    latency, cache bytes and scores all compose through it."""
    if not candidate.mlp:
        return value(candidate)
    parts = [value(candidate.mixer), value(candidate.mlp_candidate), value(teacher)]
    return None if any(v is None for v in parts) else parts[0] + parts[1] - parts[2]


def seen_as_full(candidates, tokens: int, teacher=()) -> list[str]:
    """The windowed `candidates` that sequences of `tokens` tokens cannot tell from full attention (the window sees
    all of them, so a measurement on them scores the window as it scores gqa), as strings without repeats; the
    `teacher`'s own operators are left out: they are the teacher's math whatever the length."""
    return list(dict.fromkeys(str(c) for c in candidates
                              if c.window is not None and c.sees_all(tokens) and c not in set(teacher)))


def unbuildable(layers) -> str | None:
    """Why a per-layer assignment (one Candidate per layer) cannot become a model that generates, or None.

    The one validity rule: solve imposes it as a MIP constraint (so the sweep, the reachability report and
    solve_many do too), the baselines and the solver's re-check refuse it, build and bench refuse such a plan.
    """
    if any(c.spec.axis != "mixer" for c in layers):
        return "an MLP candidate alone is not a layer choice: give it a mixer (e.g. gqa+mlp:width=256)"
    if not any(REGISTRY[c.op].counts_tokens for c in layers):
        ops = ", ".join(sorted({c.op for c in layers}))
        return (f"only {ops} layers: a model needs at least one attention layer (an operator of layer type "
                f"{' or '.join(COUNTING_LAYER_TYPES)}) for transformers' cache to count tokens in generate()")
    return None


def cache_layout(layer_types: list, windows: list) -> dict:
    """The text-config fields from which transformers builds each layer's cache slot as its mixer needs it.

    `layer_types`: one per layer (transformers' vocabulary, `OperatorSpec.layer_type`); `windows`: each layer's window
    or None (`Candidate.window`). Returns `layer_types`, the largest window as `sliding_window` (with Qwen3's
    `use_sliding_window`), and, when windows differ, every sliding layer's own window in `per_layer_config`
    (transformers' heterogeneous configs), so a layer with a smaller window caches, and in a static cache rolls, only
    its own window instead of the largest.
    """
    sliding = {i: w for i, (t, w) in enumerate(zip(layer_types, windows)) if t == "sliding_attention"}
    fields = {"layer_types": list(layer_types), "sliding_window": max(sliding.values(), default=None),
              "use_sliding_window": bool(sliding)}
    if len(set(sliding.values())) > 1:
        fields["per_layer_config"] = {i: {"sliding_window": w} for i, w in sliding.items()}
        # the teacher's own attention classes read the global window while the model is built, before the mixers
        # replace them: allowed, as the cache (the only other reader) takes the per-layer values
        fields["allow_global_per_layer_attribute_access"] = True
    return fields


def pattern_string(candidates) -> str:
    """One symbol per layer, its mixer's, e.g. 'GGSDG'; lower case where the layer's MLP is narrower or removed
    ('GgSdG': layers 1 and 3 changed their MLP too), so plans that differ on the MLP axis alone read differently (the
    layers themselves say which MLP)."""
    return "".join(REGISTRY[c.op].symbol.lower() if c.mlp else REGISTRY[c.op].symbol for c in candidates)


def pattern_legend() -> str:
    """What each letter of a pattern means, e.g. 'G=gqa, S=swa, ..., X=drop' (`pattern_string`)."""
    return ", ".join(f"{s.symbol}={s.name}" for s in REGISTRY.values() if s.axis == "mixer")


def from_symbol(symbol: str) -> OperatorSpec:
    """The operator whose one-letter symbol this is."""
    for spec in REGISTRY.values():
        if spec.symbol == symbol and spec.axis == "mixer":
            return spec
    symbols = pattern_legend()
    if any(s.symbol == symbol.upper() and s.axis == "mixer" for s in REGISTRY.values()):
        raise UsageError(f'pattern symbol "{symbol}": a lower-case letter marks a plan\'s layer with a changed MLP and '
                         f"does not say which; a pattern gives mixers only (known: {symbols})")
    raise UsageError(f'unknown pattern symbol "{symbol}"; known: {symbols}')


# matplotlib's tab10, in registry order: an operator has one colour in every plot, whichever others it is drawn with
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")


def plot_color(op: str) -> str:
    """The hex colour every plot draws operator `op` in (UsageError for an unknown op)."""
    get(op)
    return _PALETTE[list(REGISTRY).index(op) % len(_PALETTE)]
