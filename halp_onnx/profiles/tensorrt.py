"""TensorRT backend for hardware profiles: output parsers and engine timing.

Two halves:

* **Parsers** for what TensorRT tools print or write, TensorRT 7.2 to 10.x:
  ``trtexec`` logs (:func:`parse_trtexec_log`), ``--exportProfile`` JSON
  (:func:`parse_export_profile`), ``--exportLayerInfo`` JSON or the ``--dumpLayerInfo``
  text (:func:`parse_layer_info`), ``--dumpProfile`` tables (:func:`parse_dump_profile`)
  and ``polygraphy run`` logs (:func:`parse_polygraphy_log`).  They accept CRLF line
  ends, missing trailing spaces, scientific notation, and lines re-emitted by wrapper
  tools with extra ``[...]`` prefixes.  Text without recognisable timing raises
  :class:`~halp_onnx.errors.HalpError` with ``stage="tensorrt"``.

* **Measurement** (:class:`TrtBackend`): builds an engine with the TensorRT Python API
  and times ``execute_async_v3`` with CUDA events, or runs the ``trtexec`` binary and
  parses its output.  Neither can run without TensorRT and an NVIDIA GPU; they then
  raise a one-line :class:`HalpError` that says so.

All times are milliseconds unless a name says otherwise (``*_s``: seconds).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

from halp_onnx.errors import HalpError

__all__ = [
    "EngineInfo",
    "LayerInfo",
    "LayerProfile",
    "LayerTiming",
    "PolygraphyResult",
    "PolygraphyRun",
    "TensorInfo",
    "TimingStats",
    "TrtBackend",
    "TrtMeasurement",
    "TrtexecResult",
    "TrtexecSummary",
    "parse_dump_profile",
    "parse_dump_profile_table",
    "parse_engine_info",
    "parse_export_profile",
    "parse_export_profile_table",
    "parse_layer_info",
    "parse_polygraphy_log",
    "parse_trtexec_log",
]

STAGE = "tensorrt"
NOT_INSTALLED = "TensorRT is not installed (pip install halp-onnx[trt] on a machine with an NVIDIA GPU)"
FALLBACK_HINT = "use an analytic target estimate instead"

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

TextLike: TypeAlias = str | bytes
JsonLike: TypeAlias = str | bytes | Path | Mapping[str, Any] | Sequence[Any]
ModelLike: TypeAlias = bytes | str | os.PathLike[str]


def _error(message: str) -> HalpError:
    """A ``HalpError`` for this stage, with the message folded onto one line."""
    return HalpError(" ".join(str(message).split()), stage=STAGE)


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
# Text helpers
# --------------------------------------------------------------------------------------

_NUM = r"(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan))"
_PREFIX_RE = re.compile(r"^\s*(?:\[[^\]\r\n]*\]\s*)*")
_LEVEL_RE = re.compile(r"\[([IWEVF])\]")


def _num(text: str) -> float:
    return float(text)


def _to_text(data: TextLike) -> str:
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    if not isinstance(data, str):
        raise _error(f"expected log text, got {type(data).__name__}")
    return data.lstrip("\ufeff")


@dataclass(frozen=True)
class _Line:
    level: str | None
    message: str


_NEWLINE_RE = re.compile(r"\r\n|\r|\n")


def _split_lines(text: str) -> list[str]:
    """Split on CR/LF only; ``str.splitlines`` also splits on the 0x1E record separator,
    which TensorRT 10.x puts between the entries of a layer's ``Metadata``."""
    return _NEWLINE_RE.split(text)


def _lines(text: str) -> Iterator[_Line]:
    """Split a log into (level, message) with every leading ``[...]`` group removed.

    Handles ``[ts] [I] msg``, ``[ts] [I] [TRT] msg``, polygraphy's ``[ts] [TRT] [I]``,
    7.x orphan timestamps ``[ts] [ts] [I] msg`` and wrapper prefixes ``[INFO] [ts] [I]``.
    """
    for raw in _split_lines(text):
        match = _PREFIX_RE.match(raw)
        prefix = raw[: match.end()] if match else ""
        levels = _LEVEL_RE.findall(prefix)
        message = raw[len(prefix):].strip()
        yield _Line(levels[-1] if levels else None, message)


# --------------------------------------------------------------------------------------
# trtexec logs
# --------------------------------------------------------------------------------------

# Metric line of 8.0+: "<Metric>: min = a ms, max = b ms, ..., percentile(99%) = e ms"
_METRIC_RE = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9 /\-]*?)\s*:\s*(?P<body>min\s*=.*)$")
_METRIC_ITEM_RE = re.compile(
    rf"(?P<key>min|max|mean|median|percentile\(\s*(?P<pct>{_NUM})\s*%\s*\))\s*=\s*"
    rf"(?P<value>{_NUM})\s*(?P<unit>ms|us|s)?\b",
    re.IGNORECASE,
)
# Keys by suffix of the lower-cased metric name; longest (most specific) first.
_METRIC_KEYS: tuple[tuple[str, str], ...] = (
    ("end-to-end host latency", "end_to_end"),
    ("gpu compute time", "gpu_compute"),
    ("enqueue time", "enqueue"),
    ("h2d latency", "h2d"),
    ("d2h latency", "d2h"),
    ("host latency", "latency"),
    ("latency", "latency"),
)
# 7.x block headers and their stat lines.
_SECTION_RE = re.compile(r"(?:^|\s)(Host Latency|Enqueue Time|GPU Compute)$", re.IGNORECASE)
_SECTION_KEYS = {"host latency": "latency", "enqueue time": "enqueue", "gpu compute": "gpu_compute"}
_OLD_STAT_RE = re.compile(
    rf"(?:^|\s)(?P<key>min|max|mean|median):\s*(?P<value>{_NUM})\s*ms"
    rf"(?:\s*\(end to end\s*(?P<e2e>{_NUM})\s*ms\))?\s*$",
    re.IGNORECASE,
)
_OLD_PCT_RE = re.compile(
    rf"(?:^|\s)percentile:\s*(?P<value>{_NUM})\s*ms at\s*(?P<pct>{_NUM})\s*%"
    rf"(?:\s*\(end to end\s*(?P<e2e>{_NUM})\s*ms at\s*{_NUM}\s*%\))?",
    re.IGNORECASE,
)
_THROUGHPUT_RE = re.compile(rf"(?:^|\s)throughput:\s*(?P<value>{_NUM})\s*qps", re.IGNORECASE)
_WALLTIME_RE = re.compile(rf"(?:^|\s)(?:total host )?walltime:\s*(?P<value>{_NUM})\s*s\b", re.IGNORECASE)
_TOTAL_GPU_RE = re.compile(
    rf"(?:^|\s)total (?:gpu )?compute time:\s*(?P<value>{_NUM})\s*s\b", re.IGNORECASE
)
_QUERIES_RE = re.compile(r"Timing trace has (?P<n>\d+) queries over", re.IGNORECASE)
_CV_RE = re.compile(rf"coefficient of variance\s*=\s*(?P<value>{_NUM})\s*%", re.IGNORECASE)
_VERSION_LINE_RE = re.compile(r"(?:^|\s)TensorRT version:\s*(?P<v>\d[\d.]*)", re.IGNORECASE)
_VERSION_TAG_RE = re.compile(r"\[TensorRT v(?P<v>\d+)\]")
_DEVICE_RE = re.compile(r"^Selected Device:\s*(?P<name>.+)$")
_DEVICE_LIST_RE = re.compile(r'^Device \d+:\s*"(?P<name>[^"]+)"')
_CC_RE = re.compile(r"^Compute Capability:\s*(?P<cc>\d+\.\d+)")
_PRECISION_RE = re.compile(r"^Precision:\s*(?P<p>\S.*)$")
_RESULT_RE = re.compile(r"^&&&& (?P<result>PASSED|FAILED|WAIVED)\b")
_PROFILE_HEAD_RE = re.compile(r"=== Profile \((?P<n>\d+) iterations?\s*\) ===")


