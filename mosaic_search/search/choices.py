"""A layer's choices in the solver's problem: one per allowed mixer, and one per allowed mixer with each allowed MLP,
each costed from the profile's and the table's entries of both axes (`operators.compose`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..artifacts.profile import LatencyProfile
from ..operators import Candidate, compose
from .specs import matches


@dataclass(frozen=True)
class Choice:
    """One candidate allowed at one layer and what taking it costs (both axes composed, `operators.compose`).

    `loss`: its score under the problem's metric (nats); `latency_ms`: {workload in scope: ms of the whole
    decoder layer}; `cache_bytes`: what it keeps for the cache bound's batch at the bound's context (0 when
    the problem has no cache bound).
    """

    layer: int
    candidate: Candidate
    loss: float
    latency_ms: dict
    cache_bytes: int = 0


def layer_choices(profile: LatencyProfile, ok: list, lat: dict, loss: dict, cache: dict, keep) -> tuple:
    """The Choices at each layer: every mixer allowed there, and every mixer but drop with every MLP candidate allowed
    there, costs composed from both axes against the teacher's own operator (`operators.compose`). Allowed: ran ok on
    every workload in scope, scored, with a cache entry if bounded (`ok`), and in --ops (`keep`)."""
    teacher, have = profile.teacher, set(ok)
    allowed = [[] for _ in teacher]
    for layer, c in ok:
        if not keep or any(matches(s, c) for s in keep):
            allowed[layer].append(c)
    out = []
    for layer, cands in enumerate(allowed):
        mixers = [c for c in cands if c.spec.axis == "mixer"]
        mlps = [c for c in cands if c.spec.axis == "mlp"] if (layer, teacher[layer]) in have else []
        out.append([])
        for c in sorted(mixers + [m.with_mlp(f) for f in mlps for m in mixers if m.op != "drop"]):
            def part(table, c=c, layer=layer, get=lambda v: v):
                return compose(lambda x: get(table.get((layer, x))), c, teacher[layer])

            out[-1].append(Choice(layer, c, loss=part(loss), cache_bytes=part(cache) if cache else 0,
                                  latency_ms={w: part(lat, get=lambda v, w=w: v[w]) for w in lat[layer, c.mixer]}))
    return tuple(map(tuple, out))
