"""THE operator registry: one `OperatorSpec` per candidate token mixer, used by every stage.

Adding an operator is one new file in this folder that calls `register(...)`, plus one import line at the
bottom of this module. Nothing here imports torch: `mosaic solve` reads the registry without it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UsageError, did_you_mean


@dataclass(frozen=True)
class OperatorSpec:
    """Everything the stages need to know about one operator.

    `mixer` names the module class in `mosaic_search.modeling` ("file:Class", constructed as
    `Class(dims, layer_idx, **params)`): the attention replacement, or for `replaces == "layer"` the
    whole-layer replacement. Built models record it per layer, so their remote code needs no operator
    list of its own. `init_from_teacher(new, teacher_attention)` copies
    or derives weights from the teacher's attention; `cache_bytes(dims, context, dtype_bytes, **params)` is
    the generation cache one sequence needs at `context` tokens; `default_params(dims)` lists the params
    tried when the user names no candidates.
    """

    name: str
    symbol: str
    layer_type: str
    summary: str
    mixer: str
    init_from_teacher: Callable[..., None]
    cache_bytes: Callable[..., int]
    params: tuple[str, ...] = ()
    default_params: Callable[[Any], list[dict]] = lambda dims: [{}]
    requires: tuple[str, ...] = ()
    replaces: str = "attention"
    aligned: bool = False

    def build(self, dims, layer_idx: int, **params):
        """A fresh (randomly initialised) mixer module for one layer."""
        from ..modeling.mixers import mixer_class

        return mixer_class(self.mixer)(dims, layer_idx, **params)

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


REGISTRY: dict[str, OperatorSpec] = {}


def register(spec: OperatorSpec) -> OperatorSpec:
    """Add an operator; names and symbols must be unique."""
    if spec.name in REGISTRY:
        raise ValueError(f"operator {spec.name} registered twice")
    if any(s.symbol == spec.symbol for s in REGISTRY.values()):
        raise ValueError(f"symbol {spec.symbol} of {spec.name} is already taken")
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
    """An operator with its params, e.g. swa with window=1024; hashable, so it keys tables."""

    op: str
    params: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def of(cls, op: str, params: dict | None = None) -> "Candidate":
        """Validate `op` and `params` against the registry and build the candidate."""
        spec = get(op)
        params = dict(params or {})
        for key, value in params.items():
            if key not in spec.params:
                allowed = ", ".join(spec.params) or "none"
                raise UsageError(f'{op}: unknown param "{key}"{did_you_mean(key, spec.params)}; allowed: {allowed}')
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"{op}: {key} must be a positive integer, got {value!r}")
        missing = [p for p in spec.params if p not in params]
        if missing:
            raise UsageError(f"{op}: missing param {', '.join(missing)} (e.g. {op}:{missing[0]}=1024)")
        return cls(op, tuple(sorted(params.items())))

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        """Parse 'op' or 'op:key=value[:key=value]', e.g. 'swa:window=1024'."""
        op, *parts = text.strip().split(":")
        params = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise UsageError(f'cannot parse candidate "{text}": expected op:key=value')
            try:
                params[key.strip()] = int(value)
            except ValueError:
                raise UsageError(f'{op}: {key} must be a positive integer, got "{value}"') from None
        return cls.of(op.strip(), params)

    @property
    def spec(self) -> OperatorSpec:
        """The registry record of this candidate's operator."""
        return REGISTRY[self.op]

    @property
    def kwargs(self) -> dict:
        """The params as keyword arguments."""
        return dict(self.params)

    def to_json(self) -> dict:
        """The structured form written into artifacts: {"op": ..., "params": {...}}."""
        return {"op": self.op, "params": dict(self.params)}

    def __str__(self) -> str:
        return ":".join([self.op, *(f"{k}={v}" for k, v in self.params)])


def parse_candidates(text: str) -> list[Candidate]:
    """Parse a comma-separated candidate list, e.g. 'gqa,swa:window=1024,gdn'; duplicates are dropped."""
    out: list[Candidate] = []
    for item in text.split(","):
        if item.strip():
            c = Candidate.parse(item)
            if c not in out:
                out.append(c)
    if not out:
        raise UsageError("empty operator list")
    return out


def default_candidates(dims) -> list[Candidate]:
    """Every registered operator with its default params for a model of these dimensions."""
    return [Candidate.of(name, p) for name, spec in REGISTRY.items() for p in spec.default_params(dims)]


def pattern_string(candidates) -> str:
    """One symbol per layer, e.g. 'GGSDG'."""
    return "".join(REGISTRY[c.op].symbol for c in candidates)


def from_symbol(symbol: str) -> OperatorSpec:
    """The operator whose one-letter symbol this is."""
    for spec in REGISTRY.values():
        if spec.symbol == symbol:
            return spec
    symbols = ", ".join(f"{s.symbol}={s.name}" for s in REGISTRY.values())
    raise UsageError(f'unknown pattern symbol "{symbol}"; known: {symbols}')


from . import attention, latent, delta, removal  # noqa: E402,F401  (each file registers its operators)
