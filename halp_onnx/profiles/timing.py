"""Timing pieces every profile backend shares: the :class:`Timing` summary, the wall-clock
timer :func:`time_callable`, the :class:`Backend` protocol, the trivial model that prices a run
(:func:`_null_model`), random feeds for a model (:func:`block_feeds_for`) and
:func:`best_of_medians`, and :func:`paired_timing` (two models alternated, the median of
per-round ratios).

It imports no backend, so :mod:`~halp_onnx.profiles.backends` and
:mod:`~halp_onnx.profiles.torch_cuda` both build on it without importing each other.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import onnx

from ..errors import HalpError
from .signature import BlockSignature

STAGE = "profiles"


@dataclass(frozen=True)
class Timing:
    """Robust summary of repeated runs (ms)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def time_callable(fn: Callable[[], object], *, budget_s: float = 0.1, min_runs: int = 5, max_runs: int = 500,
                  warmup: int = 2) -> Timing:
    """Warm up, then run ``fn`` until ``budget_s`` has passed and at least ``min_runs`` runs are in;
    the median is the figure (robust to the other tenants of a shared machine)."""
    start = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - start < 0.25 * budget_s:  # caches, thread pools, packing
        fn()
        done += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return Timing(float(np.median(ms)), float(np.percentile(ms, 10)), float(np.percentile(ms, 90)), len(ms))


class Backend(Protocol):
    name: str

    def measure(self, sig: BlockSignature, c_in: int, c_out: int) -> float: ...

    def run_overhead_ms(self) -> float: ...

    def time_model(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None, *,
                   budget_s: float = 2.0) -> Timing: ...


def _null_model(nodes: int = 1) -> onnx.ModelProto:
    """``nodes`` Relus in a chain on a one-element tensor: what a run costs besides real work."""
    names = ["x"] + [f"t{i}" for i in range(nodes - 1)] + ["y"]
    chain = [onnx.helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu{i}") for i in range(nodes)]
    g = onnx.helper.make_graph(chain, "null",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def with_batch(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """A copy of ``model`` whose symbolic leading input/output dims are ``batch`` (for timing)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return m


def block_feeds_for(model: onnx.ModelProto, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Random inputs for a model with static input shapes, or only a symbolic batch dim (then
    ``batch``); a clear error otherwise."""
    from ..passes.verify import random_inputs

    init = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in init and any(not d.HasField("dim_value") for d in dims[1:]):
            raise HalpError(f"input {vi.name!r} has dynamic dims; give --input-shape {vi.name}:1x3x224x224",
                            stage=STAGE)
    return random_inputs(with_batch(model, batch), np.random.default_rng(seed))


def best_of_medians(backend, model, budget_s: float, passes: int = 3) -> float:
    """The smallest of ``passes`` median run times (ms): other tenants of a shared machine only ever
    add time, so the least disturbed pass is the figure."""
    return min(backend.time_model(model, budget_s=budget_s / passes).median_ms for _ in range(passes))


@dataclass(frozen=True)
class PairedTiming:
    """Two models timed alternately in one process: ``ratio`` is the median of per-round ratios
    (candidate / reference), which a loaded machine disturbs far less than either absolute figure."""

    reference_ms: float  # median over rounds of the reference's per-round median
    ms: float  # the same for the candidate
    ratio: float
    ratio_p10: float
    ratio_p90: float
    rounds: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def paired_timing(backend, reference: onnx.ModelProto, candidate: onnx.ModelProto, *, rounds: int = 7,
                  budget_s: float = 2.1) -> PairedTiming:
    """Time ``reference`` and ``candidate`` alternately (ABBA order) for ``rounds`` rounds of
    ``budget_s / rounds`` seconds in all. A backend with ``prepare(model) -> run()`` keeps one session per
    model; otherwise each turn calls ``backend.time_model``."""
    rounds = max(int(rounds), 1)
    per_turn = budget_s / (2 * rounds)
    prepare = getattr(backend, "prepare", None)
    if callable(prepare):
        run_ref, run_cand = prepare(reference), prepare(candidate)

        def turn(which: int) -> float:
            return time_callable(run_ref if which == 0 else run_cand, budget_s=per_turn, min_runs=3).median_ms
    else:
        def turn(which: int) -> float:
            return backend.time_model(reference if which == 0 else candidate, budget_s=per_turn).median_ms
    ref, cand, ratios = [], [], []
    for k in range(rounds):
        order = (0, 1) if k % 2 == 0 else (1, 0)
        got = {w: turn(w) for w in order}
        ref.append(got[0])
        cand.append(got[1])
        ratios.append(got[1] / got[0] if got[0] > 0 else float("inf"))
    r = np.asarray(ratios)
    return PairedTiming(float(np.median(ref)), float(np.median(cand)), float(np.median(r)),
                        float(np.percentile(r, 10)), float(np.percentile(r, 90)), rounds)
