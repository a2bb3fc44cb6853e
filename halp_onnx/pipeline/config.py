"""What a pipeline run is asked to do: one frozen configuration for prune, compile and iterative compile."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import onnx

from ..budget import LatencyBudget
from ..errors import HalpError

ModelSource = str | os.PathLike | onnx.ModelProto
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOLVERS = ("exact", "augmented")


@dataclass(frozen=True)
class PipelineConfig:
    """One run's settings. ``mode``: ``"ratio"`` (prune a share of every group), ``"budget"`` (HALP
    one-shot: knapsack within a latency budget), ``"iterative"`` (HALP while fine-tuning)."""

    source: ModelSource
    mode: str = "budget"
    input_shapes: dict[str, tuple[int, ...]] | None = None
    # ratio mode
    ratio: float = 0.0
    criterion: str = "l2"
    seed: int = 0
    # budget / iterative mode: target and budget
    target: str | None = None
    latency: LatencyBudget | None = None
    threads: int = 1
    measure: bool | None = None  # profile on demand (None: where the target runs here)
    profile_path: str | os.PathLike | None = None
    progress: bool = False
    # importance
    calib: Any = None
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    size: int | tuple[int, int] | None = None
    calib_samples: int = 2000
    calib_batch: int = 32
    device: str = "cpu"
    importance: Any = None  # a precomputed Importance
    # knapsack
    solver: str = "exact"
    min_keep: float = 0.1
    allow_removal: bool = True
    prune_first: bool = False
    # guards: groups kept dense by node name / pattern, channel multiples, what a result may remove
    exclude: tuple[str, ...] = ()
    round_to: int = 1
    min_params: float = 0.25  # warn when fewer parameters than this share are kept
    strict: bool = False  # refuse a result that a guard warns about (a removed branch, too few parameters)
    # closed loop (budget mode, measurable targets)
    measure_result: bool = True
    calibrate: int = 3
    calibrate_tol: float = 0.03
    # rewrite / verify / repair (statistics of the pruned model matched to the dense one on --calib data)
    check: bool = True
    repair: bool | None = None  # None: on when calibration data is given
    reconstruct: bool = True  # within repair: least-squares refit of the disturbed layers first (passes.reconstruct)
    descent: bool = True  # within repair, after the refit: block-wise descent (passes.descent; needs torch)
    # iterative mode: the torch bridge's settings, whose select(config, results) trains while pruning
    # (halp_onnx.torch.halp.IterativeSettings)
    iterative: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.round_to < 1:
            raise HalpError(f"--round-to {self.round_to}: expected a positive channel multiple", stage="pipeline")
        if not 0 <= self.min_params < 1:
            raise HalpError(f"--min-params {self.min_params}: expected a share in [0, 1)", stage="pipeline")
        if self.mode not in ("ratio", "budget", "iterative"):
            raise HalpError(f"mode {self.mode!r}: expected ratio, budget or iterative", stage="pipeline")
        if self.mode != "ratio":
            if self.target is None or self.latency is None:
                raise HalpError(f"mode {self.mode}: needs a target and a latency budget", stage="pipeline")
            if self.solver not in SOLVERS:
                raise HalpError(f"--solver {self.solver!r}: expected one of {', '.join(SOLVERS)}", stage="compile")
            if not 0 <= self.min_keep < 1:
                raise HalpError(f"--min-keep {self.min_keep}: expected a share in [0, 1)", stage="compile")

    @property
    def uses_target(self) -> bool:
        return self.mode in ("budget", "iterative")
