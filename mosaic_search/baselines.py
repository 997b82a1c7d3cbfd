"""Heuristics on the solver's own tables: the greedy and fixed-pattern baselines, and the MIP's warm start."""

from __future__ import annotations

import time

from .errors import InfeasibleError, UsageError
from .operators import REGISTRY, from_symbol, unbuildable
from .solver import Problem, matches, reachability

_EPS = 1e-9  # stricter than the solver's re-check (1e-6), so a plan a baseline calls "met" always verifies


def _resources(p: Problem) -> list:
    """(usage of one (layer, candidate), limit, scale) for every budget; scale makes them commensurable."""
    out = [(lambda k, w=w: p.lat[k][w], p.budget(w), p.profile.teacher_ms(w) / p.targets[w]) for w in p.targets]
    if p.cache_limit is not None:
        out.append((lambda k: p.cache[k], p.cache_limit, p.cache_limit))
    out += [(lambda k, s=spec: float(matches(s, k[1])), float(n), 1.0) for spec, n in p.max_count]
    out.append((lambda k: -float(k[1].spec.counts_tokens), -1.0, 1.0))  # operators.unbuildable, as -count <= -1
    return out


def _excess(usage, resources) -> float:
    return sum(max(0.0, u - lim - _EPS * max(1.0, abs(lim))) / max(sc, 1e-12)
               for u, (_, lim, sc) in zip(usage, resources))


def greedy(p: Problem):
    """Cheapest loss per saved millisecond first: from the least-loss plan, swap until every budget holds.

    Each step takes the single-layer swap with the smallest (loss added) / (budget excess removed), where
    the excess of each budget is measured as a fraction of it, so several workloads share one currency.
    """
    if p.min_count:
        raise UsageError("the greedy strategy does not support min counts; use the mip strategy")
    start = time.perf_counter()
    res = _resources(p)
    cur = [min(cs, key=lambda c, l=l: (p.loss[l, c], sum(p.lat[l, c].values()), c)) for l, cs in enumerate(p.allowed)]
    usage = [sum(f((l, c)) for l, c in enumerate(cur)) for f, _, _ in res]
    steps = 0
    while (excess := _excess(usage, res)) > 0:
        best = None
        for l, cs in enumerate(p.allowed):
            was = (l, cur[l])
            for c in cs:
                if c == cur[l]:
                    continue
                moved = [u + f((l, c)) - f(was) for u, (f, _, _) in zip(usage, res)]
                gain = excess - _excess(moved, res)
                if gain <= 1e-15:
                    continue  # every step must shrink the excess, so the loop ends
                key = ((p.loss[l, c] - p.loss[was]) / gain, l, c)
                if best is None or key < best[0]:
                    best = (key, l, c, moved)
        if best is None:
            raise InfeasibleError(f"greedy stalled before meeting every budget; {reachability(p)}")
        _, l, c, usage = best
        cur[l] = c
        steps += 1
    info = {"name": "greedy", "status": "budgets met", "seconds": round(time.perf_counter() - start, 6),
            "mip_gap": None, "steps": steps, "objective": float(sum(p.loss[l, c] for l, c in enumerate(cur)))}
    return [[c] for c in cur], info


def _shortfalls(p: Problem, layers) -> list[str]:
    out = []
    for w, target in p.targets.items():
        ms = p.profile.fixed_ms[w] + sum(p.lat[l, c][w] for l, c in enumerate(layers))
        teacher = p.profile.teacher_ms(w)
        got = teacher / ms if ms > 0 else float("inf")
        if ms > teacher / target * (1 + _EPS):
            out.append(f"{w} reaches {got:.3f}x (target {target:.3f}x)")
    if p.cache_limit is not None:
        cache = sum(p.cache[l, c] for l, c in enumerate(layers))
        if cache > p.cache_limit:
            out.append(f"cache {cache} bytes (bound {p.cache_limit:.0f})")
    for specs, sense in ((p.min_count, 1), (p.max_count, -1)):
        for spec, n in specs:
            count = sum(matches(spec, c) for c in layers)
            if (count - n) * sense < 0:
                out.append(f"{count} layers of {spec} ({'min' if sense > 0 else 'max'} {n})")
    if why := unbuildable(layers):
        out.append(why)
    return out


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
        layers[l] = min(p.allowed[l], key=lambda c, l=l: (p.loss[l, c], c))
    for op in dict.fromkeys(ops):
        at = [l for l in range(p.num_layers) if ops[l] == op and l not in pinned]
        if not at:
            continue
        common = set.intersection(*({c for c in p.allowed[l] if c.op == op} for l in at))
        if not common:
            bad = next((l for l in at if not any(c.op == op for c in p.allowed[l])), at[0])
            raise UsageError(f"pattern {symbols}: no single {op} candidate is allowed at every layer it takes "
                             f"(e.g. layer {bad}: profiled ok on every workload, scored, and in ops)")
        pick = min(common, key=lambda c: (sum(p.loss[l, c] for l in at), sum(sum(p.lat[l, c].values()) for l in at), c))
        for l in at:
            layers[l] = pick
    missed = _shortfalls(p, layers)
    if missed:
        raise InfeasibleError(f"pattern {symbols} misses the constraints: {', '.join(missed)}")
    info = {"name": "pattern", "status": "evaluated", "pattern": symbols, "mip_gap": None,
            "seconds": round(time.perf_counter() - start, 6),
            "objective": float(sum(p.loss[l, c] for l, c in enumerate(layers)))}
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
