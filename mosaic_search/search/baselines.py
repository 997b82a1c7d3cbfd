"""Heuristics on the solver's own problem: the greedy and fixed-pattern baselines, and the MIP's warm start."""

from __future__ import annotations

import time

from ..errors import InfeasibleError, UsageError
from ..operators import REGISTRY, from_symbol
from .problem import Problem, matches, violations

_EPS = 1e-9  # stricter than the solver's re-check (1e-6), so a plan a baseline calls "met" always verifies


def _resources(p: Problem) -> list:
    """(usage of one Choice, limit, scale) for every budget; scale makes them commensurable."""
    out = [(lambda ch, w=w: ch.latency_ms[w], p.budget(w), p.profile.teacher_ms(w) / p.targets[w]) for w in p.targets]
    if p.cache_limit is not None:
        out.append((lambda ch: ch.cache_bytes, p.cache_limit, p.cache_limit))
    if p.memory_limit is not None:
        out.append((lambda ch: p.memory[ch.layer, ch.candidate], p.memory_limit, p.memory_limit))
    out += [(lambda ch, s=spec: float(matches(s, ch.candidate)), float(n), 1.0) for spec, n in p.max_count]
    # operators.unbuildable, as -count <= -1
    out.append((lambda ch: -float(ch.candidate.spec.counts_tokens), -1.0, 1.0))
    return out


def _excess(usage, resources) -> float:
    return sum(max(0.0, u - lim - _EPS * max(1.0, abs(lim))) / max(sc, 1e-12)
               for u, (_, lim, sc) in zip(usage, resources))


def greedy(p: Problem):
    """Cheapest loss per saved millisecond first: from the least-loss plan, swap until every budget holds.

    Each step takes the single-layer swap with the smallest (loss added) / (budget excess removed), where
    the excess of each budget is measured as a fraction of it, so several workloads share one currency.
    Returns (one-candidate list per layer, info), or (None, info) when no swap shrinks the excess any more.
    Raises UsageError for min counts, which it cannot honour.
    """
    if p.min_count:
        raise UsageError("the greedy strategy does not support min counts; use the mip strategy")
    start = time.perf_counter()
    res = _resources(p)
    cur = [min(cs, key=lambda ch: (ch.loss, sum(ch.latency_ms.values()), ch.candidate)) for cs in p.choices]
    usage = [sum(f(ch) for ch in cur) for f, _, _ in res]
    steps = 0
    info = {"name": "greedy", "status": "budgets met", "mip_gap": None}
    while (excess := _excess(usage, res)) > 0:
        best = None
        for l, cs in enumerate(p.choices):
            was = cur[l]
            for ch in cs:
                if ch.candidate == was.candidate:
                    continue
                moved = [u + f(ch) - f(was) for u, (f, _, _) in zip(usage, res)]
                gain = excess - _excess(moved, res)
                if gain <= 1e-15:
                    continue  # every step must shrink the excess, so the loop ends
                key = ((ch.loss - was.loss) / gain, l, ch.candidate)
                if best is None or key < best[0]:
                    best = (key, ch, moved)
        if best is None:
            return None, {**info, "status": "stalled", "steps": steps}
        _, ch, usage = best
        cur[ch.layer] = ch
        steps += 1
    info.update(seconds=round(time.perf_counter() - start, 6), steps=steps,
                objective=float(sum(ch.loss for ch in cur)))
    return [[ch.candidate] for ch in cur], info


