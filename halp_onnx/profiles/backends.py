"""Backends that time one block (and a whole model) for a target.

Every backend exposes ``measure(signature, c_in, c_out) -> ms`` (the one-block model of
:mod:`~halp_onnx.profiles.block_model`), ``run_overhead_ms()`` (what one run of a trivial model costs:
paid once per whole-model run, so a sum of block timings must not count it per block) and
``time_model(model) -> Timing`` (end-to-end, for the ``latency`` command and the fidelity benchmark).

* :class:`OrtCpuBackend`: onnxruntime's CPU provider, ``threads`` intra-op threads (1 by default).
* :class:`TensorRTBackend`: a TensorRT engine per block (needs TensorRT and a GPU; clear error otherwise).
* ``torch-cuda``: :mod:`halp_onnx.profiles.torch_cuda` (imports torch only when used).

The shared timing pieces (:class:`Timing`, :func:`time_callable`, :class:`Backend`,
:func:`block_feeds_for`, :func:`best_of_medians`, ...) live in :mod:`~halp_onnx.profiles.timing`
and are re-exported here.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..errors import HalpError
from .block_model import block_feeds, block_model
from .signature import BlockSignature
from .targets import Target, get_target, target_status
from .timing import STAGE, Backend, Timing, _null_model, best_of_medians, block_feeds_for, time_callable, with_batch

if TYPE_CHECKING:
    from .trt import Precision

__all__ = [
    "REORDER_OPS",
    "STAGE",
    "Backend",
    "OrtCpuBackend",
    "TensorRTBackend",
    "Timing",
    "_null_model",
    "best_of_medians",
    "block_feeds_for",
    "get_backend",
    "time_callable",
    "with_batch",
]


REORDER_OPS = ("ReorderInput", "ReorderOutput")


class OrtCpuBackend:
    """Times models in onnxruntime's CPUExecutionProvider with default graph optimisations."""

    name = "ort-cpu"

    def __init__(self, threads: int = 1, *, budget_s: float | None = None, min_runs: int = 5):
        import onnxruntime  # noqa: F401  (a core dependency; imported here to keep module import light)

        if budget_s is None:  # seconds of repeated runs per point; the env var makes tests fast
            budget_s = float(os.environ.get("HALP_ONNX_TIMING_BUDGET_S", "0.1"))

        if threads < 1:
            raise HalpError(f"--threads {threads}: expected a positive count", stage=STAGE)
        self.threads = threads
        self.budget_s = budget_s
        self.min_runs = min_runs
        self._overhead: float | None = None
        self._node_overhead: float | None = None

    block_time = "kernel"  # measure() gives the block's kernel time; runs pay overheads once

    def session(self, model: onnx.ModelProto, *, profile_prefix: str | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])

    def prepare(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None):
        """One session for ``model``, returned as a zero-argument run (for :func:`paired_timing`)."""
        sess = self.session(model)
        feeds = block_feeds_for(model) if feeds is None else feeds
        return lambda: sess.run(None, feeds)

    def _time(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], budget_s: float) -> Timing:
        sess = self.session(model)
        return time_callable(lambda: sess.run(None, feeds), budget_s=budget_s, min_runs=self.min_runs)

    def kernel_ms(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], budget_s: float | None = None) -> float:
        """Median per-run sum of the model's kernel times from onnxruntime's profiler, without the
        layout reorders a one-block model needs at its boundary (a whole model converts once)."""
        import json
        import tempfile

        with tempfile.TemporaryDirectory(prefix="halp-ort-") as tmp:
            sess = self.session(model, profile_prefix=os.path.join(tmp, "p"))
            time_callable(lambda: sess.run(None, feeds), budget_s=self.budget_s if budget_s is None else budget_s,
                          min_runs=self.min_runs)
            path = sess.end_profiling()
            with open(path) as fh:
                events = json.load(fh)
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                      if e.get("cat") == "Session" and e.get("name") == "model_run")
        nodes = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Node"
                       and e.get("name", "").endswith("_kernel_time")
                       and e.get("args", {}).get("op_name") not in REORDER_OPS)
        sums = []
        j = 0
        for start, stop in runs:
            total = 0
            while j < len(nodes) and nodes[j][0] < start:
                j += 1
            while j < len(nodes) and nodes[j][0] <= stop:
                total += nodes[j][1]
                j += 1
            sums.append(total)
        if not sums:
            raise HalpError("onnxruntime's profiler recorded no runs", stage=STAGE)
        steady = sums[len(sums) // 4:]  # the first runs were the warm-up
        # lower quartile: other tenants of a shared machine only ever add time
        return float(np.percentile(steady, 25)) / 1e3

    def measure(self, sig: BlockSignature, c_in: int, c_out: int) -> float:
        model = block_model(sig, c_in, c_out)
        return self.kernel_ms(model, block_feeds(model))

    def run_overhead_ms(self) -> float:
        """One run of a one-node model (session entry, input/output binding)."""
        if self._overhead is None:
            m = _null_model()
            self._overhead = self._time(m, {"x": np.ones((1, 1), np.float32)}, 0.3).median_ms
        return self._overhead

    def node_overhead_ms(self) -> float:
        """Correction per timed block: what each further node adds to a real run (dispatch) minus what
        the profiler reports for a tiny kernel (its timing inflates every kernel by a few us). Often
        negative; it matters for models of many small layers."""
        if self._node_overhead is None:
            n = 33
            x = {"x": np.ones((1, 1), np.float32)}

            def best(fn):
                return min(fn() for _ in range(3))

            t1 = best(lambda: self._time(_null_model(), x, 0.1).median_ms)
            tn = best(lambda: self._time(_null_model(n), x, 0.1).median_ms)
            k1 = best(lambda: self.kernel_ms(_null_model(), x, 0.1))
            kn = best(lambda: self.kernel_ms(_null_model(n), x, 0.1))
            self._node_overhead = ((tn - t1) - (kn - k1)) / (n - 1)
        return self._node_overhead

    def time_model(self, model: onnx.ModelProto | str, feeds: dict[str, np.ndarray] | None = None, *,
                   budget_s: float = 2.0) -> Timing:
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        if feeds is None:
            feeds = block_feeds_for(model)
        return self._time(model, feeds, budget_s)


class TensorRTBackend:
    """One TensorRT engine per block (Python API), timed with CUDA events; needs TensorRT and a GPU."""

    name = "tensorrt"

    def __init__(self, precision: str = "fp16", *, iters: int = 100):
        from .trt import TrtBackend

        self.trt = TrtBackend()
        self.precision = precision
        self.iters = iters
        ok, reason = self.trt.available()
        if not ok:
            raise HalpError(f"cannot measure on TensorRT here: {reason}", stage=STAGE)

    def _precision(self) -> Precision:
        """``self.precision`` checked as TensorRT's (the same error ``measure_onnx`` gives)."""
        from .trt import check_precision

        return check_precision(self.precision)

    def measure(self, sig: BlockSignature, c_in: int, c_out: int) -> float:
        m = self.trt.measure_onnx(block_model(sig, c_in, c_out), self._precision(), warmup=10,
                                  iters=self.iters)
        return m.median_ms

    def run_overhead_ms(self) -> float:
        return self.trt.measure_onnx(_null_model(), self._precision(), warmup=10,
                                     iters=self.iters).median_ms

    def time_model(self, model, feeds=None, *, budget_s: float = 2.0) -> Timing:
        m = self.trt.measure_onnx(model, self._precision(), warmup=20, iters=200)
        arr = np.asarray(m.samples_ms)
        return Timing(float(np.median(arr)), float(np.percentile(arr, 10)), float(np.percentile(arr, 90)), len(arr))


def get_backend(target: str | Target, *, threads: int = 1) -> Backend:
    """The measuring backend of ``target`` on this machine, or a one-line error saying why not."""
    t = get_target(target)
    ok, reason = target_status(t)
    if t.backend == "ort-cpu":
        return OrtCpuBackend(threads)
    if not ok:
        raise HalpError(f"--target {t.name}: cannot measure here ({reason})", stage=STAGE)
    if t.backend == "tensorrt":
        return TensorRTBackend(t.precision)
    if t.backend == "torch-cuda":
        from .torch_cuda import TorchCudaBackend

        return TorchCudaBackend(precision=t.precision)
    raise HalpError(f"--target {t.name}: measuring with backend {t.backend} is not supported; "
                    "use ort-cpu, torch-cuda or a trt-* target", stage=STAGE)
