"""Parser for ``polygraphy run`` logs (:func:`parse_polygraphy_log`)."""
from __future__ import annotations

import re

from .common import _NUM, TextLike, _error, _lines, _num, _to_text
from .records import PolygraphyResult, PolygraphyRun

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