def _version_from_tag(tag: str) -> str:
    """``v8003`` -> 8.0.3, ``v8600`` -> 8.6.0, ``v101601`` -> 10.16.1 (10.x: 2 digits each)."""
    n = int(tag)
    if len(tag) >= 6:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def _version_from_line(value: str) -> str:
    """``TensorRT version: 8003`` (8.0 prints an integer) or ``8.2.3`` / ``10.16.1``."""
    value = value.rstrip(".")
    if value.isdigit() and len(value) >= 4:
        return _version_from_tag(value)
    return value


class _StatsBuilder:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.percentiles: list[tuple[float, float]] = []

    def set(self, key: str, value: float) -> None:
        self.values[key] = value

    def add_percentile(self, percent: float, value: float) -> None:
        self.percentiles = [(p, v) for p, v in self.percentiles if not math.isclose(p, percent)]
        self.percentiles.append((percent, value))

    def build(self) -> TimingStats:
        return TimingStats(
            min_ms=self.values.get("min"),
            max_ms=self.values.get("max"),
            mean_ms=self.values.get("mean"),
            median_ms=self.values.get("median"),
            percentiles_ms=tuple(self.percentiles),
        )


def _metric_key(name: str) -> str | None:
    lowered = " ".join(name.lower().split())
    for suffix, key in _METRIC_KEYS:
        if lowered == suffix or lowered.endswith(" " + suffix):
            return key
    return None


def _to_ms(value: float, unit: str | None) -> float:
    unit = (unit or "ms").lower()
    if unit == "us":
        return value / 1000.0
    if unit == "s":
        return value * 1000.0
    return value


def _parse_metric_body(body: str) -> _StatsBuilder | None:
    builder = _StatsBuilder()
    for item in _METRIC_ITEM_RE.finditer(body):
        value = _to_ms(_num(item["value"]), item["unit"])
        if item["pct"] is not None:
            builder.add_percentile(_num(item["pct"]), value)
        else:
            builder.set(item["key"].lower(), value)
    return builder if builder.values else None


