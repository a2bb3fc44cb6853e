"""Fitted latency tables: a signature's in-context times as a function of its widths, on the runtime's steps.

onnxruntime's CPU provider runs a 2-D convolution on its blocked NCHWc kernels when the widths allow
it and on the plain NCHW path (im2col + GEMM) otherwise; on the blocked kernels the channels are padded
to the block (16 floats with AVX-512, 8 with AVX2), so the time is a staircase of step *block* in both
widths, and a width that falls off the blocked kernels can cost more than the dense one. The
:class:`LayoutRule` says which widths take which path; it is *seen*, not assumed: :func:`probe_rule`
asks the graph optimiser what it does to small convolutions of each width (onnxruntime 1.32 takes an
input width that is a multiple of 4 and pads it; older releases needed a multiple of the block).

A fitted table is, per layout class, a small linear model in the padded widths
(``1, c_in, c_out, c_in * c_out`` for a GEMM-like block; ``1, c`` where both widths move together),
fitted by least squares on relative error to the measured points, and at the cells of padded widths
that were measured (the dense widths, the knapsack's steps) the line's miss there, shrunk toward the
line by the cell's number of points (:func:`_cells`). Whether the staircase is really
there is decided by the data too: the model on widths padded to the block is kept only where it fits
the measurements better than the one on raw widths (``quant``).
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from .signature import MEMORY_BOUND_OPS, BlockSignature

NCHWC_DOMAIN = "com.microsoft.nchwc"
MIN_MS = 1e-4
# relative errors are taken against at least this (ms): in-context times of a few microseconds carry
# microseconds of noise (and a glue op's time less the per-node correction can read zero or below), so
# a point of 0.1 us would otherwise outweigh every point of real size
NOISE_MS = 2e-3
# the version of the fitting below a table's ``fit`` records: a fit an earlier version made (a stored
# profile) is fitted again from its points when read (:func:`refit_stale`)
FIT_VERSION = 8
# a class's line runs through every width it was measured at; at a cell of padded widths that was measured
# (the dense widths, the knapsack's steps: the widths a compiled model runs at) the line's miss is kept
# too, shrunk toward the line as n / (n + CELL_PRIOR) for the cell's n points (one point: half its miss)
CELL_PRIOR = 1.0


@dataclass(frozen=True)
class LayoutRule:
    """When onnxruntime runs a convolution on its NCHWc kernels (widths padded to ``block``)."""

    block: int = 1  # 1: never
    in_multiple: int = 1  # a dense conv's c_in >= block must be a multiple of this
    depthwise_multiple: int = 1

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "LayoutRule":
        d = d or {}
        return cls(int(d.get("block", 1)), int(d.get("in_multiple", 1)), int(d.get("depthwise_multiple", 1)))

    @property
    def width_multiple(self) -> int:
        """The channel multiple that keeps a width on the blocked kernels (a dense convolution's input, a
        depthwise one's width); 1 where there are none."""
        return max(self.in_multiple, self.depthwise_multiple) if self.block > 1 else 1


def _converted(ci: int, co: int, group: int) -> bool:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((co, ci // group, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1], group=group)],
                          "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ci, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, co, 6, 6])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with tempfile.TemporaryDirectory(prefix="halp-nchwc-") as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = os.path.join(tmp, "o.onnx")
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath)
    return any(n.domain == NCHWC_DOMAIN and n.op_type == "Conv" for n in opt.graph.node)


def probe_rule() -> LayoutRule:
    """The :class:`LayoutRule` of the onnxruntime here, from what its optimiser does to a few
    single-convolution models (a few hundredths of a second each)."""
    if not _converted(32, 32, 1):
        return LayoutRule()  # no NCHWc kernels here
    # below the block an NCHW input is read directly; the first odd width that is not converted
    # lies just above it
    odd = next((c for c in range(1, 66, 2) if not _converted(c, 16, 1)), None)
    if odd is not None:
        block = 1 << int(math.floor(math.log2(max(odd - 1, 1))))
    else:  # every width converts: the depthwise kernels still need whole blocks
        block = next((c for c in (4, 8, 16, 32) if _converted(c, c, c)), 1)
    if block <= 1:
        return LayoutRule()
    in_multiple = next((q for q in (1, 2, 4, 8, 16) if q < block and _converted(block + q, block, 1)), block)
    dw = next((q for q in (1, 2, 4, 8, 16) if q < block and _converted(block + q, block + q, block + q)), block)
    return LayoutRule(block, in_multiple, dw)


# ---------------------------------------------------------------------------------------- classes
def kind_of(sig: BlockSignature) -> str:
    if sig.op in MEMORY_BOUND_OPS:
        return "memory"
    if sig.op == "Conv" and len(sig.kernel) == 2:
        if sig.groups == "dense":
            return "conv"
        if sig.is_depthwise:
            return "depthwise"
        return "grouped"
    return "gemm"


def diagonal_kind(kind: str) -> bool:
    return kind in ("memory", "depthwise", "grouped")


def _pad(c: int, q: int) -> int:
    return q * math.ceil(c / q) if q > 1 else c


def layout_class(kind: str, rule: LayoutRule, ci: int, co: int, cpg: int = 1, split: int = 0) -> str:
    """``"nchwc"`` (blocked kernels, widths padded), ``"direct"`` (blocked output, an NCHW input of fewer
    channels than the block), ``"nchw"`` or ``"any"`` (no layout choice for this kind). A memory-bound
    op is ``"nchwc"`` at whole blocks of channels: there it may run on the blocked tensors of its
    neighbours or be absorbed by them (DenseNet's BatchNormalization after a concat reads no time at
    16, 32, 48... channels and 5-60 us between), and a fit across both would price neither. Which widths
    those are depends on the neighbours: ``split`` (the fit's, seen in the data) is the channel multiple
    that divides them, the block when not given (a squeeze-excitation ``Mul`` after a depthwise
    convolution pays for a layout reorder at every multiple of 4, where the depthwise kernel is
    blocked)."""
    b = rule.block
    if b <= 1 or kind == "gemm":
        return "any"
    if kind == "memory":  # on blocked tensors (whole blocks of channels) or plain ones: two kernels
        return "nchwc" if co % (split or b) == 0 else "nchw"
    if kind == "conv":
        if ci < b:
            return "direct"
        return "nchwc" if ci % rule.in_multiple == 0 else "nchw"
    if kind == "depthwise":
        return "nchwc" if co % rule.depthwise_multiple == 0 else "nchw"
    groups = max(ci // max(cpg, 1), 1)  # grouped: channels per group fixed
    return "nchwc" if cpg % b == 0 and co % groups == 0 and (co // groups) % b == 0 else "nchw"


def features(kind: str, cls: str, ci: int, co: int, quant: int) -> np.ndarray:
    """The regressors of one point: padded widths on the blocked kernels when ``quant`` > 1."""
    if kind == "memory":  # blocked (padded) where its neighbours are, plain elsewhere: both regressors
        return np.array([1.0, float(co), float(_pad(co, quant))])
    q = quant if cls in ("nchwc", "direct") else 1
    pi = _pad(ci, q) if cls == "nchwc" else ci
    po = _pad(co, q)
    if diagonal_kind(kind):
        return np.array([1.0, float(po)])
    return np.array([1.0, float(pi), float(po), float(pi) * float(po)])


# ---------------------------------------------------------------------------------------- fitting
def _rel_rms(pred: np.ndarray, y: np.ndarray, scale: np.ndarray | None = None) -> float:
    """The RMS of ``pred``'s error relative to the measured ``y`` (or to ``scale``; taken against at
    least NOISE_MS)."""
    return float(np.sqrt(np.mean(((pred - y) / np.maximum(y if scale is None else scale, NOISE_MS)) ** 2)))


def _solve(x: np.ndarray, y: np.ndarray, scale: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Least squares on relative error (relative to ``scale``, the points themselves unless given);
    returns coefficients and the RMS residual relative to the points."""
    w = 1.0 / np.maximum(y if scale is None else scale, NOISE_MS)
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    a = (x / scale) * w[:, None]
    coef, *_ = np.linalg.lstsq(a, y * w, rcond=1e-9)
    coef = coef / scale
    pred = np.maximum(x @ coef, MIN_MS)
    return coef, _rel_rms(pred, y)


def _lowest(kind: str, y: np.ndarray) -> float:
    """How far below zero a fitted time may go: a compute block's in-context time carries the per-node
    correction (negative where the profiler inflates every kernel by more than a node costs a real
    run), so a small block reads a few microseconds below zero, as the lowest point shows; a
    memory-bound op's near-nothing points are kernels its neighbours absorbed, not a line to follow
    below zero."""
    return MIN_MS if kind == "memory" else min(MIN_MS, float(y.min())) - NOISE_MS


def _nonnegative(x: np.ndarray, y: np.ndarray, scale: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """:func:`_solve` with every coefficient >= 0 (a kernel's time never falls as a width grows, and
    is never below nothing): exact over the few regressors, every subset of them tried, the best
    feasible kept."""
    best: tuple[np.ndarray, float, float] | None = None
    p = x.shape[1]
    floor = np.maximum(y, MIN_MS)  # a glue op's time less the per-node correction can read below zero
    for mask in range(1, 2 ** p):
        cols = [j for j in range(p) if mask >> j & 1]
        sub, _ = _solve(x[:, cols], floor, scale)
        if (sub < 0).any():
            continue
        coef = np.zeros(p)
        coef[cols] = sub
        pred = np.maximum(x @ coef, MIN_MS)
        crit = _rel_rms(pred, y, scale)
        if best is None or crit < best[2]:
            best = (coef, _rel_rms(pred, y), crit)
    assert best is not None  # one non-negative regressor alone always fits positive times non-negatively
    return best[0], best[1]


def _corners(kind: str, cls: str, pts: list[tuple[int, int, float]], quant: int) -> np.ndarray:
    """The regressors at the corners of the widths the table spans, from one channel up: where a
    model linear in ``c_in``, ``c_out`` and their product is smallest."""
    ci_hi, co_hi = max(ci for ci, _, _ in pts), max(co for _, co, _ in pts)
    return np.stack([features(kind, cls, ci, co, quant) for ci in (1, ci_hi) for co in (1, co_hi)])


def _fit_class(kind: str, cls: str, pts: list[tuple[int, int, float]], quant: int) -> tuple[list[float], float]:
    x = np.stack([features(kind, cls, ci, co, quant) for ci, co, _ in pts])
    y = np.asarray([t for _, _, t in pts])
    distinct = len({(ci, co) for ci, co, _ in pts})
    if distinct < 2 or distinct < x.shape[1] - 1:  # too few to fit a line: proportional to the work
        work = x[:, -1]
        k = float(np.sum(y * work) / max(np.sum(work * work), 1e-30))
        coef = np.zeros(x.shape[1])
        coef[-1] = k
        pred = np.maximum(x @ coef, MIN_MS)
        return coef.tolist(), _rel_rms(pred, y)
    coef, err = _solve(x, y)
    nonneg = bool((_corners(kind, cls, pts, quant) @ coef < _lowest(kind, y)).any())
    if nonneg:
        # the free fit goes below the points somewhere in the table (points of large widths from other
        # models sharing the signature, extrapolated down): refit with no coefficient below zero
        coef, err = _nonnegative(x, y)
    if kind == "gemm":
        # a batch-1 classifier GEMM reads its weights once: from cache or from memory as the shared
        # machine's state has it, so its points at one width split into a fast and a slow mode 2x apart
        # (MobileNetV3-Small's 1024x1000: 87-105 us and 200-260 us). Errors relative to each point price
        # the fast mode (the slow points weigh half); relative to the fit (two reweightings) the mean of
        # the modes. Where the points agree (any GEMM without modes) both weightings fit alike
        for _ in range(2):
            scale = np.maximum(x @ coef, NOISE_MS)
            coef, err = _nonnegative(x, y, scale) if nonneg else _solve(x, y, scale)
    return coef.tolist(), err


def _cell_key(f: np.ndarray) -> str:
    """A cell's name: its (padded) widths, the regressors after the constant and before any product."""
    return ",".join(f"{v:g}" for v in f[1:3])


def _cells(kind: str, cls: str, pts: list[tuple[int, int, float]], quant: int, coef: list[float]
           ) -> dict[str, float]:
    """Per measured cell of regressors (padded widths): the factor from the fitted line to the cell's
    points (median log ratio, shrunk by :data:`CELL_PRIOR`, kept in [0.5, 2]); points and fits below
    NOISE_MS (a few microseconds of a glue op) say nothing about a ratio and are left out."""
    c = np.asarray(coef)
    logs: dict[str, list[float]] = {}
    for ci, co, t in pts:
        f = features(kind, cls, ci, co, quant)
        line = float(f @ c)
        if t >= NOISE_MS and line >= NOISE_MS:
            logs.setdefault(_cell_key(f), []).append(math.log(t / line))
    out = {}
    for key, vals in logs.items():
        r = float(np.median(vals)) * len(vals) / (len(vals) + CELL_PRIOR)
        if abs(r) > 0.005:
            out[key] = round(math.exp(float(np.clip(r, -math.log(2), math.log(2)))), 5)
    return out


def fit_points(sig: BlockSignature, points: Mapping[tuple[int, int], float], rule: LayoutRule) -> dict[str, Any]:
    """The fitted model of one signature from measured ``(c_in, c_out) -> ms`` points."""
    kind = kind_of(sig)
    cpg = sig.channels_per_group or 1
    if kind != "memory" and any(t >= MIN_MS for t in points.values()):
        # a compute kernel never runs in no time: a point of exactly 0 ms is a block that none of the
        # profiler's events reached in that run, and on relative error it would outweigh every other
        # point (one below zero was reached: its kernels less the per-node correction, kept)
        points = {p: t for p, t in points.items() if t != 0.0}
    if kind == "memory" and rule.block > 1:
        # where its neighbours change layout, seen: the channel multiple that splits the points best (the
        # block unless another fits clearly better)
        cands = [_fit_split(kind, rule, cpg, points, q) for q in sorted({rule.block, rule.depthwise_multiple,
                                                                             rule.in_multiple, rule.block // 2})
                 if 1 < q <= rule.block]
        base = next(f for f in cands if f["split"] == rule.block)
        best = min(cands, key=lambda f: f["rms"])
        return best if best["rms"] < 0.9 * base["rms"] else base
    return _fit_split(kind, rule, cpg, points, 0)


def _fit_split(kind: str, rule: LayoutRule, cpg: int, points: Mapping[tuple[int, int], float], split: int
               ) -> dict[str, Any]:
    by_cls: dict[str, list[tuple[int, int, float]]] = {}
    for (ci, co), t in points.items():
        by_cls.setdefault(layout_class(kind, rule, ci, co, cpg, split), []).append((ci, co, float(t)))
    fits: dict[int, dict[str, Any]] = {}
    rms: dict[int, float] = {}
    for q in sorted({1, rule.block}):
        classes: dict[str, Any] = {}
        errs, n = 0.0, 0
        for cls, pts in by_cls.items():
            coef, err = _fit_class(kind, cls, pts, q)
            classes[cls] = {"coef": coef, "rms": err, "n": len(pts)}
            errs += err * err * len(pts)
            n += len(pts)
        rms[q] = math.sqrt(errs / max(n, 1))
        fits[q] = {"kind": kind, "quant": q, "rule": rule.to_dict(), "cpg": cpg, "classes": classes, "rms": rms[q]}
    # the blocked kernels pad to the block (the probed rule); ``staircase_seen``: the padded model fits
    # these measurements at least as well as one on raw widths
    q = max(fits)
    best = dict(fits[q])
    if kind != "gemm":  # no cells for a GEMM: its points' two modes are priced at their mean (_fit_class)
        for cls, pts in by_cls.items():  # cells for the fit that is kept only
            cells = _cells(kind, cls, pts, q, best["classes"][cls]["coef"])
            if cells:
                best["classes"][cls]["cells"] = cells
    best["rms_raw"] = rms[1]
    best["staircase_seen"] = bool(rule.block > 1 and rms[q] <= rms[1] * 1.02)
    best["version"] = FIT_VERSION
    if split:
        best["split"] = split
    return best


def refit_stale(tables: Mapping[str, Any]) -> int:
    """Fit again, from their in-context points, the tables (``key -> LatencyTable``) whose ``fit`` an
    earlier version of this module made; returns how many."""
    n = 0
    for key, table in tables.items():
        if not table.fit or table.fit.get("version") == FIT_VERSION:
            continue
        pts = {}
        for k, v in table.points.items():
            if table.sources.get(k) == "incontext":
                a, b = k.split(",")
                pts[(int(a), int(b))] = float(v)
        if pts:
            table.fit = fit_points(BlockSignature.from_key(key), pts, LayoutRule.from_dict(table.fit.get("rule")))
            table.step = fit_step(table.fit, table.c_in_max, table.c_out_max)
            n += 1
    return n


def evaluate(fit: Mapping[str, Any], ci: int, co: int) -> float:
    """ms at ``(c_in, c_out)`` from a fitted model (a class without points borrows a neighbour's)."""
    kind = fit["kind"]
    rule = LayoutRule.from_dict(fit.get("rule"))
    cls = layout_class(kind, rule, ci, co, int(fit.get("cpg", 1)), int(fit.get("split", 0)))
    classes = fit["classes"]
    if cls not in classes:
        order = {"nchwc": ("direct", "nchw", "any"), "direct": ("nchwc", "nchw", "any"),
                 "nchw": ("nchwc", "direct", "any"), "any": ("nchwc", "nchw", "direct")}[cls]
        cls_use = next((c for c in order if c in classes), next(iter(classes)))
    else:
        cls_use = cls
    # a class never measured borrows a neighbour's coefficients, on its own regressors (an NCHW input of
    # fewer channels than the block is not padded) or on the neighbour's, whichever costs more: a path
    # nothing measured is never priced below the measured one at the next step (MobileNetV3-Small's 1x1
    # convolutions reading 12 channels ran at 46 us on the direct path, 3x their 16-channel time, where
    # the unpadded borrowing priced them at 12 us and the knapsack squeezed them there)
    q = int(fit.get("quant", 1))
    coef = np.asarray(classes[cls_use]["coef"])
    f = features(kind, cls, ci, co, q)
    ms = float(f @ coef)
    if cls_use != cls:
        ms = max(ms, float(features(kind, cls_use, ci, co, q) @ coef))
    elif ms >= NOISE_MS:
        ms *= float(classes[cls].get("cells", {}).get(_cell_key(f), 1.0))  # a measured cell's own miss
    return max(ms, MIN_MS)


def fit_step(fit: Mapping[str, Any], ci_max: int, co_max: int) -> int:
    """The neuron-group size the runtime's kernels ask for at the dense widths: the padding step where
    the dense block runs on the blocked kernels and the staircase was seen, else 1."""
    if fit["kind"] == "grouped":  # whole convolution groups: the output channels of one group
        return max(co_max // max(ci_max // max(int(fit.get("cpg", 1)), 1), 1), 1)
    rule = LayoutRule.from_dict(fit.get("rule"))
    q = int(fit.get("quant", 1))
    if q <= 1 or not fit.get("staircase_seen", True):
        return 1
    cls = layout_class(fit["kind"], rule, ci_max, co_max, int(fit.get("cpg", 1)), int(fit.get("split", 0)))
    return q if cls in ("nchwc", "direct") or fit["kind"] == "memory" else 1
