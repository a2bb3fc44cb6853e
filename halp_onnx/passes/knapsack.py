"""Pass ``knapsack``: choose one kept width per channel group under a latency budget (HALP solver).

Each :class:`KnapsackItem` is one channel group with its allowed widths (prefix lengths of its
importance-ranked channels), the importance ``value`` kept at each width and the predicted latency
``cost`` (ms) attributable to the group at that width. Costs need not be monotone. A solver picks
exactly one width per group maximising the total value with total cost <= budget.

* :func:`solve_exact`: multiple-choice knapsack DP over a discretised (ceil-rounded, hence
  conservative) cost axis, then a greedy fill on the exact remaining budget.
* :func:`solve_augmented`: HALP's Algorithm 1 (augmented 0/1 knapsack over successive neuron
  groups with a prefix constraint, one solution per cell); approximate by design.
* :func:`brute_force`: exhaustive reference for tests.

Pure numpy.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import HalpError

STAGE = "knapsack"
SOLVERS = ("exact", "augmented")
BRUTE_FORCE_LIMIT = 1_000_000
AUG_AXIS_CAP = 8  # augmented: the latency axis spans at most this many budgets of slack


def _err(message: str) -> HalpError:
    return HalpError(message, stage=STAGE)


def _fmt_pair(a: float, b: float) -> tuple[str, str]:
    """Format two latencies (ms) with the fewest decimals (>= 2) that tell them apart."""
    for digits in range(2, 10):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if sa != sb:
            return sa, sb
    return repr(float(a)), repr(float(b))


@dataclass(frozen=True, eq=False)
class KnapsackItem:
    """One channel group: allowed kept ``widths`` (int64, strictly ascending, last = dense width) with
    the ``value`` (float64, importance kept) and ``cost`` (float64, ms) of each."""

    group: int
    widths: np.ndarray
    value: np.ndarray
    cost: np.ndarray

    def __post_init__(self):
        g = self.group
        if isinstance(g, bool) or not isinstance(g, (int, np.integer)):
            raise _err(f"group id {g!r} is not an integer")
        try:
            widths = np.asarray(self.widths)
            value = np.array(self.value, dtype=np.float64).reshape(-1)
            cost = np.array(self.cost, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise _err(f"group {g}: widths/value/cost are not numeric arrays ({e})") from None
        if widths.ndim != 1 or widths.size == 0:
            raise _err(f"group {g}: widths must be a non-empty 1-D array, got shape {widths.shape}")
        if widths.dtype.kind not in "iu" and not (widths.dtype.kind == "f" and np.all(np.isfinite(widths))
                                                  and np.all(widths == np.round(widths))):
            raise _err(f"group {g}: widths must be integers, got dtype {widths.dtype}")
        widths = np.array(widths, dtype=np.int64)
        if value.size != widths.size or cost.size != widths.size:
            raise _err(f"group {g}: {widths.size} widths but {value.size} values and {cost.size} costs")
        if widths[0] < 0:
            raise _err(f"group {g}: negative width {int(widths[0])}")
        if np.any(np.diff(widths) <= 0):
            raise _err(f"group {g}: widths must be strictly ascending, got {widths.tolist()}")
        if not np.all(np.isfinite(value)):
            raise _err(f"group {g}: non-finite value {value.tolist()}")
        if not np.all(np.isfinite(cost)):
            raise _err(f"group {g}: non-finite cost {cost.tolist()}")
        for name, arr in (("widths", widths), ("value", value), ("cost", cost)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "group", int(g))

    def to_dict(self) -> dict:
        return {"group": self.group, "widths": self.widths.tolist(), "value": self.value.tolist(),
                "cost": self.cost.tolist()}


@dataclass(frozen=True)
class KnapsackSolution:
    """Chosen width per group; ``value``/``cost`` are exact totals of the chosen choices."""

    widths: dict[int, int]
    value: float
    cost: float
    budget: float
    solver: str
    seconds: float
    feasible: bool

    def to_dict(self) -> dict:
        return {"widths": {int(g): int(w) for g, w in self.widths.items()}, "value": float(self.value),
                "cost": float(self.cost), "budget": float(self.budget), "solver": self.solver,
                "seconds": float(self.seconds), "feasible": bool(self.feasible)}


# ------------------------------------------------------------------ helpers


def _check(items: Sequence[KnapsackItem], budget: float) -> tuple[list[KnapsackItem], float]:
    items = list(items)
    seen: set[int] = set()
    for it in items:
        if not isinstance(it, KnapsackItem):
            raise _err(f"expected KnapsackItem, got {type(it).__name__}")
        if it.group in seen:
            raise _err(f"group {it.group} appears more than once")
        seen.add(it.group)
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise _err(f"budget {budget!r} is not a number") from None
    if math.isnan(budget):
        raise _err("budget is NaN")
    return items, budget


def min_cost(items: Sequence[KnapsackItem]) -> float:
    """Smallest achievable total cost (sum of each group's cheapest choice)."""
    return math.fsum(float(it.cost.min()) for it in items)


def _tol(budget: float) -> float:
    return 1e-9 * max(1.0, abs(budget)) if math.isfinite(budget) else 0.0


def _require_feasible(items: list[KnapsackItem], budget: float) -> float:
    lo = min_cost(items)
    if budget < lo - _tol(lo):
        b, m = _fmt_pair(budget, lo)
        raise _err(f"budget {b} ms is below the smallest achievable latency {m} ms")
    return lo


def _solution(items, picks, budget, solver, t0) -> KnapsackSolution:
    widths = {it.group: int(it.widths[k]) for it, k in zip(items, picks)}
    value = math.fsum(float(it.value[k]) for it, k in zip(items, picks))
    cost = math.fsum(float(it.cost[k]) for it, k in zip(items, picks))
    return KnapsackSolution(widths, value, cost, budget, solver, time.perf_counter() - t0,
                            bool(cost <= budget + _tol(budget)))


def _unconstrained(items: list[KnapsackItem], budget: float) -> list[int] | None:
    """Per group the highest-value choice (the widest among ties, else the cheapest) if the total
    fits the budget, else None. With nondecreasing values this keeps every group dense."""
    tops = [np.flatnonzero(it.value == it.value.max()) for it in items]
    for picks in ([int(t[-1]) for t in tops],
                  [int(t[np.argmin(it.cost[t])]) for it, t in zip(items, tops)]):
        if math.fsum(float(it.cost[k]) for it, k in zip(items, picks)) <= budget:
            return picks
    return None


def _discretise(items: list[KnapsackItem], budget: float, lo: float, bins: int, cap: int | None = None) -> list[np.ndarray]:
    """Per group: extra cost above its minimum in steps of ``(budget - lo) / bins``, ceil-rounded so
    rounded totals never undercount. Indices above ``cap`` (default ``bins``) become ``cap + 1``."""
    cap = bins if cap is None else cap
    slack = budget - lo
    step = slack / bins if slack > 0 else 0.0
    out = []
    for it in items:
        extra = it.cost - it.cost.min()
        if step > 0:
            with np.errstate(over="ignore", invalid="ignore"):
                q = np.ceil(extra / step)
                q = np.where(q * step < extra, q + 1, q)  # guard float rounding: q * step >= extra
            idx = np.where(q > cap, cap + 1, q).astype(np.int64)
        else:
            idx = np.where(extra <= 0, 0, cap + 1).astype(np.int64)
        out.append(idx)
    return out


def _check_bins(bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise _err(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


# ------------------------------------------------------------------ exact DP


def _fill(items: list[KnapsackItem], picks: list[int], budget: float) -> list[int]:
    """Greedy polish: repeatedly take the single move to a larger width with the largest value gain
    that still fits the exact remaining budget."""
    G = len(items)
    if G == 0:
        return picks
    K = max(it.widths.size for it in items)
    V = np.full((G, K), -np.inf)
    C = np.full((G, K), np.inf)
    for g, it in enumerate(items):
        V[g, : it.value.size] = it.value
        C[g, : it.cost.size] = it.cost
    cols = np.arange(K)
    rows = np.arange(G)
    p = np.array(picks, dtype=np.int64)
    total = math.fsum(C[rows, p])
    while True:
        gain = V - V[rows, p][:, None]
        dc = C - C[rows, p][:, None]
        ok = (cols[None, :] > p[:, None]) & (gain > 0) & (total + dc <= budget)
        if not ok.any():
            break
        score = np.where(ok, gain, -np.inf)
        best = score.max()
        cand = np.flatnonzero(score.ravel() == best)
        j = int(cand[np.argmin(dc.ravel()[cand])])  # among equal gains: cheapest move
        g, k = divmod(j, K)
        p[g] = k
        total = math.fsum(C[rows, p])
    return p.tolist()


def _prepare(items: Sequence[KnapsackItem], budget: float, bins: int, solver: str, t0: float
             ) -> tuple[list[KnapsackItem], float, int, float, KnapsackSolution | None]:
    """Shared start of both solvers: validated inputs, the smallest cost, and the answer when every
    group's best width already fits (then nothing needs solving)."""
    items, budget = _check(items, budget)
    bins = _check_bins(bins)
    lo = _require_feasible(items, budget)
    top = _unconstrained(items, budget)
    return items, budget, bins, lo, (_solution(items, top, budget, solver, t0) if top is not None else None)


def solve_exact(items: Sequence[KnapsackItem], budget: float, *, bins: int = 4096) -> KnapsackSolution:
    """Multiple-choice knapsack DP on a ceil-discretised cost axis of ``bins`` steps over the slack
    ``budget - min_cost``; optimal on the discretised problem, then greedily filled on the exact
    budget. Raises :class:`HalpError` if ``budget < min_cost(items)``."""
    t0 = time.perf_counter()
    items, budget, bins, lo, done = _prepare(items, budget, bins, "exact", t0)
    if done is not None:
        return done
    idx = _discretise(items, budget, lo, bins)
    n = bins + 1
    # Per group: Pareto frontier of (discretised extra cost, value), cost ascending, value increasing.
    fronts = []
    for it, q in zip(items, idx):
        keep = np.flatnonzero(q <= bins)
        order = keep[np.lexsort((it.cost[keep], -it.value[keep], q[keep]))]
        v = it.value[order]
        prev = np.maximum.accumulate(np.concatenate(([-np.inf], v[:-1])))
        sel = order[v > prev]
        fronts.append((sel, q[sel], it.value[sel]))
    # Forward pass: best[b] = best value with discretised extra cost <= b. Tables kept for backtracking.
    best = np.zeros(n)
    tables = np.empty((len(items), n))
    tmp = np.empty(n)
    for g, (_, c, v) in enumerate(fronts):
        tables[g] = best
        new = best + v[0]  # c[0] == 0: the group's cheapest choice
        for ck, vk in zip(c[1:].tolist(), v[1:].tolist()):
            m = n - ck
            np.add(best[:m], vk, out=tmp[:m])
            np.maximum(new[ck:], tmp[:m], out=new[ck:])
        best = new
    # Backtrack from the full slack: re-derive each group's argmax from the stored table.
    picks = [0] * len(items)
    b = bins
    for g in range(len(items) - 1, -1, -1):
        sel, c, v = fronts[g]
        ok = c <= b
        cand = np.where(ok, tables[g][np.where(ok, b - c, 0)] + v, -np.inf)
        k = int(np.argmax(cand))
        picks[g] = int(sel[k])
        b -= int(c[k])
    picks = _fill(items, picks, budget)
    return _solution(items, picks, budget, "exact", t0)


# ------------------------------------------------------------------ augmented (HALP Algorithm 1)


def solve_augmented(items: Sequence[KnapsackItem], budget: float, *, bins: int = 4096) -> KnapsackSolution:
    """HALP Algorithm 1: 0/1 knapsack over each group's successive steps (width j-1 -> j, value and
    latency deltas, latency possibly zero or negative) on the same ceil-discretised axis as
    :func:`solve_exact`. Every group starts at its smallest width; a cell keeps one solution and
    step j of a group may only be added to a solution already holding step j-1 (ties go to the
    longer prefix). Cells span the budget (or the start's latency, if higher), so a step whose
    prefix exceeds them blocks the rest of its group. Approximate."""
    t0 = time.perf_counter()
    items, budget, bins, lo, done = _prepare(items, budget, bins, "augmented", t0)
    if done is not None:
        return done
    G = len(items)
    # Cells hold solutions with discretised latency <= cell. The axis extends above the budget
    # (up to AUG_AXIS_CAP * bins) when the all-smallest start does not fit.
    cap = AUG_AXIS_CAP * bins
    idx = _discretise(items, budget, lo, bins, cap)
    base = int(sum(int(q[0]) for q in idx))
    hi = min(max(bins, base), cap)
    n = hi + 1
    # Choices beyond the axis get a latency step that never lands on it (nor does anything after them).
    idx = [np.where(q > cap, 4 * n, q) for q in idx]
    # One solution per cell, stored as back-pointers: within group g, ``pos[c]`` is the group's
    # prefix length and ``origin[c]`` the cell (at the start of group g) holding the other groups.
    val = np.full(n, -np.inf)
    if base <= hi:
        val[base:] = math.fsum(float(it.value[0]) for it in items)
    cells = np.arange(n)
    pos_hist = np.empty((G, n), dtype=np.int32)
    origin_hist = np.empty((G, n), dtype=np.int32)
    for g, (it, q) in enumerate(zip(items, idx)):
        pos = np.zeros(n, dtype=np.int32)
        origin = cells.astype(np.int32)
        dv = np.diff(it.value).tolist()
        dc = np.diff(q).tolist()
        for j in range(1, it.widths.size):
            d = dc[j - 1]
            if d >= n:
                continue
            if d >= 0:  # cell c takes from c - d
                dst = slice(d, n)
                src = slice(0, n - d)
            else:  # cell c takes from c + |d|; a cell at the top holds latency <= hi, so clip there
                dst = slice(0, n)
                src = np.minimum(cells - d, hi)
            cand = val[src] + dv[j - 1]
            # ties go to the longer prefix, so zero-importance steps do not block the later ones
            upd = (pos[src] == j - 1) & (cand >= val[dst]) & (cand > -np.inf)
            if not upd.any():
                continue
            new_origin = np.where(upd, origin[src], origin[dst])  # read before any write
            np.copyto(val[dst], cand, where=upd)
            origin[dst] = new_origin
            np.copyto(pos[dst], j, where=upd)
        pos_hist[g] = pos
        origin_hist[g] = origin
    fit = val[: bins + 1]
    if np.isfinite(fit).any():
        c = int(np.argmax(fit))
        picks = [0] * G
        for g in range(G - 1, -1, -1):
            picks[g] = int(pos_hist[g, c])
            c = int(origin_hist[g, c])
    else:  # no in-budget solution reached (start far above the budget): each group's cheapest choice
        picks = [int(np.argmin(it.cost)) for it in items]
    return _solution(items, picks, budget, "augmented", t0)


# ------------------------------------------------------------------ dispatch and reference


def solve(items: Sequence[KnapsackItem], budget: float, *, solver: str = "exact", bins: int = 4096) -> KnapsackSolution:
    """Dispatch to :func:`solve_exact` or :func:`solve_augmented`."""
    if solver == "exact":
        return solve_exact(items, budget, bins=bins)
    if solver == "augmented":
        return solve_augmented(items, budget, bins=bins)
    raise _err(f"solver {solver!r}: expected one of {', '.join(SOLVERS)}")


def brute_force(items: Sequence[KnapsackItem], budget: float) -> KnapsackSolution:
    """Exhaustive optimum (max value, then min cost); refuses more than 1e6 combinations."""
    t0 = time.perf_counter()
    items, budget = _check(items, budget)
    _require_feasible(items, budget)
    combos = math.prod(it.widths.size for it in items)
    if combos > BRUTE_FORCE_LIMIT:
        raise _err(f"brute force over {combos} combinations exceeds the limit of {BRUTE_FORCE_LIMIT}")
    value = np.zeros(())
    cost = np.zeros(())
    for it in items:  # grids over all combinations, one axis per group
        value = np.add.outer(value, it.value)
        cost = np.add.outer(cost, it.cost)
    # float summation order differs from fsum: allow rounding noise only
    ok = np.flatnonzero(cost.ravel() <= budget + 1e-12 * max(1.0, abs(budget)))
    k = ok[np.lexsort((cost.ravel()[ok], -value.ravel()[ok]))[0]]  # max value, then min cost
    best = [int(i) for i in np.unravel_index(k, cost.shape)]
    return _solution(items, best, budget, "brute_force", t0)
