"""A profile of another CPU or onnxruntime, brought here with a short recalibration.

A profile applies exactly only on the device and runtime it was measured on. Re-profiling from
scratch on a new machine costs a minute for a small model; most of what a profile knows (which widths
fall off the blocked kernels, how a layer's time grows with its widths) carries over, and what does
not is mostly a speed ratio that differs between compute-bound and memory-bound work. So the source
profile's tables are kept, the runtime's layout rule is probed here (the class of each width follows
the local optimiser), and the user's model is run a few times in context
(:mod:`~halp_onnx.profiles.incontext`): one scale for GEMM-like blocks and one for memory-bound blocks
are fitted by least squares against the in-context per-class totals. The profile is labelled
``transferred`` with its fitted error (whole-model totals of those runs, before and after the
scales); it is saved like a measured one and reused as is next time.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Sequence

import numpy as np

from ..passes.channel_groups import ChannelAnalysis
from ..passes.load import LoadedModel
from .blocks import Block
from .signature import MEMORY_BOUND_OPS, BlockSignature
from .store import Profile

CLASSES = ("gemm", "memory")


def op_class(sig: BlockSignature | str) -> str:
    """``"memory"`` for memory-bound blocks (element-wise, pooling), ``"gemm"`` for the GEMM-like."""
    op = sig.op if isinstance(sig, BlockSignature) else str(sig).split(";", 1)[0]
    return "memory" if op in MEMORY_BOUND_OPS else "gemm"


def fit_scales(measured: np.ndarray, predicted: np.ndarray) -> tuple[dict[str, float], float, float]:
    """Per-class scales from ``measured`` / ``predicted`` per-class totals (rows: runs, columns:
    :data:`CLASSES`), each class fitted on its own columns (least squares, relative to the run's
    total) and kept in [0.2, 5]; returns the scales and the RMS relative error of the whole-run totals
    before and after. Fitting the classes jointly on the totals alone is ill-posed (their totals
    grow together with the widths) and could land on scales that make the totals worse: where the
    per-class scales do, one common scale is used."""
    m = np.asarray(measured, dtype=float)
    p = np.asarray(predicted, dtype=float)
    tot = m.sum(axis=1)
    w2 = 1.0 / np.maximum(tot, 1e-9) ** 2

    def err(scales: np.ndarray) -> float:
        return float(np.sqrt(np.mean(((p * scales).sum(axis=1) / np.maximum(tot, 1e-9) - 1) ** 2)))

    scales = np.ones(p.shape[1])
    for j in range(p.shape[1]):
        den = float(np.sum(w2 * p[:, j] ** 2))
        if den > 0:
            scales[j] = float(np.clip(np.sum(w2 * m[:, j] * p[:, j]) / den, 0.2, 5.0))
    before = err(np.ones(p.shape[1]))
    if err(scales) > before:
        ptot = p.sum(axis=1)
        k = float(np.clip(np.sum(w2 * tot * ptot) / max(float(np.sum(w2 * ptot ** 2)), 1e-30), 0.2, 5.0))
        scales = np.where(p.any(axis=0), k, 1.0)
    after = err(scales)
    return {c: float(scales[j]) for j, c in enumerate(CLASSES[: p.shape[1]])}, before, after


def transfer(source: Profile, source_path: str, loaded: LoadedModel, analysis: ChannelAnalysis,
             blocks: Sequence[Block], backend, fingerprint: dict[str, Any], *, runs: int = 6,
             block_ms: Callable[[Profile, BlockSignature, int, int], float], budget_s: float = 20.0
             ) -> Profile:
    """``source`` recalibrated here on ``runs`` in-context runs of the user's model (dense + random widths).
    ``block_ms(profile, signature, c_in, c_out)`` prices a block from the profile's tables, unscaled."""
    from . import incontext as ic
    from .fit import probe_rule

    t0 = time.perf_counter()
    prof = copy.deepcopy(source)
    prof.fingerprint = dict(fingerprint)
    rule = probe_rule()
    prof.layout = rule.to_dict()
    every = [*prof.tables.values(), *(t for c in prof.contexts.values() for t in c.tables.values())]
    for table in every:
        table.transferred = True
        if table.fit:
            table.fit["rule"] = rule.to_dict()  # widths take the path the local optimiser gives them
    prof.overhead_ms = backend.run_overhead_ms()
    prof.block_time = getattr(backend, "block_time", "run")
    prof.node_overhead_ms = backend.node_overhead_ms() if prof.block_time == "kernel" else 0.0
    # what a node costs a run beyond its profiled kernel time, measured here: the observations below
    # are priced as the source's in-context points were (small blocks are mostly this)
    prof.incontext_node_ms = ic.node_cost(backend, [loaded.model], run_overhead_ms=prof.overhead_ms, runs=8,
                                          fallback=prof.node_overhead_ms)
    first, _ = ic.observe(loaded, analysis, blocks, backend, ic.width_settings(analysis, blocks, 1, block=rule.block),
                          runs=3, per_node_ms=prof.incontext_node_ms)
    dense_ms = sum(o.ms for o in first)
    _, per_run = ic.plan(max(dense_ms, 1e-3), budget_s=budget_s)
    settings = ic.width_settings(analysis, blocks, runs, block=rule.block, seed=1)
    obs, _ = ic.observe(loaded, analysis, blocks, backend, settings, runs=per_run,
                        per_node_ms=prof.incontext_node_ms, passes=ic.passes())  # as the tables were
    n = len(settings)
    meas = np.zeros((n, len(CLASSES)))
    pred = np.zeros((n, len(CLASSES)))
    view = prof.with_context(prof.find_context({b.signature.key() for b in blocks}))  # the model's own tables
    for o in obs:
        sig = BlockSignature.from_key(o.key)  # a removed branch's observations are its orphans'
        if sig.key() not in view.tables:
            continue  # measured locally afterwards
        j = CLASSES.index(op_class(sig))
        meas[o.setting, j] += o.ms
        pred[o.setting, j] += block_ms(view, sig, o.c_in, o.c_out)
    scales, before, after = fit_scales(meas, pred)
    fp = source.fingerprint
    prof.transfer = {"from": {k: fp.get(k) for k in ("cpu", "machine", "onnxruntime", "threads")},
                     "source_path": str(source_path), "source_layout": dict(source.layout),
                     "scales": scales, "runs": n, "error_before": before, "fitted_error": after,
                     "seconds": round(time.perf_counter() - t0, 2), "model": loaded.source}
    return prof


def describe(prof: Profile) -> str:
    """One line for the ``latency`` / ``compile`` output: where the profile came from and its fitted error."""
    t = prof.transfer
    src = t.get("from", {})
    sc = t.get("scales", {})
    return (f"{prof.name}: profile transferred from {src.get('cpu')} / onnxruntime {src.get('onnxruntime')} "
            f"(recalibrated here on {t.get('runs')} in-context runs of {t.get('model')}: GEMM-like x"
            f"{sc.get('gemm', 1.0):.3f}, memory-bound x{sc.get('memory', 1.0):.3f}; fitted error "
            f"{100 * float(t.get('fitted_error', 0.0)):.1f}%, {100 * float(t.get('error_before', 0.0)):.1f}% "
            "before); run `halp-onnx profile --remeasure` to measure here")
