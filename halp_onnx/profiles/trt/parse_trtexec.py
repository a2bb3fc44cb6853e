"""Parsers for ``trtexec`` output, TensorRT 7.2 to 10.x: the stdout log
(:func:`parse_trtexec_log`), ``--dumpProfile`` per-layer tables (:func:`parse_dump_profile`,
:func:`parse_dump_profile_table`) and ``--exportProfile`` JSON (:func:`parse_export_profile`,
:func:`parse_export_profile_table`)."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .common import _NUM, JsonLike, TextLike, _error, _Line, _lines, _load_json, _num, _to_text
from .records import LayerProfile, LayerTiming, TimingStats, TrtexecSummary

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
# --exportProfile JSON
# --------------------------------------------------------------------------------------


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
