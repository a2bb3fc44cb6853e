"""Python API: ``inspect``, ``prune`` and ``compile``, each a configuration of the pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import onnx

from .errors import HalpError
from .passes.channel_groups import ChannelAnalysis
from .passes.load import LoadedModel
from .passes.rewrite import RewriteResult
from .passes.verify import VerifyResult
from .pipeline import PIPELINE, PipelineConfig, PipelineRun, require_prunable
from .pipeline.config import IMAGENET_MEAN, IMAGENET_STD, ModelSource

__all__ = ["PruneResult", "inspect", "prune", "prune_result", "require_prunable"]


@dataclass(frozen=True)
class PruneResult:
    model: onnx.ModelProto
    loaded: LoadedModel
    analysis: ChannelAnalysis
    rewrite: RewriteResult
    verification: VerifyResult | None
    seconds: dict[str, float] | None = None
    warnings: tuple[str, ...] = ()
    repair: dict | None = None  # the repair stage's summary (None: no calibration data or repair=False)

    def to_dict(self) -> dict:
        return {"source": self.loaded.source, "rewrite": self.rewrite.to_dict(),
                "verification": self.verification.to_dict() if self.verification else None,
                "repair": self.repair}


def inspect(model: ModelSource, input_shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[LoadedModel, ChannelAnalysis]:
    """Load a model and find its channel groups (the pipeline up to ``channel-groups``, without refusing
    a model that has nothing to prune)."""
    from .passes.channel_groups import analyze

    run = PIPELINE.run(PipelineConfig(model, mode="ratio", input_shapes=input_shapes), until="load")
    return run["loaded"], analyze(run["loaded"])


def prune(model: ModelSource, ratio: float, *, criterion: str = "l2", seed: int = 0,
          input_shapes: dict[str, tuple[int, ...]] | None = None, check: bool = True,
          on_stage: Callable[[str, float], None] | None = None, exclude: Sequence[str] = (), round_to: int = 1,
          min_params: float = 0.25, strict: bool = False, calib: Any = None,
          mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
          size: int | tuple[int, int] | None = None, calib_samples: int = 2000,
          repair: bool | None = None, reconstruct: bool = True, descent: bool = True) -> PruneResult:
    """Remove ``ratio`` of every prunable group's channels, rewrite, and verify (always).
    ``on_stage(name, seconds)`` is called as each pipeline stage ends; the guards as in ``compile``.
    With ``calib`` (calibration images or input arrays, as ``compile`` takes them) the verified model's
    disturbed layers are refitted by least squares (passes.reconstruct; ``reconstruct=False`` skips it), trained
    block by block towards the dense model (passes.descent, with torch; ``descent=False`` skips it) and
    per-channel statistics matched to the dense model's (passes.repair; ``repair=False`` skips both); the
    repaired model is ``model``."""
    if repair and calib is None:
        raise HalpError("repair needs calibration data (calib=...)", stage="prune")
    cfg = PipelineConfig(model, mode="ratio", ratio=ratio, criterion=criterion, seed=seed, input_shapes=input_shapes,
                         check=check, exclude=tuple(exclude), round_to=round_to, min_params=min_params,
                         strict=strict, calib=calib, mean=mean, std=std, size=size, calib_samples=calib_samples,
                         repair=repair, reconstruct=reconstruct, descent=descent)
    return prune_result(PIPELINE.run(cfg, on_stage=on_stage))


def prune_result(run: PipelineRun) -> PruneResult:
    guards = run.get("guards")
    repaired = run.get("repaired")
    from .passes.descent import with_block_ends

    model = with_block_ends(run["loaded"], run["analysis"], run["rewritten"].kept,
                            repaired.model if repaired is not None else run["rewritten"].model,
                            run["rewritten"].macs[1])
    return PruneResult(model, run["loaded"],
                       run["analysis"], run["rewritten"], run["verification"], dict(run.seconds),
                       tuple(guards.warnings) if guards is not None else (),
                       repaired.to_dict() if repaired is not None else None)
