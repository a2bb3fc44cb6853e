"""The pipeline: one runner, the stages in one order, one configuration type.

    from halp_onnx.pipeline import PIPELINE, PipelineConfig
    run = PIPELINE.run(PipelineConfig("model.onnx", mode="ratio", ratio=0.3), until="channel-groups")
    run["analysis"].groups          # inspect any stage's (frozen) result

``prune``, ``compile``, ``compile --iterative``, the Python API and the CLI are configurations of it.
"""
from .config import PipelineConfig
from .results import BudgetPlan, Guards, Measurement, Selection, TargetLatency
from .runner import Pipeline, PipelineRun, Stage, StageFailure
from .stages import PIPELINE, require_prunable

__all__ = ["PIPELINE", "BudgetPlan", "Guards", "Measurement", "Pipeline", "PipelineConfig", "PipelineRun", "Selection", "Stage",
           "StageFailure", "TargetLatency", "require_prunable"]