def pattern(p: Problem, symbols: str):
    """A fixed interleave such as 'DDDG' (3 GDN : 1 GQA) tiled over the layers; pins override its layers.

    An op with params (swa, mla) takes ONE param choice for all its layers, as the hand-designed hybrids
    do: the candidate allowed at every such layer with the lowest total loss there (then lowest latency).
    Fails with exit 3 if the result misses a given target; with no target it just reports its cost.
    """
    start = time.perf_counter()
    symbols = symbols.strip()
    if not symbols:
        known = ", ".join(f"{s.symbol}={s.name}" for s in REGISTRY.values())
        raise UsageError(f"pattern: give one symbol per layer to tile, e.g. pattern:DDDG (known: {known})")
    if len(symbols) > p.num_layers:
        raise UsageError(f"pattern {symbols}: {len(symbols)} symbols for a model of {p.num_layers} layers")
    ops = [from_symbol(symbols[l % len(symbols)]).name for l in range(p.num_layers)]
    pinned = {int(k) for k in (p.given.get("pins") or {})}
    layers = [None] * p.num_layers
    for l in pinned:
        layers[l] = min(p.choices[l], key=lambda ch: (ch.loss, ch.candidate)).candidate
    for op in dict.fromkeys(ops):
        at = [l for l in range(p.num_layers) if ops[l] == op and l not in pinned]
        if not at:
            continue
        common = set.intersection(*({c for c in p.allowed[l] if c.op == op} for l in at))
        if not common:
            bad = next((l for l in at if not any(c.op == op for c in p.allowed[l])), at[0])
            raise UsageError(f"pattern {symbols}: no single {op} candidate is allowed at every layer it takes "
                             f"(e.g. layer {bad}: profiled ok on every workload, scored, and in ops)")
        pick = min(common, key=lambda c: (sum(p.choice(l, c).loss for l in at),
                                          sum(sum(p.choice(l, c).latency_ms.values()) for l in at), c))
        for l in at:
            layers[l] = pick
    missed = violations(p, layers, _EPS)
    if missed:
        raise InfeasibleError(f"pattern {symbols} misses the constraints: {', '.join(missed)}")
    info = {"name": "pattern", "status": "evaluated", "pattern": symbols, "mip_gap": None,
            "seconds": round(time.perf_counter() - start, 6),
            "objective": float(sum(p.choice(l, c).loss for l, c in enumerate(layers)))}
    return [[c] for c in layers], info


def incumbent(xv, cost, A, b, layer):
    """A feasible assignment near the LP optimum: round, repair, then improving 1- and 2-layer swaps.

    Only a warm start for HiGHS and a bound for fixing columns: it decides nothing about the answer.
    """
    import numpy as np

    tol = 1e-9 * np.maximum(1.0, np.abs(b))[:, None]
    cur = np.array([np.flatnonzero(layer == l)[np.argmax(xv[layer == l])] for l in range(layer.max() + 1)])
    scale = np.maximum(1.0, np.abs(b))[:, None]
    for _ in range(4 * len(cur)):
        use = A[:, cur].sum(axis=1)[:, None]
        if np.all(use <= b[:, None] + tol):
            break
        moved = use + A - A[:, cur[layer]]  # each column swapped in for its layer's current choice
        gain = (np.maximum(0, use - b[:, None]) / scale).sum() - (np.maximum(0, moved - b[:, None]) / scale).sum(0)
        ratio = np.where(gain > 1e-12, (cost - cost[cur[layer]]) / np.maximum(gain, 1e-300), np.inf)
        if not np.isfinite(ratio.min()):
            return None
        j = int(np.argmin(ratio))
        cur[layer[j]] = j
    else:
        return None
    pairs = A.shape[1] ** 2 * max(1, len(b)) <= 4_000_000  # 2-swaps cost memory quadratic in columns
    for _ in range(200):
        use = A[:, cur].sum(axis=1)
        d_cost, d_use = cost - cost[cur[layer]], A - A[:, cur[layer]]
        one = np.where(np.all(use[:, None] + d_use <= b[:, None] + tol, 0) & (d_cost < -1e-12), d_cost, np.inf)
        best, move = one.min(), [int(one.argmin())]
        if pairs:
            two_use = use[:, None, None] + d_use[:, :, None] + d_use[:, None, :]
            ok = np.all(two_use <= (b[:, None] + tol)[:, :, None], 0) & (layer[:, None] != layer[None, :])
            two = np.where(ok, d_cost[:, None] + d_cost[None, :], np.inf)
            if two.min() < best - 1e-12:
                best, move = two.min(), list(divmod(int(two.argmin()), len(cost)))
        if not best < -1e-12:
            return cur
        for j in move:
            cur[layer[j]] = j
    return cur
