"""The solver's arguments as the CLI gives them: operator specs ('swa' or 'swa:window=1024'), KEY=VALUE pairs,
counts of layers, positive numbers."""

from __future__ import annotations

from ..errors import UsageError, did_you_mean, invalid, listed, number
from ..operators import REGISTRY, Candidate, check_pair


def matches(spec, c: Candidate) -> bool:
    """Whether a candidate is `spec`: an op name matches every param choice, a Candidate only itself; an MLP spec
    matches a layer choice by its MLP (`--max mlp=4`, `--pin 3=nomlp`)."""
    mlp = c.mlp_candidate
    if isinstance(spec, Candidate):
        return c == spec or (spec.spec.axis == "mlp" and mlp == spec)
    return c.op == spec or (mlp is not None and mlp.op == spec)


def parse_spec(text, param: str | None = None, given: str = "") -> str | Candidate:
    """'swa' (any window), 'swa:window=1024' (that one) or 'gqa+mlp:width=256' (a mixer with an MLP); unknown ops
    fail with a suggestion, naming library parameter `param` (and the `given` text of it, e.g. a pin's '0=gqa') when
    there is one."""
    if isinstance(text, Candidate):
        return text
    text = str(text).strip()
    try:
        if ":" in text or "+" in text:
            return Candidate.parse(text)
        if text not in REGISTRY:
            raise UsageError(f'unknown operator "{text}"{did_you_mean(text, REGISTRY)}; known: {", ".join(REGISTRY)}')
    except UsageError as e:
        raise (invalid(param, f"{given}: {e}") if param else UsageError(str(e))) from None
    return text


def parse_parts(text, param: str) -> tuple:
    """The specs an --ops item stands for: an operator or candidate alone, or a mixer with an MLP as its two parts,
    each bare ('swa+mlp': any window, any width) or with params, checked to pair (`operators.check_pair`)."""
    mixer, plus, mlp = ("", "", "") if isinstance(text, Candidate) else str(text).strip().partition("+")
    if not plus:
        spec = parse_spec(text, param)  # a Candidate comes back as it is
        return (spec,) if isinstance(spec, str) else tuple(p for p in (spec.mixer, spec.mlp_candidate) if p is not None)
    parts = (parse_spec(mixer, param, text), parse_spec(mlp, param, text))
    try:
        check_pair(*(p.op if isinstance(p, Candidate) else p for p in parts), str(text).strip())
    except UsageError as e:
        raise invalid(param, f": {e}") from None
    return parts


def pairs(items, what: str, last: bool = False) -> list[tuple[str, str]]:
    """A mapping, or 'KEY=VALUE' strings as the CLI gives them, as (key, value) pairs, split at the first '=' (pins:
    `3=gqa:kv_heads=1`) or, with `last`, at the last (counts: `gqa:kv_heads=1=2`); `what` names the library parameter
    in the UsageError raised for a string without '=' or with an empty side."""
    if not items:
        return []
    if isinstance(items, dict):
        return [(str(k), v) for k, v in items.items()]
    out = []
    for item in listed(what, items):
        key, sep, value = str(item).rpartition("=") if last else str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise invalid(what, f': cannot parse "{item}", expected KEY=VALUE')
        out.append((key.strip(), value.strip()))
    return out


def counts(items, what: str, layers: int) -> list:
    """"OP=N" strings or {op: n} as [(spec, n)], each n a count of layers (`what` names the parameter in errors)."""
    out = []
    for key, value in pairs(items, what, last=True):
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise invalid(what, f"{key}: count must be an integer, got {value!r}") from None
        if n < 0 or (what == "min_count" and n > layers):  # a max_count above the layers is merely no bound
            raise invalid(what, f"{key}={value}: a count of layers must be within 0..{layers}")
        out.append((parse_spec(key, what, f"{key}={value}"), n))
    return out


def positive(name: str, value, integer: bool = False):
    """`value` as a positive float (or int), None for None; UsageError naming the parameter `name` otherwise."""
    if value is None:
        return None
    if not number(value):  # a bool or a string is not a number, though float() takes both
        raise invalid(name, f"must be a positive {'integer' if integer else 'number'}, got {value!r}")
    v = int(value) if integer else float(value)
    if v <= 0 or (integer and v != value):
        raise invalid(name, f"must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return v
