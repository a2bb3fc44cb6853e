"""Python API: the same stages the CLI runs."""
from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from .errors import HalpError

from .passes.channel_groups import ChannelAnalysis, analyze
from .passes.load import LoadedModel, load
from .passes.rewrite import RewriteResult, rewrite
from .passes.select import channel_scores, keep_by_ratio
from .passes.verify import VerifyResult, verify

ModelSource = str | os.PathLike | onnx.ModelProto


@dataclass(frozen=True)
class PruneResult:
    model: onnx.ModelProto
    loaded: LoadedModel
    analysis: ChannelAnalysis
    rewrite: RewriteResult
    verification: VerifyResult | None

    def to_dict(self) -> dict:
        return {"source": self.loaded.source, "rewrite": self.rewrite.to_dict(),
                "verification": self.verification.to_dict() if self.verification else None}


def inspect(model: ModelSource, input_shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[LoadedModel, ChannelAnalysis]:
    """Load a model and find its channel groups."""
    loaded = load(model, input_shapes)
    return loaded, analyze(loaded)


def require_prunable(analysis: ChannelAnalysis, source: str) -> None:
    """Refuse a model where nothing can be pruned, naming the first reason."""
    if analysis.prunable:
        return
    first = next((g.reasons[0] for g in analysis.groups if g.reasons), "the model has no channels to prune")
    raise HalpError(f"{source}: nothing can be pruned: every channel group is frozen ({first})", stage="channel-groups")


def prune(model: ModelSource, ratio: float, *, criterion: str = "l2", seed: int = 0,
          input_shapes: dict[str, tuple[int, ...]] | None = None, check: bool = True) -> PruneResult:
    """Remove ``ratio`` of every prunable group's channels, rewrite, and verify (always)."""
    loaded, analysis = inspect(model, input_shapes)
    require_prunable(analysis, loaded.source)
    keep = keep_by_ratio(analysis, channel_scores(loaded, analysis, criterion, seed), ratio)
    result = rewrite(loaded, analysis, keep, check=check)
    verification = verify(loaded, analysis, result.kept, result.model)
    return PruneResult(result.model, loaded, analysis, result, verification)