def parse_trtexec_log(text: TextLike) -> TrtexecSummary:
    """Parse a trtexec stdout log (TensorRT 7.2 to 10.x) into a :class:`TrtexecSummary`.

    When a log holds several summaries, the last one wins.  Raises :class:`HalpError`
    when the text has neither a performance summary nor a ``--dumpProfile`` table.
    """
    text = _to_text(text)
    lines = list(_lines(text))

    stats: dict[str, _StatsBuilder] = {}
    old_stats: dict[str, _StatsBuilder] = {}  # 7.x multi-line blocks
    section: str | None = None
    version_line: str | None = None
    version_tag: str | None = None
    gpu_name: str | None = None
    listed_gpu: str | None = None
    compute_capability: str | None = None
    precision: str | None = None
    throughput: float | None = None
    walltime: float | None = None
    total_gpu: float | None = None
    queries: int | None = None
    cv: float | None = None
    passed: bool | None = None
    warnings: list[str] = []
    first_error: str | None = None
    skipped_inference = False

    for line in lines:
        msg = line.message
        if not msg:
            continue
        if line.level == "E" and first_error is None:
            first_error = msg
        if line.level == "W" and msg.startswith("* "):
            warnings.append(msg[2:].strip())
        if msg.startswith("&&&&"):
            tag = _VERSION_TAG_RE.search(msg)
            if tag and version_tag is None:
                version_tag = tag["v"]
            result = _RESULT_RE.match(msg)
            if result:
                passed = result["result"] != "FAILED"
            continue
        if "Skipped inference phase" in msg:
            skipped_inference = True
        if line.level == "V":
            continue  # the metric explanations and builder chatter carry no results

        if (m := _VERSION_LINE_RE.search(msg)) is not None:
            version_line = m["v"]
        elif (m := _DEVICE_RE.match(msg)) is not None:
            gpu_name = m["name"].strip()
        elif (m := _DEVICE_LIST_RE.match(msg)) is not None:
            listed_gpu = listed_gpu or m["name"].strip()
        elif (m := _CC_RE.match(msg)) is not None:
            compute_capability = m["cc"]
        elif (m := _PRECISION_RE.match(msg)) is not None:
            precision = m["p"].strip()

        if (m := _METRIC_RE.search(msg)) is not None:
            key = _metric_key(m["name"])
            built = _parse_metric_body(m["body"])
            if key is not None and built is not None:
                stats[key] = built
            continue
        if (m := _SECTION_RE.search(msg)) is not None:
            section = _SECTION_KEYS[m[1].lower()]
            old_stats[section] = _StatsBuilder()
            if section == "latency":
                old_stats["end_to_end"] = _StatsBuilder()
            continue
        if section is not None and (m := _OLD_STAT_RE.search(msg)) is not None:
            old_stats[section].set(m["key"].lower(), _num(m["value"]))
            if m["e2e"] is not None and section == "latency":
                old_stats["end_to_end"].set(m["key"].lower(), _num(m["e2e"]))
            continue
        if section is not None and (m := _OLD_PCT_RE.search(msg)) is not None:
            old_stats[section].add_percentile(_num(m["pct"]), _num(m["value"]))
            if m["e2e"] is not None and section == "latency":
                old_stats["end_to_end"].add_percentile(_num(m["pct"]), _num(m["e2e"]))
            continue
        if (m := _THROUGHPUT_RE.search(msg)) is not None:
            throughput = _num(m["value"])
        elif (m := _WALLTIME_RE.search(msg)) is not None:
            walltime = _num(m["value"])
        elif (m := _TOTAL_GPU_RE.search(msg)) is not None:
            total_gpu = _num(m["value"])
        elif (m := _QUERIES_RE.search(msg)) is not None:
            queries = int(m["n"])
        if (m := _CV_RE.search(msg)) is not None:
            cv = _num(m["value"])

    for key, builder in old_stats.items():
        if key not in stats and builder.values:
            stats[key] = builder

    if throughput is not None and throughput == 0.0 and queries == 0:
        # TensorRT 7.x with explicit batch counts no queries and prints "throughput: 0 qps".
        warnings.append("throughput reported as 0 qps (TensorRT 7.x explicit-batch quirk); ignored")
        throughput = None

    profile = _find_profile_table(lines)
    built_stats = {key: builder.build() for key, builder in stats.items()}
    has_timing = bool(built_stats) or throughput is not None or (
        profile is not None and profile.layers
    )
    if not has_timing:
        if not text.strip():
            raise _error("trtexec output is empty; no timing to parse")
        if passed is False or first_error is not None:
            detail = f": {first_error}" if first_error else ""
            raise _error(f"trtexec failed and reported no timing{detail}")
        why = " (the run used --skipInference)" if skipped_inference else ""
        raise _error(
            "no TensorRT timing found in trtexec output: expected a '=== Performance summary ===' "
            f"block, 7.x 'GPU Compute' statistics or a '=== Profile' table{why}"
        )

    if version_line is not None:
        version: str | None = _version_from_line(version_line)
    elif version_tag is not None:
        version = _version_from_tag(version_tag)
    else:
        version = None

    return TrtexecSummary(
        trt_version=version,
        gpu_name=gpu_name or listed_gpu,
        compute_capability=compute_capability,
        precision=precision,
        throughput_qps=throughput,
        gpu_compute=built_stats.get("gpu_compute"),
        latency=built_stats.get("latency"),
        end_to_end=built_stats.get("end_to_end"),
        enqueue=built_stats.get("enqueue"),
        h2d=built_stats.get("h2d"),
        d2h=built_stats.get("d2h"),
        total_host_walltime_s=walltime,
        total_gpu_compute_s=total_gpu,
        queries=queries,
        gpu_compute_cv_percent=cv,
        profile=profile,
        passed=passed,
        warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------------------
# --dumpProfile tables
# --------------------------------------------------------------------------------------


def _profile_row_regex(header: str) -> tuple[re.Pattern[str], bool, bool]:
    """Row pattern for a profile table header; returns (pattern, name_first, has_median).

    10.x: ``Time(ms)  Avg.(ms)  Median(ms)  Time(%)  Layer`` (name last).
    8.x:  ``Layer  Time (ms)  Avg. Time (ms)  [Median Time (ms)]  Time %`` (name first).
    """
    lowered = header.lower()
    has_median = "median" in lowered
    name_first = lowered.lstrip().startswith("layer")
    nums = 4 if has_median else 3
    num_group = rf"({_NUM})"
    cols = r"\s+".join([num_group] * nums)
    if name_first:
        pattern = re.compile(rf"^(?P<name>\S.*?)\s+{cols}\s*$")
    else:
        pattern = re.compile(rf"^{cols}\s+(?P<name>\S.*?)\s*$")
    return pattern, name_first, has_median


def _parse_profile_tables(lines: Sequence[_Line]) -> list[LayerProfile]:
    tables: list[LayerProfile] = []
    i = 0
    while i < len(lines):
        head = _PROFILE_HEAD_RE.search(lines[i].message)
        if head is None:
            i += 1
            continue
        iterations = int(head["n"])
        i += 1
        if i >= len(lines) or "layer" not in lines[i].message.lower():
            continue
        pattern, name_first, has_median = _profile_row_regex(lines[i].message)
        i += 1
        layers: list[LayerTiming] = []
        total: LayerTiming | None = None
        while i < len(lines):
            row = pattern.match(lines[i].message)
            if row is None:
                break
            values = [_num(g) for g in row.groups()[1:]] if name_first else [
                _num(g) for g in row.groups()[:-1]
            ]
            name = row["name"].strip()
            time_total, avg = values[0], values[1]
            median = values[2] if has_median else None
            timing = LayerTiming(name, time_total, avg, median, values[-1])
            if name == "Total":
                total = timing
            else:
                layers.append(timing)
            i += 1
        tables.append(LayerProfile(iterations, tuple(layers), total))
    return tables


def _find_profile_table(lines: Sequence[_Line]) -> LayerProfile | None:
    tables = _parse_profile_tables(lines)
    return tables[-1] if tables else None


def parse_dump_profile_table(text: TextLike) -> LayerProfile:
    """Parse the last ``=== Profile (N iterations ) ===`` table printed by ``--dumpProfile``."""
    profile = _find_profile_table(list(_lines(_to_text(text))))
    if profile is None or not profile.layers:
        raise _error("no '=== Profile (N iterations ) ===' per-layer table found in trtexec output")
    return profile


def parse_dump_profile(text: TextLike) -> list[LayerTiming]:
    """Per-layer rows of a ``--dumpProfile`` table, without the ``Total`` row."""
    return list(parse_dump_profile_table(text).layers)


# --------------------------------------------------------------------------------------
# JSON exports
# --------------------------------------------------------------------------------------


def _load_json(data: JsonLike, what: str) -> Any:
    if isinstance(data, Path):
        path = data
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _error(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    if isinstance(data, (str, bytes)):
        text = _to_text(data)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise _error(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return data


def _number(entry: Mapping[str, Any], key: str, what: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _error(f"{what}: entry {entry.get('name')!r} has no numeric {key!r}")
    return float(value)


def _optional_number(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_export_profile_table(data: JsonLike) -> LayerProfile:
    """Parse ``--exportProfile`` JSON (text, bytes, a :class:`~pathlib.Path` or the loaded list).

    The format is ``[{"count": N}, {"name", "timeMs", "averageMs", ["medianMs",] "percentage"}, ...]``.
    """
    what = "trtexec --exportProfile JSON"
    doc = _load_json(data, what)
    if not isinstance(doc, list):
        raise _error(f"{what} must be a list, got {type(doc).__name__}")
    iterations: int | None = None
    layers: list[LayerTiming] = []
    for entry in doc:
        if not isinstance(entry, Mapping):
            raise _error(f"{what} holds a {type(entry).__name__} where an object was expected")
        if "name" not in entry:
            count = entry.get("count")
            if isinstance(count, (int, float)) and not isinstance(count, bool) and iterations is None:
                iterations = int(count)
            continue
        layers.append(
            LayerTiming(
                name=str(entry["name"]),
                time_ms_total=_number(entry, "timeMs", what),
                avg_ms=_number(entry, "averageMs", what),
                median_ms=_optional_number(entry, "medianMs"),
                percentage=_optional_number(entry, "percentage"),
            )
        )
    if not layers:
        raise _error(f"{what} has no per-layer timing entries")
    return LayerProfile(iterations, tuple(layers), None)


def parse_export_profile(data: JsonLike) -> list[LayerTiming]:
    """Per-layer timings from ``--exportProfile`` JSON (the ``count`` entry is dropped)."""
    return list(parse_export_profile_table(data).layers)


_META_RE = re.compile(r"\[ONNX Layer:\s*(?P<name>[^\]]*)\]")


def _onnx_layers(metadata: Any) -> tuple[str, ...]:
    if not isinstance(metadata, str):
        return ()
    return tuple(m["name"].strip() for m in _META_RE.finditer(metadata))


def _dims(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, (list, tuple)):
        return None
    dims: list[int] = []
    for d in value:
        if isinstance(d, bool):
            return None
        if isinstance(d, int):
            dims.append(d)
        elif isinstance(d, str) and re.fullmatch(r"-?\d+", d.strip()):
            dims.append(int(d))
        else:
            return None
    return tuple(dims)


def _tensor_from_json(entry: Any) -> TensorInfo | None:
    if not isinstance(entry, Mapping) or "Name" not in entry:
        return None
    fmt = entry.get("Format/Datatype")
    loc = entry.get("Location")
    return TensorInfo(
        name=str(entry["Name"]),
        dims=_dims(entry.get("Dimensions")),
        format=str(fmt) if fmt is not None else None,
        location=str(loc) if loc is not None else None,
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _layer_from_json(entry: Any, what: str) -> LayerInfo:
    if isinstance(entry, str):
        return LayerInfo(name=entry)
    if not isinstance(entry, Mapping) or "Name" not in entry:
        raise _error(f"{what}: a layer entry has no 'Name'")
    tensors_in = tuple(t for t in map(_tensor_from_json, entry.get("Inputs") or ()) if t)
    tensors_out = tuple(t for t in map(_tensor_from_json, entry.get("Outputs") or ()) if t)
    return LayerInfo(
        name=str(entry["Name"]),
        layer_type=_opt_str(entry.get("LayerType")),
        inputs=tensors_in,
        outputs=tensors_out,
        parameter_type=_opt_str(entry.get("ParameterType")),
        origin=_opt_str(entry.get("Origin")),
        tactic_name=_opt_str(entry.get("TacticName")),
        tactic_value=_opt_str(entry.get("TacticValue")),
        onnx_layers=_onnx_layers(entry.get("Metadata")),
    )


# The text form printed by ``--dumpLayerInfo --profilingVerbosity=detailed``:
# "Name: n, LayerType: t, Inputs: [ { Name: x, Location: Device, Dimensions: [1,3], Format/Datatype: Float }], ..."
_DUMP_NAME_RE = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*)")
_DUMP_TENSORS_RE = r"{key}: \[(?P<body>(?:[^\[\]]|\[[^\[\]]*\])*)\]"
_DUMP_TENSOR_RE = re.compile(r"\{(?P<body>[^{}]*)\}")
_DUMP_TENSOR_FIELDS_RE = re.compile(
    r"^Name: (?P<name>.*?), (?:Location: (?P<loc>[^,]*), )?Dimensions: \[(?P<dims>[^\]]*)\]"
    r"(?:, Format/Datatype: (?P<fmt>.*))?$"
)


def _dump_field(line: str, key: str) -> str | None:
    m = re.search(rf"(?:^|, ){re.escape(key)}: (?P<v>[^,]*)", line)
    return m["v"].strip() if m else None


def _dump_tensors(line: str, key: str) -> tuple[TensorInfo, ...]:
    block = re.search(_DUMP_TENSORS_RE.format(key=key), line)
    if block is None:
        return ()
    tensors: list[TensorInfo] = []
    for t in _DUMP_TENSOR_RE.finditer(block["body"]):
        f = _DUMP_TENSOR_FIELDS_RE.match(t["body"].strip())
        if f is None:
            continue
        dims_text = f["dims"].strip()
        dims = _dims(dims_text.split(",")) if dims_text else ()
        tensors.append(
            TensorInfo(name=f["name"], dims=dims, format=(f["fmt"] or "").strip() or None,
                       location=f["loc"])
        )
    return tuple(tensors)


def _parse_layer_dump(text: str) -> EngineInfo | None:
    layers: list[LayerInfo] = []
    bindings: list[str] = []
    in_bindings = False
    for raw in _split_lines(text):
        line = raw.strip()
        if line == "Bindings:":
            in_bindings = True
            continue
        if in_bindings:
            if not line or line.startswith(("[", "&&&&")):
                in_bindings = False
            else:
                bindings.append(line)
            continue
        m = _DUMP_NAME_RE.match(line)
        if m is None:
            continue
        meta = re.search(r"(?:^|, )Metadata: (?P<v>.*)$", line)
        layers.append(
            LayerInfo(
                name=m["name"],
                layer_type=m["type"].strip() or None,
                inputs=_dump_tensors(line, "Inputs"),
                outputs=_dump_tensors(line, "Outputs"),
                parameter_type=_dump_field(line, "ParameterType"),
                origin=_dump_field(line, "Origin"),
                tactic_name=_dump_field(line, "TacticName"),
                tactic_value=_dump_field(line, "TacticValue"),
                onnx_layers=_onnx_layers(meta["v"] if meta else None),
            )
        )
    return EngineInfo(tuple(layers), tuple(bindings)) if layers else None


def parse_engine_info(data: JsonLike) -> EngineInfo:
    """Parse ``--exportLayerInfo`` JSON (names-only or detailed) or ``--dumpLayerInfo`` log text."""
    what = "trtexec --exportLayerInfo JSON"
    if isinstance(data, (str, bytes)):
        text = _to_text(data)
        if not text.lstrip().startswith(("{", "[")):
            dumped = _parse_layer_dump(text)
            if dumped is None:
                raise _error("no TensorRT layer information found (expected --exportLayerInfo "
                             "JSON or a detailed --dumpLayerInfo 'Layers:' block)")
            return dumped
        data = text
    doc = _load_json(data, what)
    if isinstance(doc, Mapping):
        raw_layers = doc.get("Layers")
        raw_bindings = doc.get("Bindings") or ()
    elif isinstance(doc, list):
        raw_layers, raw_bindings = doc, ()
    else:
        raise _error(f"{what} must be an object with 'Layers', got {type(doc).__name__}")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise _error(f"{what} has no 'Layers' list")
    layers = tuple(_layer_from_json(entry, what) for entry in raw_layers)
    bindings = tuple(
        str(b["Name"]) if isinstance(b, Mapping) and "Name" in b else str(b) for b in raw_bindings
    )
    return EngineInfo(layers, bindings)


def parse_layer_info(data: JsonLike) -> list[LayerInfo]:
    """Layers of ``--exportLayerInfo`` JSON or ``--dumpLayerInfo`` text (see :func:`parse_engine_info`)."""
    return list(parse_engine_info(data).layers)


# --------------------------------------------------------------------------------------
# polygraphy logs
# --------------------------------------------------------------------------------------

_POLY_RUN_RE = re.compile(
    rf"^(?P<runner>\S+)\s*\|\s*Completed\s+(?P<n>\d+)\s+iteration\(s\)\s+in\s+(?P<total>{_NUM})\s*ms"
    rf"\s*\|\s*Average inference time:\s*(?P<avg>{_NUM})\s*ms",
    re.IGNORECASE,
)
_POLY_TIME_RE = re.compile(
    rf"^(?:(?P<runner>\S+)\s*\|\s*)?.*?\binference time:\s*(?P<avg>{_NUM})\s*ms", re.IGNORECASE
)
_POLY_MODULE_RE = re.compile(r"^Loaded Module:\s*(?P<name>\S+)\s*\|\s*Version:\s*(?P<version>\S+)")
_POLY_BUILD_RE = re.compile(rf"^Finished engine building in\s*(?P<s>{_NUM})\s*seconds")
_POLY_RATE_RE = re.compile(rf"^Accuracy Summary\s*\|.*Pass Rate:\s*(?P<rate>{_NUM})\s*%")
_POLY_RESULT_RE = re.compile(r"^(?P<result>PASSED|FAILED) \| (?:Runtime: [^|]*\| )?Command:")


def _runner_kind(runner: str) -> str:
    head, sep, _ = runner.partition("-runner")
    return head if sep else runner


def parse_polygraphy_log(text: TextLike) -> PolygraphyResult:
    """Parse a ``polygraphy run`` log: per-runner inference times, module versions, verdict."""
    text = _to_text(text)
    runs: list[PolygraphyRun] = []
    modules: dict[str, str] = {}
    passed: bool | None = None
    rate: float | None = None
    build_s: float | None = None
    for line in _lines(text):
        msg = line.message
        if not msg:
            continue
        if (m := _POLY_RUN_RE.match(msg)) is not None:
            runs.append(PolygraphyRun(m["runner"], _runner_kind(m["runner"]), int(m["n"]),
                                      _num(m["total"]), _num(m["avg"])))
        elif (m := _POLY_TIME_RE.match(msg)) is not None:
            runner = m["runner"] or "unknown-runner"
            runs.append(PolygraphyRun(runner, _runner_kind(runner), None, None, _num(m["avg"])))
        elif (m := _POLY_MODULE_RE.match(msg)) is not None:
            modules.setdefault(m["name"], m["version"])
        elif (m := _POLY_BUILD_RE.match(msg)) is not None:
            build_s = _num(m["s"])
        elif (m := _POLY_RATE_RE.match(msg)) is not None:
            rate = _num(m["rate"])
        elif (m := _POLY_RESULT_RE.match(msg)) is not None:
            passed = m["result"] == "PASSED"
    if not runs:
        raise _error("no polygraphy inference timing found (expected '<runner> | Completed N "
                     "iteration(s) in X ms | Average inference time: Y ms')")
    return PolygraphyResult(tuple(runs), tuple(modules.items()), passed, rate, build_s)


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrtMeasurement:
    """Per-iteration GPU times of one engine, measured with CUDA events around ``execute_async_v3``."""

    samples_ms: tuple[float, ...]
    precision: str
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...]
    trt_version: str
    device: str

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


class _Cuda(Protocol):
    """Device buffers, a stream and event timing; backed by torch or cuda-python."""

    device_name: str

    def alloc(self, nbytes: int, random_dtype: str | None) -> int: ...

    @property
    def stream_handle(self) -> int: ...

    def synchronize(self) -> None: ...

    def time_call(self, fn: Any) -> float: ...

    def close(self) -> None: ...


class _TorchCuda:
    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise _error("torch sees no CUDA device")
        self._torch = torch
        self.device_name = str(torch.cuda.get_device_name(0))
        self._stream = torch.cuda.Stream()
        self._buffers: list[Any] = []
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def alloc(self, nbytes: int, random_dtype: str | None) -> int:
        torch = self._torch
        float_types = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if random_dtype in float_types:
            dtype = float_types[random_dtype]
            count = max(1, nbytes // torch.empty((), dtype=dtype).element_size())
            buf = torch.rand(count, dtype=dtype, device="cuda")
        else:
            buf = torch.zeros(max(1, nbytes), dtype=torch.uint8, device="cuda")
        self._buffers.append(buf)
        return int(buf.data_ptr())

    @property
    def stream_handle(self) -> int:
        return int(self._stream.cuda_stream)

    def synchronize(self) -> None:
        self._torch.cuda.synchronize()  # device-wide: buffers were filled on the default stream

    def time_call(self, fn: Any) -> float:
        self._start.record(self._stream)
        fn()
        self._end.record(self._stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def close(self) -> None:
        self._buffers.clear()


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


class _CudaPython:
    def __init__(self) -> None:
        import numpy as np

        self._np = np
        self._rt = _import_cudart()
        self._ptrs: list[Any] = []
        count = self._call(self._rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not count:
            raise _error("cuda-python sees no CUDA device")
        props = self._call(self._rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = props.name
        self.device_name = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")
        self._stream = self._call(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self._start = self._call(self._rt.cudaEventCreate(), "cudaEventCreate")
        self._end = self._call(self._rt.cudaEventCreate(), "cudaEventCreate")

    def _call(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise _error(f"{what} failed: {err}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def alloc(self, nbytes: int, random_dtype: str | None) -> int:
        np = self._np
        nbytes = max(1, nbytes)
        ptr = self._call(self._rt.cudaMalloc(nbytes), "cudaMalloc")
        self._ptrs.append(ptr)
        if random_dtype in ("float32", "float16"):
            dtype = np.dtype(random_dtype)
            host = np.random.default_rng(0).random(nbytes // dtype.itemsize).astype(dtype)
            self._call(
                self._rt.cudaMemcpy(ptr, host.ctypes.data, host.nbytes,
                                    self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice),
                "cudaMemcpy",
            )
        else:
            self._call(self._rt.cudaMemset(ptr, 0, nbytes), "cudaMemset")
        return int(ptr)

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        self._call(self._rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    def time_call(self, fn: Any) -> float:
        self._call(self._rt.cudaEventRecord(self._start, self._stream), "cudaEventRecord")
        fn()
        self._call(self._rt.cudaEventRecord(self._end, self._stream), "cudaEventRecord")
        self._call(self._rt.cudaEventSynchronize(self._end), "cudaEventSynchronize")
        return float(self._call(self._rt.cudaEventElapsedTime(self._start, self._end),
                                "cudaEventElapsedTime"))

    def close(self) -> None:
        for ptr in self._ptrs:
            self._rt.cudaFree(ptr)
        self._ptrs.clear()
        self._rt.cudaEventDestroy(self._start)
        self._rt.cudaEventDestroy(self._end)
        self._rt.cudaStreamDestroy(self._stream)


def _open_cuda() -> _Cuda:
    """A CUDA helper from torch if it sees a GPU, else from cuda-python."""
    reasons: list[str] = []
    try:
        return _TorchCuda()
    except ImportError:
        reasons.append("torch is not installed")
    except HalpError as exc:
        reasons.append(exc.message)
    try:
        return _CudaPython()
    except ImportError:
        reasons.append("cuda-python is not installed")
    except HalpError as exc:
        reasons.append(exc.message)
    raise _error("no usable CUDA device (" + "; ".join(reasons) + ")")


def _probe_cuda() -> tuple[bool, str]:
    """(True, device name) or (False, reason) without allocating anything."""
    reasons: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            return True, str(torch.cuda.get_device_name(0))
        reasons.append("torch sees no CUDA device")
    except ImportError:
        reasons.append("torch is not installed")
    except Exception as exc:
        reasons.append(f"torch CUDA check failed ({type(exc).__name__}: {exc})")
    try:
        cudart = _import_cudart()
        err, count = cudart.cudaGetDeviceCount()
        if int(err) == 0 and count:
            return True, "CUDA device 0"
        reasons.append(f"cuda-python sees no CUDA device ({getattr(err, 'name', err)})")
    except ImportError:
        reasons.append("cuda-python is not installed")
    except Exception as exc:  # a driver-less machine can fail inside the binding itself
        reasons.append(f"cuda-python failed ({type(exc).__name__}: {exc})")
    return False, "no CUDA device is visible (" + "; ".join(reasons) + ")"


# Byte size and random-fill type for TensorRT data types, by enum name.
_TRT_DTYPES: dict[str, tuple[float, str | None]] = {
    "FLOAT": (4, "float32"),
    "HALF": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "INT8": (1, None),
    "UINT8": (1, None),
    "FP8": (1, None),
    "INT32": (4, None),
    "INT64": (8, None),
    "BOOL": (1, None),
    "INT4": (0.5, None),
    "FP4": (0.5, None),
}


def _dtype_name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1].upper()


def _nbytes(shape: Sequence[int], dtype: Any) -> tuple[int, str | None]:
    size, fill = _TRT_DTYPES.get(_dtype_name(dtype), (4, None))
    return int(math.ceil(math.prod(shape) * size)), fill


def _trt_major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


def _resolve_shape(
    name: str, shape: Sequence[int], batch: int | None, input_shapes: Mapping[str, Sequence[int]]
) -> tuple[int, ...]:
    """A concrete shape for one model input: explicit > batch for dim 0 > the model's own."""
    if name in input_shapes:
        return tuple(int(d) for d in input_shapes[name])
    dims = [int(d) for d in shape]
    if dims and batch is not None:
        if dims[0] >= 0 and dims[0] != batch:
            raise _error(f"input {name!r} has a static batch of {dims[0]}, not {batch}; "
                         "re-export the model with a dynamic batch or pass batch=None")
        dims[0] = batch
    elif dims and dims[0] < 0:
        dims[0] = 1
    if any(d < 0 for d in dims):
        raise _error(f"input {name!r} has dynamic dimensions {tuple(shape)}; "
                     f"pass input_shapes={{{name!r}: (...)}}")
    return tuple(dims)


def _onnx_input_shapes(
    path: Path, batch: int | None, input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the model's *dynamic* inputs (trtexec refuses ``--shapes`` for a
    static model); static inputs are only checked against ``batch`` and ``input_shapes``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else -1
            for d in value.type.tensor_type.shape.dim
        ]
        shape = _resolve_shape(value.name, dims, batch, input_shapes)
        if any(d < 0 for d in dims):
            shapes[value.name] = shape
        elif shape != tuple(dims):
            raise _error(f"input {value.name!r} is static with shape {tuple(dims)}; "
                         f"it cannot be run as {shape}")
    return shapes


def _shape_arg(shapes: Mapping[str, Sequence[int]]) -> str:
    parts = []
    for name, dims in shapes.items():
        quoted = f"'{name}'" if ":" in name else name
        parts.append(f"{quoted}:{'x'.join(str(d) for d in dims)}")
    return ",".join(parts)


class TrtBackend:
    """Measures ONNX models on TensorRT, through the Python API or the ``trtexec`` binary.

    ``available()`` says whether the Python API path can run here; every measuring
    method raises a one-line :class:`HalpError` (stage ``tensorrt``) when it cannot.
    """

    MIN_VERSION = (8, 5)  # the named-tensor API (set_tensor_address, execute_async_v3)

    def __init__(self, *, trtexec: str | os.PathLike[str] | None = None, workspace_mb: int | None = None,
                 verbose: bool = False) -> None:
        self._trtexec = None if trtexec is None else os.fspath(trtexec)
        self.workspace_mb = workspace_mb
        self.verbose = verbose

    # -- availability ------------------------------------------------------------------

    def available(self) -> tuple[bool, str]:
        """``(True, "TensorRT x on <gpu>")`` or ``(False, reason)``; never raises."""
        try:
            import tensorrt as trt
        except ImportError:
            return False, NOT_INSTALLED
        except Exception as exc:  # a broken install: missing libnvinfer, CUDA mismatch, ...
            return False, f"TensorRT failed to import ({type(exc).__name__}: {exc})"
        version = str(getattr(trt, "__version__", "0"))
        parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
        if parts < self.MIN_VERSION:
            need = ".".join(map(str, self.MIN_VERSION))
            return False, f"TensorRT {version} is too old; {need} or newer is needed"
        ok, device = _probe_cuda()
        if not ok:
            return False, device
        return True, f"TensorRT {version} on {device}"

    def _require_trt(self) -> Any:
        ok, reason = self.available()
        if not ok:
            raise _error(f"{reason}; {FALLBACK_HINT}")
        import tensorrt as trt

        return trt

    def trtexec_path(self) -> str | None:
        """The trtexec binary: the constructor argument, ``$TRTEXEC``, ``PATH``, or the usual install dir."""
        candidates = [self._trtexec, os.environ.get("TRTEXEC"), shutil.which("trtexec"),
                      "/usr/src/tensorrt/bin/trtexec"]
        for candidate in candidates:
            if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        return None

    # -- engine building ---------------------------------------------------------------

    @staticmethod
    def _check_precision(precision: str) -> str:
        if precision not in PRECISIONS:
            raise _error(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        return precision

    def _logger(self, trt: Any) -> Any:
        return trt.Logger(trt.Logger.INFO if self.verbose else trt.Logger.WARNING)

    def _build_serialized(
        self,
        trt: Any,
        logger: Any,
        model: ModelLike,
        precision: str,
        batch: int | None,
        input_shapes: Mapping[str, Sequence[int]],
    ) -> tuple[bytes, dict[str, tuple[int, ...]]]:
        builder = trt.Builder(logger)
        flags = 0
        if _trt_major(trt) < 10:  # 10.x networks are always explicit-batch
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if isinstance(model, (bytes, bytearray)):
            parsed = parser.parse(bytes(model))
        else:
            path = Path(model)
            if not path.is_file():
                raise _error(f"ONNX model not found: {path}")
            parsed = parser.parse_from_file(str(path))  # resolves external data next to the file
        if not parsed:
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            first = errors[0] if errors else "unknown error"
            raise _error(f"TensorRT could not parse the ONNX model: {first}")

        config = builder.create_builder_config()
        workspace_mb = self.workspace_mb
        if workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        self._apply_precision(trt, network, config, precision)

        shapes: dict[str, tuple[int, ...]] = {}
        profile = builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if tensor.is_shape_tensor:
                raise _error(f"input {tensor.name!r} is a shape tensor; time this model with "
                             "time_with_trtexec instead")
            model_shape = tuple(tensor.shape)
            shape = _resolve_shape(tensor.name, model_shape, batch, input_shapes)
            shapes[tensor.name] = shape
            if any(d < 0 for d in model_shape):
                dynamic = True
                profile.set_shape(tensor.name, shape, shape, shape)
        if dynamic:
            config.add_optimization_profile(profile)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise _error(f"TensorRT failed to build a {precision} engine (see the TensorRT log)")
        return bytes(serialized), shapes

    @staticmethod
    def _apply_precision(trt: Any, network: Any, config: Any, precision: str) -> None:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision != "int8":
            return
        config.set_flag(trt.BuilderFlag.INT8)
        has_qdq = any(
            network.get_layer(i).type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
            for i in range(network.num_layers)
        )
        if has_qdq:
            return
        # No Q/DQ and no calibrator: give every tensor a placeholder range, as trtexec --int8
        # does.  The engine's numbers are meaningless; its speed is what we measure.
        tensors: list[Any] = [network.get_input(i) for i in range(network.num_inputs)]
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            tensors.extend(layer.get_output(j) for j in range(layer.num_outputs))
        for tensor in tensors:
            if hasattr(tensor, "set_dynamic_range"):
                tensor.set_dynamic_range(-4.0, 4.0)

    def build_engine(
        self,
        model: ModelLike,
        out_plan: str | os.PathLike[str],
        precision: Precision = "fp16",
        *,
        batch: int | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> Path:
        """Build a serialized TensorRT engine from an ONNX model and write it to ``out_plan``."""
        self._check_precision(precision)
        trt = self._require_trt()
        serialized, _ = self._build_serialized(trt, self._logger(trt), model, precision, batch,
                                               input_shapes or {})
        out = Path(out_plan)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(serialized)
        return out

    # -- timing through the Python API -------------------------------------------------

    def measure_onnx(
        self,
        model: ModelLike,
        precision: Precision = "fp16",
        batch: int | None = None,
        warmup: int = 10,
        iters: int = 100,
        *,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> TrtMeasurement:
        """Build an engine and time ``iters`` runs of ``execute_async_v3`` with CUDA events.

        ``batch`` overrides a dynamic first dimension (dynamic: 1 when ``None``);
        ``input_shapes`` fixes any input's full shape.  Inputs are random floats or zeros.
        Each sample brackets one enqueue with events on an otherwise idle stream, so for
        very small engines it includes the launch gap that trtexec's pipelined
        ``GPU Compute Time`` hides.
        """
        self._check_precision(precision)
        if iters < 1 or warmup < 0:
            raise _error(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
        trt = self._require_trt()
        logger = self._logger(trt)
        serialized, shapes = self._build_serialized(trt, logger, model, precision, batch,
                                                    input_shapes or {})
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise _error("TensorRT could not deserialize the engine it just built")
        context = engine.create_execution_context()
        if context is None:
            raise _error("TensorRT could not create an execution context (out of GPU memory?)")

        cuda = _open_cuda()
        try:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            for name in inputs:
                if not context.set_input_shape(name, shapes[name]):
                    raise _error(f"TensorRT rejected shape {shapes[name]} for input {name!r}")
            for name in names:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise _error(f"output {name!r} has a data-dependent shape {shape}; time this "
                                 "model with time_with_trtexec instead")
                nbytes, fill = _nbytes(shape, engine.get_tensor_dtype(name))
                ptr = cuda.alloc(nbytes, fill if name in inputs else None)
                context.set_tensor_address(name, ptr)
            cuda.synchronize()  # input buffers are filled before the first run

            handle = cuda.stream_handle

            def run() -> None:
                if not context.execute_async_v3(handle):
                    raise _error("execute_async_v3 failed (see the TensorRT log)")

            for _ in range(warmup):
                run()
            cuda.synchronize()
            samples = tuple(cuda.time_call(run) for _ in range(iters))
            device = cuda.device_name
        finally:
            cuda.close()
        return TrtMeasurement(
            samples_ms=samples,
            precision=precision,
            input_shapes=tuple((n, shapes[n]) for n in sorted(shapes)),
            trt_version=str(trt.__version__),
            device=device,
        )

    def time_onnx(
        self,
        model: ModelLike,
        precision: Precision = "fp16",
        batch: int | None = None,
        warmup: int = 10,
        iters: int = 100,
        *,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> float:
        """Median GPU time in ms of one inference (see :meth:`measure_onnx`)."""
        return self.measure_onnx(model, precision, batch, warmup, iters,
                                 input_shapes=input_shapes).median_ms

    # -- timing through trtexec --------------------------------------------------------

    def trtexec_command(
        self,
        model: str | os.PathLike[str],
        precision: Precision = "fp16",
        *,
        shapes: Mapping[str, Sequence[int]] | None = None,
        warmup_ms: int = 200,
        iterations: int = 100,
        duration_s: int = 3,
        export_profile: str | os.PathLike[str] | None = None,
        extra_args: Iterable[str] = (),
        trtexec: str = "trtexec",
    ) -> list[str]:
        """The trtexec command line :meth:`time_with_trtexec` runs.

        ``int8`` adds ``--fp16`` too, so layers without INT8 kernels fall back to FP16;
        without calibration data trtexec uses placeholder scales (fine for timing).
        """
        self._check_precision(precision)
        cmd = [trtexec, f"--onnx={os.fspath(model)}"]
        if precision == "fp16":
            cmd.append("--fp16")
        elif precision == "int8":
            cmd += ["--int8", "--fp16"]
        if shapes:
            cmd.append(f"--shapes={_shape_arg(shapes)}")
        cmd += [f"--warmUp={int(warmup_ms)}", f"--iterations={int(iterations)}",
                f"--duration={int(duration_s)}"]
        if export_profile is not None:
            # --separateProfileRun keeps the performance summary free of profiler overhead.
            cmd += [f"--exportProfile={os.fspath(export_profile)}", "--dumpProfile",
                    "--separateProfileRun"]
        cmd += list(extra_args)
        return cmd

    def time_with_trtexec(
        self,
        model: str | os.PathLike[str],
        precision: Precision = "fp16",
        batch: int | None = None,
        *,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        warmup_ms: int = 200,
        iterations: int = 100,
        duration_s: int = 3,
        profile_layers: bool = True,
        extra_args: Iterable[str] = (),
        timeout_s: float = 1800.0,
    ) -> TrtexecResult:
        """Run ``trtexec`` on an ONNX file and parse its summary (and per-layer profile)."""
        self._check_precision(precision)
        binary = self.trtexec_path()
        if binary is None:
            raise _error("trtexec was not found (install TensorRT on a machine with an NVIDIA GPU, "
                         f"put trtexec on PATH or set TRTEXEC); {FALLBACK_HINT}")
        path = Path(model)
        if not path.is_file():
            raise _error(f"ONNX model not found: {path}")
        shapes: dict[str, tuple[int, ...]] | None = None
        if batch is not None or input_shapes:
            shapes = _onnx_input_shapes(path, batch, input_shapes or {}) or None

        with tempfile.TemporaryDirectory(prefix="halp-trtexec-") as tmp:
            profile_path = Path(tmp) / "profile.json" if profile_layers else None
            cmd = self.trtexec_command(
                path, precision, shapes=shapes, warmup_ms=warmup_ms, iterations=iterations,
                duration_s=duration_s, export_profile=profile_path, extra_args=extra_args,
                trtexec=binary,
            )
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                                      timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired as exc:
                raise _error(f"trtexec did not finish within {timeout_s:g} s") from exc
            except OSError as exc:
                raise _error(f"cannot run trtexec at {binary}: {exc.strerror or exc}") from exc
            log = proc.stdout + ("\n" + proc.stderr if proc.stderr else "")
            if proc.returncode != 0:
                first_error = next(
                    (ln.message for ln in _lines(log) if ln.level == "E" and ln.message), None
                )
                detail = first_error or (log.strip().splitlines() or ["no output"])[-1]
                raise _error(f"trtexec exited with status {proc.returncode}: {detail}")
            summary = parse_trtexec_log(log)
            layers: tuple[LayerTiming, ...] = ()
            if profile_path is not None and profile_path.is_file():
                layers = tuple(parse_export_profile(profile_path))
        return TrtexecResult(summary=summary, layers=layers, command=tuple(cmd), log=log)
