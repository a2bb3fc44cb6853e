"""The frozen results the stages hand on (beyond the passes' own: LoadedModel, ChannelAnalysis,
Importance, RewriteResult, VerifyResult). Each has ``to_dict`` for reports."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..budget import ResolvedBudget
from ..passes.channel_groups import ChannelAnalysis
from ..passes.latency_cost import CostModel
from ..passes.load import LoadedModel
from ..passes.rewrite import RewriteResult
from ..passes.solve import Round


@dataclass(frozen=True)
class TargetLatency:
    """The ``latency-model`` stage: the target, the model's timed blocks, and their latency model."""

    target: Any  # profiles.targets.Target
    blocks: tuple  # profiles.blocks.Block
    model: Any  # profiles.latency.LatencyModel
    profile: Any  # profiles.latency.ProfileRun

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(self.profile.warnings)

    def to_dict(self) -> dict:
        return {"target": self.target.name, "label": self.model.label, "blocks": len(self.blocks),
                "profile": self.profile.to_dict()}


@dataclass(frozen=True)
class BudgetPlan:
    """The ``budget`` stage: per-group width choices and costs, the resolved budget, dense and smallest latency."""

    cost: CostModel
    held: dict[int, str]  # prunable groups held dense, with why
    budget: ResolvedBudget
    dense: dict[int, int]
    min_ms: float
    block_ms: Callable[..., float]  # cached (signature, c_in, c_out) -> ms
    overhead_ms: float

    @property
    def dense_ms(self) -> float:
        return self.budget.dense_ms

    def to_dict(self) -> dict:
        return {**self.budget.to_dict(), "min_ms": self.min_ms, "groups": len(self.cost.choices),
                "choices": int(sum(len(c.widths) for c in self.cost.choices.values())),
                "held_dense": {str(g): why for g, why in self.held.items()}}


@dataclass(frozen=True)
class Selection:
    """The ``select`` stage: the channels each group keeps (global channel indices within the group).

    ``base``: the (loaded, analysis) the selection applies to when it is not the input model's (the
    fine-tuned graph of iterative HALP)."""

    keep: dict[int, np.ndarray]
    method: str  # "ratio" | "knapsack" | "iterative"
    widths: dict[int, int] | None = None
    rounds: tuple[Round, ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)
    orders: dict[int, np.ndarray] | None = None
    values: dict[int, np.ndarray] | None = None
    base: tuple[LoadedModel, ChannelAnalysis] | None = None
    extra: Any = None  # iterative: (IterativeHistory, FinetuneResult)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"method": self.method, "groups_pruned": len(self.keep),
                               "kept": {str(g): int(len(k)) for g, k in self.keep.items()}}
        if self.widths is not None:
            out["widths"] = {str(g): int(w) for g, w in self.widths.items()}
        if self.stats:
            out["solver"] = self.stats
        if self.rounds:
            out["rounds"] = [r.to_dict() for r in self.rounds]
        return out


@dataclass(frozen=True)
class Measurement:
    """The ``measure`` stage (closed loop): the chosen model timed against the dense one on the target
    (``ms`` = ``ratio`` x ``dense_ms``), and the candidate the loop picked (its selection and rewrite
    replace the first ones)."""

    dense_ms: float
    ms: float
    budget: ResolvedBudget  # with the measured dense latency
    calibration: tuple[dict, ...]
    selection: Selection
    rewrite: RewriteResult
    ratio: float = float("nan")  # measured pruned / dense: the median of per-round ratios, paired in one process
    paired: dict = field(default_factory=dict)  # the chosen candidate's PairedTiming

    def to_dict(self) -> dict:
        return {"dense_measured_ms": self.dense_ms, "measured_ms": self.ms, "measured_ratio": self.ratio,
                "target_measured_ms": self.budget.target_measured_ms, "paired": self.paired,
                "calibration": list(self.calibration)}


@dataclass(frozen=True)
class Guards:
    """The ``guard`` stage: warnings a user should read before shipping the result."""

    warnings: tuple[str, ...]
    removed_groups: tuple[int, ...]
    params_kept: float  # share of the parameters kept

    def to_dict(self) -> dict:
        return {"warnings": list(self.warnings), "removed_groups": list(self.removed_groups),
                "params_kept": self.params_kept}
