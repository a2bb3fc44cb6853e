"""Pass ``select``: simple channel-selection criteria (the knapsack lives elsewhere).

``channel_scores`` gives one score per global channel; ``keep_by_ratio`` removes the same share of
every prunable group, keeping its highest-scoring channels.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import HalpError
from .channel_groups import ChannelAnalysis
from .load import LoadedModel

STAGE = "select"
CRITERIA = ("l2", "random")


def weight_norm_scores(loaded: LoadedModel, analysis: ChannelAnalysis, p: int = 2) -> np.ndarray:
    """Per channel: the Lp norm (p = 1 or 2) of every weight slice that belongs to it, over the group."""
    consts = loaded.constants
    score = np.zeros(len(analysis.channel_group), dtype=np.float64)
    for name, slices in analysis.init_slices.items():
        value = consts.get(name)
        if value is None or value.dtype.kind != "f":
            continue
        mag = np.abs(value.astype(np.float64)) ** p
        for lab in slices:
            per_pos = mag.sum(axis=tuple(i for i in range(mag.ndim) if i not in lab.axes)) if mag.ndim else mag
            ids = lab.ids.reshape(-1)
            ok = ids >= 0
            np.add.at(score, ids[ok], np.asarray(per_pos).reshape(-1)[ok])
    return score ** (1.0 / p)


def l2_scores(loaded: LoadedModel, analysis: ChannelAnalysis) -> np.ndarray:
    """Per channel: L2 norm of every weight slice that belongs to it, summed over the group."""
    return weight_norm_scores(loaded, analysis, 2)


def channel_scores(loaded: LoadedModel, analysis: ChannelAnalysis, criterion: str = "l2", seed: int = 0) -> np.ndarray:
    if criterion == "l2":
        return l2_scores(loaded, analysis)
    if criterion == "random":
        return np.random.default_rng(seed).random(len(analysis.channel_group))
    raise HalpError(f"--criterion {criterion!r}: expected one of {', '.join(CRITERIA)}", stage=STAGE)


def group_order(analysis: ChannelAnalysis, scores: np.ndarray, gid: int) -> np.ndarray:
    """Channel indices of a group, most important first (stable for ties)."""
    members = np.nonzero(analysis.channel_group == gid)[0]
    members = members[np.argsort(analysis.channel_index[members])]
    return analysis.channel_index[members[np.argsort(-scores[members], kind="stable")]]


def keep_by_ratio(analysis: ChannelAnalysis, scores: np.ndarray, ratio: float, *, held: Iterable[int] = (),
                  round_to: int = 1) -> dict[int, np.ndarray]:
    """Remove ``round(ratio * size)`` channels of every prunable group (at least one channel stays);
    groups in ``held`` stay dense; with ``round_to`` the kept count is rounded up to a multiple of it."""
    if not 0.0 <= ratio < 1.0:
        raise HalpError(f"--ratio {ratio}: expected a share in [0, 1)", stage=STAGE)
    held = set(held)
    keep = {}
    for group in analysis.prunable:
        if group.id in held:
            continue
        n_keep = max(1, group.size - int(round(ratio * group.size)))
        if round_to > 1:
            n_keep = min(group.size, -(-n_keep // round_to) * round_to)
        if n_keep < group.size:
            keep[group.id] = np.sort(group_order(analysis, scores, group.id)[:n_keep])
    return keep
