"""Baseline pruning criteria the benchmarks compare HALP with.

* **uniform width scaling**: every prunable group keeps the same share of its channels (its
  highest-magnitude ones), the share found by bisection so the predicted latency meets a target;
* **global L1 magnitude**: one global ranking of channels by the L1 norm of all their weights,
  the lowest removed until the model's MACs reach a target (the classic "prune filters by L1").
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from halp_onnx.passes.channel_groups import ChannelAnalysis
from halp_onnx.passes.load import LoadedModel
from halp_onnx.passes.select import group_order, weight_norm_scores

STAGE = "baselines"


def l1_scores(loaded: LoadedModel, analysis: ChannelAnalysis) -> np.ndarray:
    """Per channel: sum of |w| over every weight slice that belongs to it (coupled tensors summed)."""
    return weight_norm_scores(loaded, analysis, 1)


def uniform_keep(analysis: ChannelAnalysis, scores: np.ndarray, share: float, groups) -> dict[int, np.ndarray]:
    """Keep ``share`` of each listed group's channels (at least one), the highest-scoring ones."""
    keep = {}
    for gid in groups:
        size = analysis.groups[gid].size
        n = max(1, int(round(share * size)))
        if n < size:
            keep[gid] = np.sort(group_order(analysis, scores, gid)[:n])
    return keep


def uniform_for_target(analysis: ChannelAnalysis, scores: np.ndarray, groups, cost: Callable[[dict], float],
                       target: float, iters: int = 30) -> tuple[float, dict[int, np.ndarray]]:
    """The largest uniform share whose ``cost(keep)`` is at most ``target`` (bisection)."""
    lo, hi = 0.0, 1.0
    best = uniform_keep(analysis, scores, 0.0, groups)
    for _ in range(iters):
        mid = (lo + hi) / 2
        keep = uniform_keep(analysis, scores, mid, groups)
        if cost(keep) <= target:
            lo, best = mid, keep
        else:
            hi = mid
    return lo, best


def global_keep(analysis: ChannelAnalysis, scores: np.ndarray, groups, removed: int) -> dict[int, np.ndarray]:
    """Remove the ``removed`` lowest-scoring channels over all listed groups (each keeps at least one)."""
    allowed = np.isin(analysis.channel_group, list(groups))
    cand = np.nonzero(allowed)[0]
    order = cand[np.argsort(scores[cand], kind="stable")]
    gone = np.zeros(len(scores), dtype=bool)
    left = {g: analysis.groups[g].size for g in groups}
    count = 0
    for c in order:
        if count >= removed:
            break
        g = int(analysis.channel_group[c])
        if left[g] > 1:
            gone[c] = True
            left[g] -= 1
            count += 1
    keep = {}
    for g in groups:
        members = np.nonzero((analysis.channel_group == g) & ~gone)[0]
        if len(members) < analysis.groups[g].size:
            keep[g] = np.sort(analysis.channel_index[members])
    return keep


def global_for_target(analysis: ChannelAnalysis, scores: np.ndarray, groups, cost: Callable[[dict], float],
                      target: float) -> tuple[int, dict[int, np.ndarray]]:
    """The fewest globally lowest-scoring channels to remove so that ``cost(keep) <= target`` (bisection)."""
    total = int(np.isin(analysis.channel_group, list(groups)).sum())
    lo, hi = 0, total
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(global_keep(analysis, scores, groups, mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo, global_keep(analysis, scores, groups, lo)
