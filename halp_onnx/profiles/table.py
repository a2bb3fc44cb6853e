"""Latency table of one block signature: a sparse 2-D staircase over (c_in, c_out).

Sampling (:func:`sample`) takes a ``measure(c_in, c_out) -> ms`` callable and a cache of points
already measured (so an interrupted profile resumes and a second model re-uses the first's points):

1. **Step detection**: scan ``c_out`` downwards from its largest value one channel at a time
   (at the largest ``c_in``); a drop larger than the noise marks a step boundary; the step is the
   most common distance between boundaries (1 when latency is smooth, the window when it is flat).
   That step is the neuron-group size the knapsack uses for the layer.
2. **Coarse grid** of step-aligned widths on each varying axis, **refined** along the line at the
   other axis' maximum: between two neighbours, the aligned midpoint is measured and kept when
   linear interpolation misses it by more than 2 % (recursively, a few levels).
3. The **product** of the coarse axes is measured (a few points per axis), so input-channel
   dependence is real 2-D data; the refined lines correct it along each axis.
4. **Misaligned widths**: the ratio of a width to its step-aligned ceiling is taken from the scan
   window (``c_out``) and from a few measured points (``c_in``) per residue modulo the step.

That is the *isolated* table (each point a one-block model, ``sources`` ``"isolated"``). A table
fitted from in-context measurements (:mod:`.incontext`, :mod:`.fit`) keeps its measured points with
source ``"incontext"`` and a ``fit`` (per layout class, a linear model in the widths padded to the
runtime's channel block) that :meth:`LatencyTable.lookup` evaluates instead of interpolating.

:meth:`LatencyTable.lookup` returns ms for any ``(c_in, c_out)`` in range; every point used is
either measured (kept in ``points``) or interpolated from them (:meth:`LatencyTable.is_measured`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import HalpError

STAGE = "profiles"
SCAN = 33  # channels scanned at the top of c_out for step detection
REFINE_TOL = 0.02
REFINE_DEPTH = 3
COARSE = (0.25, 0.5, 0.75)

Measure = Callable[[int, int], float]


def _ceil(c: int, step: int, top: int) -> int:
    return min(top, step * math.ceil(c / step))


def _key(ci: int, co: int) -> str:
    return f"{ci},{co}"


@dataclass
class LatencyTable:
    """Measured points of one signature and what sampling found; JSON round-trips via to_dict."""

    c_in_max: int
    c_out_max: int
    vary_in: bool
    vary_out: bool
    diagonal: bool  # c_in == c_out always (depthwise convs, memory-bound ops)
    c_in_multiple: int = 1  # grouped convs: c_in must stay a multiple of this
    smooth: bool = False  # memory-bound op: linear in channels, no staircase scan
    step: int = 1
    grid_in: list[int] = field(default_factory=list)
    grid_out: list[int] = field(default_factory=list)
    line_in: list[int] = field(default_factory=list)  # refined c_in values at c_out = c_out_max
    line_out: list[int] = field(default_factory=list)  # refined c_out values at c_in = c_in_max
    ratio_in: dict[int, float] = field(default_factory=dict)  # residue -> T(c) / T(ceil(c))
    ratio_out: dict[int, float] = field(default_factory=dict)
    points: dict[str, float] = field(default_factory=dict)
    complete: bool = False
    sources: dict[str, str] = field(default_factory=dict)  # point key -> "incontext" | "isolated" (default)
    fit: dict[str, Any] = field(default_factory=dict)  # in-context model (profiles.fit); empty: interpolate
    transferred: bool = False  # measured on another device / runtime, scaled by the profile's recalibration

    @property
    def source(self) -> str:
        """``"incontext"`` for a table fitted from whole-model runs, ``"isolated"`` for one-block timing."""
        return "incontext" if self.fit else "isolated"

    def point_source(self, c_in: int, c_out: int) -> str | None:
        k = _key(c_in, c_out)
        return self.sources.get(k, "isolated") if k in self.points else None

    # ------------------------------------------------------------------ lookup
    def _t(self, ci: int, co: int) -> float:
        return self.points[_key(ci, co)]

    def is_measured(self, c_in: int, c_out: int) -> bool:
        return _key(c_in, c_out) in self.points

    def _line(self, axis_vals: list[int], c: float, value: Callable[[int], float]) -> float:
        xs = np.asarray(axis_vals, dtype=float)
        ys = np.asarray([value(v) for v in axis_vals], dtype=float)
        if len(xs) == 1:
            return float(ys[0])
        if c <= xs[0]:  # below the smallest sample: linear towards it from the first segment
            slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
            return float(max(ys[0] + slope * (c - xs[0]), 0.05 * ys[0]))
        return float(np.interp(c, xs, ys))

    def _aligned(self, ci: int, co: int) -> float:
        """Latency at step-aligned widths: coarse 2-D grid, corrected by the refined lines."""
        gi, go = self.grid_in, self.grid_out
        if self.diagonal:
            return self._line(self.line_out, co, lambda c: self._t(self.diag_in(c), c))
        # bilinear on the coarse grid
        def row(ci_: int) -> float:
            return self._line(go, co, lambda c: self._t(ci_, c))

        base = self._line(gi, ci, row)
        if self.vary_out and len(self.line_out) > len(go):
            fine = self._line(self.line_out, co, lambda c: self._t(self.c_in_max, c))
            coarse = self._line(go, co, lambda c: self._t(self.c_in_max, c))
            base *= fine / coarse if coarse > 0 else 1.0
        if self.vary_in and len(self.line_in) > len(gi):
            fine = self._line(self.line_in, ci, lambda c: self._t(c, self.c_out_max))
            coarse = self._line(gi, ci, lambda c: self._t(c, self.c_out_max))
            base *= fine / coarse if coarse > 0 else 1.0
        return base

    def lookup(self, c_in: int, c_out: int) -> float:
        """Predicted ms at ``(c_in, c_out)`` (measured value where that point was measured)."""
        if self.diagonal:
            c_in = self.diag_in(c_out)
        if not self.vary_in:
            c_in = self.c_in_max
        if not self.vary_out:
            c_out = self.c_out_max
        if c_in <= 0 or c_out <= 0:
            return 0.0
        c_in, c_out = min(c_in, self.c_in_max), min(c_out, self.c_out_max)
        if self.fit:
            from .fit import evaluate

            return evaluate(self.fit, c_in, c_out)
        if _key(c_in, c_out) in self.points:
            return self.points[_key(c_in, c_out)]
        s = self.step
        ai = _ceil(c_in, self._in_step, self.c_in_max) if self.vary_in else c_in
        ao = _ceil(c_out, s, self.c_out_max)
        value = self._aligned(ai, ao)
        if ao != c_out:
            value *= self.ratio_out.get(ao - c_out, 1.0)
        if ai != c_in:
            value *= self.ratio_in.get(ai - c_in, 1.0)
        return value

    def diag_in(self, c_out: int) -> int:
        """c_in of a diagonal table at ``c_out`` (depthwise multipliers keep their ratio)."""
        return max(1, c_out * self.c_in_max // self.c_out_max)

    @property
    def _in_step(self) -> int:
        return math.lcm(self.step, self.c_in_multiple)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ratio_in"] = {str(k): v for k, v in self.ratio_in.items()}
        d["ratio_out"] = {str(k): v for k, v in self.ratio_out.items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        d = dict(data)
        d["ratio_in"] = {int(k): float(v) for k, v in d.get("ratio_in", {}).items()}
        d["ratio_out"] = {int(k): float(v) for k, v in d.get("ratio_out", {}).items()}
        d["points"] = {str(k): float(v) for k, v in d.get("points", {}).items()}
        try:
            return cls(**d)
        except TypeError as exc:
            raise HalpError(f"latency table: bad entry ({exc})", stage=STAGE) from None

    def covers(self, c_in_max: int, c_out_max: int, vary_in: bool = False, vary_out: bool = False) -> bool:
        """Whether this table answers every width up to these maxima (a pruned model reuses the
        table of its dense original)."""
        if not self.complete or c_in_max > self.c_in_max or c_out_max > self.c_out_max:
            return False
        if (vary_in and not self.vary_in and c_in_max != self.c_in_max) or (
                vary_out and not self.vary_out and c_out_max != self.c_out_max):
            return False
        fixed_ok = (self.vary_in or c_in_max == self.c_in_max) and (self.vary_out or c_out_max == self.c_out_max)
        return fixed_ok

    def summary(self) -> dict[str, Any]:
        return {"step": self.step, "measured_points": len(self.points), "c_in_max": self.c_in_max,
                "c_out_max": self.c_out_max}


# ---------------------------------------------------------------------------------------- sampling
def detect_step(values: Mapping[int, float]) -> int:
    """Step of a staircase from consecutive widths ``c -> ms`` (a downward scan)."""
    cs = sorted(values)
    if len(cs) < 3:
        return 1
    t = np.asarray([values[c] for c in cs])
    rel = np.diff(t) / t[1:]  # rise from c to c+1
    noise = float(np.median(np.abs(rel)))
    thr = max(0.015, 4.0 * noise)
    jumps = [cs[i + 1] for i in np.nonzero(rel > thr)[0]]  # first width of each higher stair
    total = (t[-1] - t[0]) / t[-1]
    if len(jumps) >= 2:
        gaps = np.diff(jumps)
        vals, counts = np.unique(gaps, return_counts=True)
        best = vals[counts == counts.max()]
        return int(best.min())
    if len(jumps) == 1:
        # one boundary inside the window: the stair is at least as wide as what lies on each side
        return int(max(jumps[0] - cs[0], cs[-1] - jumps[0] + 1, 1)) if total > thr else len(cs)
    return 1 if total > thr else 1 << int(math.log2(len(cs) - 1)) if len(cs) > 2 else 1


def _aligned_axis(top: int, step: int, fracs=COARSE) -> list[int]:
    vals = {min(step, top), top}
    for f in fracs:
        vals.add(_ceil(max(1, int(round(f * top))), step, top))
    return sorted(vals)


def _refine(axis: list[int], step: int, value: Callable[[int], float], depth: int = REFINE_DEPTH) -> list[int]:
    """Insert aligned midpoints where linear interpolation misses by more than REFINE_TOL."""
    out = list(axis)
    for _ in range(depth):
        added = False
        new = [out[0]]
        for a, b in zip(out, out[1:]):
            if (b - a) >= 2 * step:
                m = _ceil((a + b) // 2, step, b)
                if a < m < b:
                    ta, tb, tm = value(a), value(b), value(m)
                    guess = ta + (tb - ta) * (m - a) / (b - a)
                    if abs(tm - guess) > REFINE_TOL * tm:
                        new.append(m)
                        added = True
            new.append(b)
        out = new
        if not added:
            break
    return out


def sample(table: LatencyTable, measure: Measure, *, on_point: Callable[[], None] | None = None,
           extra: tuple[tuple[int, int], ...] = ()) -> LatencyTable:
    """Fill ``table`` (its domain set, ``points`` possibly holding earlier measurements) in place;
    ``extra`` points (e.g. each block's dense widths) are measured too."""

    def t(ci: int, co: int) -> float:
        k = _key(ci, co)
        if k not in table.points:
            table.points[k] = float(measure(ci, co))
            if on_point is not None:
                on_point()
        return table.points[k]

    ci_max, co_max = table.c_in_max, table.c_out_max
    for ci, co in extra:
        t(ci, co)
    if table.diagonal and table.c_in_multiple > 1:  # grouped conv: whole convolution groups only
        unit = max(co_max // max(ci_max // table.c_in_multiple, 1), 1)
        table.step = unit
        line = sorted({unit * k for k in range(1, co_max // unit + 1)
                       if k in (1, co_max // unit) or k % max(1, (co_max // unit) // 4) == 0})
        for c in line:
            t(table.diag_in(c), c)
        table.line_out, table.grid_in, table.grid_out = line, [], list(line)
        table.complete = True
        return table
    if table.diagonal:
        d = table.diag_in
        window = 0 if table.smooth else SCAN
        scan = {c: t(d(c), c) for c in range(co_max, max(co_max - window, 0), -1)} if table.vary_out else {}
        table.step = detect_step(scan) if scan else 1
        if table.vary_out:
            line = _refine(_aligned_axis(co_max, table.step, (0.5,)), table.step, lambda c: t(d(c), c))
            for c in line:  # refinement skips neighbours closer than two steps: measure every line point
                t(d(c), c)
            table.line_out = line
            table.ratio_out = _ratios(scan, table.step, co_max)
        else:
            table.line_out = [co_max]
            t(ci_max, co_max)
        table.grid_in, table.grid_out = [], list(table.line_out)
        table.complete = True
        return table

    if table.vary_out:
        scan = {c: t(ci_max, c) for c in range(co_max, max(co_max - SCAN, 0), -1)}
        table.step = detect_step(scan)
        table.ratio_out = _ratios(scan, table.step, co_max)
    else:
        table.step = 1
    s_in = table._in_step
    go = _aligned_axis(co_max, table.step) if table.vary_out else [co_max]
    gi = _aligned_axis(ci_max, s_in) if table.vary_in else [ci_max]
    if table.vary_in and table.c_in_multiple > 1:
        gi = [c for c in gi if c % table.c_in_multiple == 0] or [ci_max]
    table.line_out = _refine(go, table.step, lambda c: t(ci_max, c)) if table.vary_out else go
    table.line_in = _refine(gi, s_in, lambda c: t(c, co_max)) if table.vary_in else gi
    for ci in gi:
        for co in go:
            t(ci, co)
    table.grid_in, table.grid_out = gi, go
    if table.vary_in and s_in > 1 and table.c_in_multiple == 1:
        top = _ceil(ci_max, s_in, ci_max)
        base = top if top % s_in == 0 else s_in * (ci_max // s_in)
        if base >= s_in:
            ref = t(base, co_max)
            for r in range(1, s_in):
                c = base - r
                if c >= 1:
                    table.ratio_in[r] = t(c, co_max) / ref
    table.complete = True
    return table


def _ratios(scan: Mapping[int, float], step: int, top: int) -> dict[int, float]:
    """Residue ratios T(c) / T(ceil_step(c)) from the scan window (averaged per residue)."""
    if step <= 1:
        return {}
    acc: dict[int, list[float]] = {}
    for c, v in scan.items():
        a = _ceil(c, step, top)
        if a != c and a in scan and a % step == 0:
            acc.setdefault(a - c, []).append(v / scan[a])
    return {r: float(np.median(v)) for r, v in acc.items()}
