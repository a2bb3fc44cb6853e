"""The frozen result types of the TensorRT parsers and drivers (all times in ms)."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from .common import _error

# --------------------------------------------------------------------------------------
# Parsed results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimingStats:
    """One trtexec metric: ``min/max/mean/median`` and percentiles, all in ms.

    ``percentiles_ms`` holds ``(percent, value)`` pairs in the order printed,
    e.g. ``((90.0, 0.50), (95.0, 0.51), (99.0, 0.52))``.
    """

    min_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    median_ms: float | None = None
    percentiles_ms: tuple[tuple[float, float], ...] = ()

    def percentile(self, percent: float) -> float | None:
        """The value printed for ``percent`` (e.g. ``99``), or ``None``."""
        for p, value in self.percentiles_ms:
            if math.isclose(p, percent):
                return value
        return None


@dataclass(frozen=True)
class LayerTiming:
    """Per-layer time from ``--exportProfile`` JSON or a ``--dumpProfile`` table.

    ``time_ms_total`` is summed over all profiled iterations; ``avg_ms`` is per
    iteration.  ``median_ms`` exists from TensorRT 8.4 on; ``percentage`` is the
    layer's share of the summed layer time.
    """

    name: str
    time_ms_total: float
    avg_ms: float
    median_ms: float | None = None
    percentage: float | None = None


@dataclass(frozen=True)
class LayerProfile:
    """A whole per-layer profile: iteration count, layers, and the ``Total`` row if printed."""

    iterations: int | None
    layers: tuple[LayerTiming, ...]
    total: LayerTiming | None = None

    @property
    def total_avg_ms(self) -> float:
        """Per-iteration time of all layers: the ``Total`` row, else the sum of layer averages."""
        if self.total is not None:
            return self.total.avg_ms
        return math.fsum(layer.avg_ms for layer in self.layers)


@dataclass(frozen=True)
class TrtexecSummary:
    """What :func:`parse_trtexec_log` found in one trtexec log.

    ``gpu_compute`` is the kernel time per query (``GPU Compute Time``, 7.x
    ``GPU Compute``); ``latency`` is H2D + compute + D2H (``Latency``, 7.x
    ``Host Latency``); ``end_to_end`` is ``End-to-End Host Latency`` (8.0-8.2) or the
    7.x ``(end to end ...)`` figures.  Fields a version does not print are ``None``.
    ``profile`` holds a ``--dumpProfile`` table when the log has one.
    """

    trt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    precision: str | None = None
    throughput_qps: float | None = None
    gpu_compute: TimingStats | None = None
    latency: TimingStats | None = None
    end_to_end: TimingStats | None = None
    enqueue: TimingStats | None = None
    h2d: TimingStats | None = None
    d2h: TimingStats | None = None
    total_host_walltime_s: float | None = None
    total_gpu_compute_s: float | None = None
    queries: int | None = None
    gpu_compute_cv_percent: float | None = None
    profile: LayerProfile | None = None
    passed: bool | None = None
    warnings: tuple[str, ...] = ()

    @property
    def median_ms(self) -> float | None:
        """Median GPU compute time per query, else median latency, else ``None``."""
        for stats in (self.gpu_compute, self.latency):
            if stats is not None and stats.median_ms is not None:
                return stats.median_ms
        return None


@dataclass(frozen=True)
class TensorInfo:
    """An engine tensor as ``--exportLayerInfo`` (detailed) describes it."""

    name: str
    dims: tuple[int, ...] | None = None
    format: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class LayerInfo:
    """One engine layer.  Without ``--profilingVerbosity=detailed`` only ``name`` is known.

    ``onnx_layers`` lists the ONNX nodes fused into the layer (from ``Metadata``,
    TensorRT 10.x).
    """

    name: str
    layer_type: str | None = None
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    parameter_type: str | None = None
    origin: str | None = None
    tactic_name: str | None = None
    tactic_value: str | None = None
    onnx_layers: tuple[str, ...] = ()

    @property
    def detailed(self) -> bool:
        return self.layer_type is not None


@dataclass(frozen=True)
class EngineInfo:
    """``--exportLayerInfo`` content: the layers and the engine's I/O binding names."""

    layers: tuple[LayerInfo, ...]
    bindings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolygraphyRun:
    """One runner's timing line from ``polygraphy run``."""

    runner: str
    kind: str
    iterations: int | None
    total_ms: float | None
    average_ms: float


@dataclass(frozen=True)
class PolygraphyResult:
    """Timings and facts from one ``polygraphy run`` log."""

    runs: tuple[PolygraphyRun, ...]
    module_versions: tuple[tuple[str, str], ...] = ()
    passed: bool | None = None
    pass_rate_percent: float | None = None
    engine_build_s: float | None = None

    def module_version(self, module: str) -> str | None:
        for name, version in self.module_versions:
            if name == module:
                return version
        return None

    @property
    def trt_version(self) -> str | None:
        return self.module_version("tensorrt")

    def inference_ms(self, kind: str = "trt") -> float:
        """Average inference time of the first runner of ``kind`` (``trt``, ``onnxrt``, ...)."""
        for run in self.runs:
            if run.kind == kind:
                return run.average_ms
        kinds = ", ".join(sorted({run.kind for run in self.runs})) or "none"
        raise _error(f"polygraphy log has no {kind!r} runner timing (runners: {kinds})")


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrtMeasurement:
    """Per-iteration GPU times of one engine, measured with CUDA events around ``execute_async_v3``.

    ``layers`` holds per-layer times from TensorRT's ``IProfiler`` (a separate, profiled run;
    empty unless asked for) and ``engine_info`` what the engine inspector reports (the engine's
    I/O tensor names as ``bindings``).  ``int8_source`` says where an int8 engine's scales came
    from: ``"qdq"`` (the model's Q/DQ nodes), ``"calibration"`` or ``"placeholder"`` (fixed
    ranges: timing only); ``None`` for other precisions.
    """

    samples_ms: tuple[float, ...]
    precision: str
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...]
    trt_version: str
    device: str
    layers: tuple[LayerTiming, ...] = ()
    engine_info: EngineInfo | None = None
    int8_source: str | None = None

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.samples_ms))

    @property
    def mean_ms(self) -> float:
        return float(statistics.fmean(self.samples_ms))

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)


@dataclass(frozen=True)
class TrtexecResult:
    """One ``trtexec`` run: the parsed summary, per-layer profile and the command used."""

    summary: TrtexecSummary
    layers: tuple[LayerTiming, ...]
    command: tuple[str, ...]
    log: str = field(repr=False, default="")

    @property
    def median_ms(self) -> float:
        value = self.summary.median_ms
        if value is None:
            raise _error("trtexec reported no median GPU compute time")
        return value
