"""Moves around the MIP's plans that keep every budget: pin a few layers, re-solve the others (refine's search space).

A point of the search is a set of pins {layer: candidate}; its plan is the MIP's least-predicted-loss completion of
those pins under the problem's own latency, cache and count rows, re-checked by `solver.verify`. A move changes the
pinned candidate of 1-3 layers (or lets a pin go), so every plan a search evaluates meets every budget exactly, and
an infeasible move is simply skipped. Torch-free: the fitness (true KL) lives in quality/.
"""

from __future__ import annotations

import dataclasses
import random

from ..errors import MosaicError
from ..operators import Candidate
from . import baselines, solver
from .problem import Problem, violations

MAX_PINS_FACTOR = 0.5  # at most this share of the layers pinned: beyond it the MIP has little left to repair


def pinned(p: Problem, pins: dict) -> Problem:
    """`p` with each layer of `pins` ({layer: Candidate}) allowed only its pinned candidate; UsageError-free: a pin
    the layer does not allow is the caller's bug (KeyError)."""
    choices = list(p.choices)
    for layer, cand in pins.items():
        choices[layer] = (p.choice(layer, cand),)
    return dataclasses.replace(p, choices=tuple(choices))


def repair(p: Problem, pins: dict, time_limit_s: float = 60) -> tuple | None:
    """The plan (one Candidate per layer) completing `pins` with the least predicted loss under every budget of
    `p`, re-checked against `p` itself; None when no completion meets them."""
    chosen, info = solver.run_mip(pinned(p, pins), time_limit_s=time_limit_s)
    if chosen is None:
        return None
    return tuple(solver.verify(p, chosen, info["objective"])["layers"])


def predicted_loss(p: Problem, layers) -> float:
    """The additive prediction of a plan: the sum of its layers' single-swap scores (the MIP's objective)."""
    return float(sum(p.choice(layer, c).loss for layer, c in enumerate(layers)))


def mutate(p: Problem, plan, pins: dict, rng: random.Random, max_changed: int = 3) -> dict:
    """New pins near `pins` around `plan`: 1..`max_changed` layers (one most often) each take another allowed
    candidate than the plan has there (pinned), or lose their pin; old pins beyond MAX_PINS_FACTOR of the layers are
    let go, oldest first. A layer's alternatives are drawn by rank of their single-swap score, each half as likely as
    the one before: the scores mislead on interactions, not on which swaps are hopeless. Returns {} only when no
    layer has a choice."""
    free = [layer for layer, cs in enumerate(p.allowed) if len(cs) > 1]
    if not free:
        return {}
    out = dict(pins)
    changed = min(len(free), 1 + sum(rng.random() < 0.4 for _ in range(max_changed - 1)))
    for layer in rng.sample(free, changed):
        if layer in out and rng.random() < 0.25:
            del out[layer]
            continue
        others = sorted((c for c in p.allowed[layer] if c != plan[layer]), key=lambda c: (p.choice(layer, c).loss, c))
        k = 0
        while k < len(others) - 1 and rng.random() < 0.5:
            k += 1
        out.pop(layer, None)  # re-inserted last: the newest pins are kept longest
        out[layer] = others[k]
    limit = max(1, int(MAX_PINS_FACTOR * p.num_layers))
    while len(out) > limit:
        del out[next(iter(out))]
    return out


def seeds(p: Problem, solutions: int, min_distance: int, time_limit_s: float = 60) -> list[tuple[str, tuple]]:
    """The starting plans, each as (origin, layers): the MIP's `solutions` most diverse least-loss plans (each
    differing from the others in >= `min_distance` layers), greedy's and the teacher's where they meet every budget,
    duplicates dropped. Raises InfeasibleError (exit 3) with the reachable speedups when nothing meets them."""
    from ..errors import InfeasibleError

    out, seen = [], []
    for rank in range(1, solutions + 1):
        chosen, info = solver.run_mip(p, avoid=seen, min_distance=min_distance, time_limit_s=time_limit_s)
        if chosen is None:
            if not out:
                raise InfeasibleError(solver.reachability(p, time_limit_s))
            break
        layers = tuple(solver.verify(p, chosen, info["objective"])["layers"])
        seen.append(list(layers))
        out.append((f"mip-{rank}", layers))
    if not p.min_count:
        chosen, _ = baselines.greedy(p)
        if chosen is not None:
            out.append(("greedy", tuple(cs[0] for cs in chosen)))
    teacher = tuple(p.profile.teacher_layers())
    if all(c in p.allowed[layer] for layer, c in enumerate(teacher)) and not violations(p, teacher, 1e-9):
        out.append(("teacher", teacher))
    unique = {}
    for origin, layers in out:
        unique.setdefault(layers, origin)
    return [(origin, layers) for layers, origin in unique.items()]


def plan_record(p: Problem, layers, info: dict):
    """A `mosaic/layer-plan` of `layers` (re-checked by `solver.verify`, as every plan solve writes), its solver
    block `info` plus the re-check's per-layer rows. Raises MosaicError (exit 1) when a rule is broken."""
    if any(c not in p.allowed[layer] for layer, c in enumerate(layers)):
        raise MosaicError("refine check failed: a layer holds a candidate the problem does not allow")
    check = solver.verify(p, [[c] for c in layers])
    return solver._plan(p, check, info)


def parse_pins(pins: dict) -> dict:
    """{layer: Candidate} from a JSON object {"layer": "candidate string"} (a search record's or progress line's)."""
    return {int(layer): Candidate.parse(text) for layer, text in pins.items()}
