"""Knapsack rounds: solve for a latency budget with every block's other side priced at the last solution.

A block's latency depends on both its widths, so the per-group knapsack (:mod:`.knapsack`) is re-solved
with the neighbours' widths updated, and the budget handed to it is searched so that the whole-model
prediction lands just under the real budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..ops.table import ANCHOR_OPS, SPATIAL_ANCHOR_OPS
from .channel_groups import ChannelAnalysis
from .knapsack import KnapsackItem, solve
from .latency_cost import CostModel, group_costs, shadowed_values, total_latency

SOLVERS = ("exact", "augmented")


@dataclass(frozen=True)
class Round:
    index: int
    budget_ms: float  # what the knapsack was given (corrected between rounds)
    predicted_ms: float  # whole model at the solution's widths
    value: float
    changed_groups: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _SolveState:
    """What :func:`solve_rounds` carries between evaluations: the last widths, the last knapsack
    instance (items and the budget it was given) and the time spent in the solver."""

    widths: dict[int, int]
    items: list[KnapsackItem] = field(default_factory=list)
    avail: float = 0.0
    solve_s: float = 0.0


def first_layer_groups(analysis: ChannelAnalysis, blocks) -> dict[int, str]:
    """Groups fed by the first convolution when it is the first GEMM-like block (the stem of a CNN or a
    ViT's patch embedding): kept dense by default. A model that starts with a matrix product (an
    embedding, then attention) has no stem."""
    for b in blocks:
        if b.signature.op in ANCHOR_OPS:
            lab = analysis.labels.get(b.out_tensor)
            if lab is None or b.signature.op not in SPATIAL_ANCHOR_OPS:
                return {}
            ids = lab.ids[lab.ids >= 0]
            return {int(g): f"output of the first layer {b.node} (kept by default; --prune-first to allow)"
                    for g in np.unique(analysis.channel_group[ids])}
    return {}


def solve_rounds(cm: CostModel, values: dict[int, np.ndarray], block_ms: Callable, overhead_ms: float,
                 budget_ms: float, *, solver: str = "exact", max_evals: int = 24, tol: float = 0.005,
                 start: dict[int, int] | None = None, compare: bool = True, fill: bool = True
                 ) -> tuple[dict[int, int], list[Round], dict[str, Any]]:
    """Solve for the budget with every block's other side priced at the last solution's widths.

    A block's latency depends on both of its widths, so the knapsack (which prices one group at a
    time) is re-solved with the neighbours' widths updated; the budget handed to the knapsack is then
    searched (bracketing + bisection) so that the whole-model prediction at the solution's widths lands
    just under the real budget. The most valuable solution whose prediction fits is kept. ``start``:
    the widths the first solve prices neighbours at (default dense). ``fill``: where that solution
    leaves more than ``tol`` of the budget unspent (the knapsack prices neighbours at the last widths,
    and removals move the total in jumps), groups are widened one step at a time, the most value per
    millisecond first, while the whole-model prediction fits (:func:`_fill`)."""
    state = _SolveState(dict(start) if start is not None else {g: ch.widths[-1] for g, ch in cm.choices.items()})
    rounds: list[Round] = []
    best: list = []  # [value, pred, widths]
    index = {g: {w: j for j, w in enumerate(ch.widths)} for g, ch in cm.choices.items()}

    def score(widths: dict[int, int]) -> tuple[float, float]:
        """(prediction, value) of a solution; the value of groups gone with a removal does not count."""
        gone = cm.gone_with_removals(widths)
        pred = total_latency(cm, widths, block_ms, overhead_ms)
        return pred, float(sum(values[g][index[g][w]] for g, w in widths.items() if g not in gone))

    def consider(widths: dict[int, int], pred: float, value: float) -> None:
        if pred <= budget_ms * (1 + 1e-9) and (not best or value > best[0] + 1e-12):
            best[:] = [value, pred, dict(widths)]

    def evaluate(internal: float) -> float:
        widths = state.widths
        changed = 0
        for _ in range(3):  # settle the neighbours' widths at this knapsack budget
            per_group, const = group_costs(cm, widths, block_ms)
            charged = shadowed_values(cm, values, widths)
            items = [KnapsackItem(g, np.asarray(ch.widths), charged[g], per_group[g])
                     for g, ch in cm.choices.items()]
            floor = sum(float(c.min()) for c in per_group.values())
            avail = max(internal - const - overhead_ms, floor)
            sol = solve(items, avail, solver=solver)
            state.solve_s += sol.seconds
            state.items, state.avail = items, avail
            new = {g: int(w) for g, w in sol.widths.items()}
            changed = sum(1 for g in new if new[g] != widths[g])
            widths = new
            if not changed:
                break
            if cm.shadow:  # removals make the rounds alternate: every settled step is a candidate
                consider(widths, *score(widths))
        state.widths = widths
        pred, value = score(widths)
        rounds.append(Round(len(rounds), internal, pred, value, changed))
        consider(widths, pred, value)
        return pred

    lo = hi = None
    b = budget_ms
    while len(rounds) < max_evals:
        pred = evaluate(b)
        if pred <= budget_ms:
            lo = b
            if pred >= budget_ms * (1 - tol):
                break
        else:
            hi = b
        if lo is not None and hi is not None:
            b = (lo + hi) / 2
        elif lo is not None:  # still under the budget: hand the knapsack more
            b = lo * min(2.0, max(1.02, budget_ms / max(pred, 1e-12)))
        else:  # over: hand it less
            if hi is None:  # unreachable: lo is None, so this evaluation was over the budget and set hi
                raise TypeError("no bracket on the knapsack budget")
            b = hi * max(0.5, min(0.98, budget_ms / max(pred, 1e-12)))
        if lo is not None and hi is not None and hi - lo <= 1e-4 * budget_ms:
            break
    if not best:  # fall back to each group's smallest width, feasible by construction
        w = {g: ch.widths[0] for g, ch in cm.choices.items()}
        best[:] = [float(sum(values[g][0] for g in cm.choices)), total_latency(cm, w, block_ms, overhead_ms), w]
    filled = 0
    if fill and best[1] < budget_ms * (1 - tol):
        best[2], best[1], best[0], filled = _fill(cm, best[2], score, index, budget_ms)
    items, avail = state.items, state.avail  # items empty until the first knapsack solve
    stats: dict[str, Any] = {"solver": solver, "rounds": len(rounds), "solve_seconds": round(state.solve_s, 4),
                             "items": len(items), "choices": int(sum(len(it.widths) for it in items)),
                             "filled_steps": filled}
    if items and compare:  # both solvers on the last instance: the exact one must not lose
        ex = solve(items, avail, solver="exact")
        au = solve(items, avail, solver="augmented")
        stats.update({"exact_value": ex.value, "augmented_value": au.value, "exact_seconds": ex.seconds,
                      "augmented_seconds": au.seconds})
    return best[2], rounds, stats


def _fill(cm: CostModel, widths: dict[int, int], score: Callable, index: dict[int, dict[int, int]],
          budget_ms: float, *, max_steps: int = 256) -> tuple[dict[int, int], float, float, int]:
    """Spend what a solution leaves of the budget: widen the group whose next allowed width adds the
    most value per millisecond of whole-model prediction (``score(widths) -> (ms, value)``), as long as
    the prediction fits. Returns (widths, ms, value, steps taken)."""
    cur = dict(widths)
    pred, val = score(cur)
    steps = 0
    while steps < max_steps:
        pick = None
        for g, ch in cm.choices.items():
            j = index[g][cur[g]]
            if j + 1 >= len(ch.widths):
                continue
            trial = {**cur, g: ch.widths[j + 1]}
            p, v = score(trial)
            if p > budget_ms * (1 + 1e-9) or v <= val + 1e-12:
                continue
            gain = (v - val) / max(p - pred, 1e-12)
            if pick is None or gain > pick[0]:
                pick = (gain, trial, p, v)
        if pick is None:
            break
        _, cur, pred, val = pick
        steps += 1
    return cur, pred, val, steps
