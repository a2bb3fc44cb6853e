"""Backends that time one block (and a whole model) for a target.

Every backend exposes ``measure(signature, c_in, c_out) -> ms`` (the one-block model of
:mod:`~halp_onnx.profiles.block_model`), ``run_overhead_ms()`` (what one run of a trivial model costs:
paid once per whole-model run, so a sum of block timings must not count it per block) and
``time_model(model) -> Timing`` (end-to-end, for the ``latency`` command and the fidelity benchmark).

* :class:`OrtCpuBackend`: onnxruntime's CPU provider, ``threads`` intra-op threads (1 by default).
* :class:`TensorRTBackend`: a TensorRT engine per block (needs TensorRT and a GPU; clear error otherwise).
* :class:`TrtexecBackend`: the same through the ``trtexec`` binary (``--trtexec PATH``); per-layer
  times mapped to ONNX nodes, engines via ``--saveEngine`` (:func:`build_engine`).
* ``torch-cuda``: :mod:`halp_onnx.profiles.torch_cuda` (imports torch only when used).

The shared timing pieces (:class:`Timing`, :func:`time_callable`, :class:`Backend`,
:func:`block_feeds_for`, :func:`best_of_medians`, ...) live in :mod:`~halp_onnx.profiles.timing`
and are re-exported here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..errors import HalpError
from .block_model import block_feeds, block_model
from .signature import BlockSignature
from .targets import Target, TrtRuntime, get_target, target_status, trt_target_runtime
from .timing import STAGE, Backend, Timing, _null_model, best_of_medians, block_feeds_for, time_callable, with_batch

if TYPE_CHECKING:
    from .trt import Precision
    from .trt.trtexec_driver import TrtexecProfile

__all__ = [
    "REORDER_OPS",
    "STAGE",
    "Backend",
    "OrtCpuBackend",
    "TensorRTBackend",
    "Timing",
    "TrtexecBackend",
    "build_engine",
    "layer_report",
    "tensorrt_backend",
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
    in_context = True  # whole-model runs with per-node times (profiles.incontext) fill the tables

    def session(self, model: onnx.ModelProto, *, profile_prefix: str | None = None, optimized_path: str | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        if optimized_path:  # the graph as the optimiser left it (in-context attribution of its nodes)
            so.optimized_model_filepath = optimized_path
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

    def __init__(self, precision: str = "fp16", *, iters: int = 100, target: Target | None = None):
        from .trt import TrtBackend

        self.trt = TrtBackend()
        self.precision = precision
        self.iters = iters
        ok, reason = self.trt.available()
        if not ok:
            raise HalpError(f"cannot measure on TensorRT here: {reason}", stage=STAGE)
        if target is not None:
            _check_runtime(target, "a measurement")

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


def _check_runtime(target: Target, what: str) -> TrtRuntime:
    """The TensorRT runtime here, refused (one line naming GPU and version) when it cannot serve ``target``."""
    return trt_target_runtime(target, what)


class TrtexecBackend:
    """Times blocks and models with the ``trtexec`` binary (``--trtexec PATH``, else on PATH).

    A block's time is the sum of its engine layers' times from ``--exportProfile`` (mapped to ONNX
    nodes through layer names and ``--exportLayerInfo`` metadata), without the reformat layers a
    one-block engine needs at its boundary: a kernel time, as for ort-cpu (``block_time``). The
    per-run overhead is what a trivial model's GPU compute time adds to its layers. Every run's log
    must report the TensorRT version and GPU the runtime was probed with.
    """

    name = "tensorrt-trtexec"
    block_time = "kernel"

    def __init__(self, target: Target, *, block_iterations: int = 50, block_duration_s: float = 1.0):
        self.target = target
        self.runtime = _check_runtime(target, "a measurement")
        if self.runtime.kind != "trtexec" or not self.runtime.trtexec:
            raise HalpError(f"--target {target.name}: no trtexec here (give --trtexec PATH)", stage=STAGE)
        self.binary = self.runtime.trtexec
        self.precision = target.precision
        self.block_iterations = block_iterations
        self.block_duration_s = block_duration_s
        self._overhead: float | None = None

    def _precision(self) -> Precision:
        from .trt import check_precision

        return check_precision(self.precision)

    def _checked(self, run: TrtexecProfile) -> TrtexecProfile:
        s = run.summary
        rt = self.runtime
        if (s.trt_version, s.gpu_name) != (rt.version, rt.gpu_name):
            raise HalpError(f"trtexec {self.binary} ran TensorRT {s.trt_version} on {s.gpu_name}, but was probed as "
                            f"TensorRT {rt.version} on {rt.gpu_name}; a profile never mixes them", stage=STAGE)
        return run

    def profile_model(self, model: onnx.ModelProto | str, *, layers: bool = True, iterations: int = 100,
                      duration_s: float = 3.0) -> TrtexecProfile:
        """One trtexec run of ``model``: summary, per-layer times and the ONNX node map."""
        from .trt.trtexec_driver import profile_with_trtexec

        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        return self._checked(profile_with_trtexec(with_batch(proto, self.target.batch), self._precision(),
                                                  binary=self.binary, iterations=iterations, duration_s=duration_s,
                                                  layers=layers))

    def _kernel_ms(self, model: onnx.ModelProto) -> tuple[float, TrtexecProfile]:
        run = self.profile_model(model, iterations=self.block_iterations, duration_s=self.block_duration_s)
        if run.layer_map is None or not run.layers:
            raise HalpError(f"trtexec {self.binary} reported no per-layer times", stage=STAGE)
        return run.layer_map.kernel_ms, run

    def measure(self, sig: BlockSignature, c_in: int, c_out: int) -> float:
        return self._kernel_ms(block_model(sig, c_in, c_out))[0]

    def run_overhead_ms(self) -> float:
        if self._overhead is None:
            kernel, run = self._kernel_ms(_null_model())
            total = run.summary.median_ms
            self._overhead = max((total if total is not None else kernel) - kernel, 0.0)
        return self._overhead

    def node_overhead_ms(self) -> float:
        return 0.0

    def time_model(self, model, feeds=None, *, budget_s: float = 2.0) -> Timing:
        """trtexec's GPU compute time of the whole model: median, min as p10, the 90th percentile
        (or max) as p90, and the number of queries."""
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        run = self.profile_model(model, layers=False, duration_s=max(budget_s, 1.0))
        gpu = run.summary.gpu_compute or run.summary.latency
        if gpu is None or gpu.median_ms is None:
            raise HalpError(f"trtexec {self.binary} reported no GPU compute time", stage=STAGE)
        p90 = gpu.percentile(90) or gpu.max_ms or gpu.median_ms
        return Timing(gpu.median_ms, gpu.min_ms or gpu.median_ms, p90, run.summary.queries or 1)

    def build_engine(self, model: onnx.ModelProto | str, out_plan: str | os.PathLike) -> Path:
        from .trt.trtexec_driver import build_engine_with_trtexec

        if isinstance(model, onnx.ModelProto):
            model = with_batch(model, self.target.batch)
        path, summary = build_engine_with_trtexec(model, out_plan, self._precision(), binary=self.binary)
        if (summary.trt_version, summary.gpu_name) != (self.runtime.version, self.runtime.gpu_name):
            Path(path).unlink(missing_ok=True)
            raise HalpError(f"trtexec {self.binary} built with TensorRT {summary.trt_version} on {summary.gpu_name}, "
                            f"not the probed {self.runtime.version} on {self.runtime.gpu_name}", stage=STAGE)
        return path


def tensorrt_backend(target: Target) -> TensorRTBackend | TrtexecBackend:
    """The TensorRT backend of ``target``: trtexec where that is the runtime, else the Python API."""
    rt = _check_runtime(target, "a measurement")
    if rt.kind == "trtexec":
        return TrtexecBackend(target)
    return TensorRTBackend(target.precision, target=target)


def has_qdq(model: onnx.ModelProto | str) -> bool:
    """Whether the model carries its own int8 scales (QuantizeLinear / DequantizeLinear nodes)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)


def check_int8_engine(target: str | Target, model: onnx.ModelProto | str | None, has_calib: bool,
                      option: str = "--engine") -> None:
    """An int8 engine handed to the user is calibrated (``--calib``) or comes from a Q/DQ model;
    placeholder ranges are for timing only. Refused up front otherwise, with what to do."""
    t = get_target(target)
    if t.precision != "int8" or has_calib or (model is not None and has_qdq(model)):
        return
    raise HalpError(f"{option}: an int8 engine needs calibration data (--calib images or .npz) or a model with "
                    "QuantizeLinear/DequantizeLinear nodes; uncalibrated int8 ranges are used for timing only",
                    stage=STAGE)


def build_engine(target: str | Target, model: onnx.ModelProto | str, out_plan: str | os.PathLike, *,
                 calib_batches=None) -> Path:
    """Write a TensorRT engine of ``model`` for ``target`` (``compile --engine``): through trtexec
    ``--saveEngine`` or the Python API, refused for a GPU / TensorRT pair the support matrix rules out.
    An int8 engine is calibrated from ``calib_batches`` (Python API; the cache lands beside the engine as
    ``<engine>.calib``) or needs a Q/DQ model."""
    t = get_target(target)
    if t.backend != "tensorrt":
        raise HalpError(f"--engine {out_plan}: only for TensorRT targets (trt-*), not {t.name}", stage=STAGE)
    check_int8_engine(t, model, calib_batches is not None)
    rt = _check_runtime(t, "an engine")
    if rt.kind == "trtexec":
        if t.precision == "int8" and not has_qdq(model):
            raise HalpError("--engine: trtexec cannot calibrate from --calib data; give a Q/DQ model or use the "
                            "TensorRT Python API (pip install 'halp-onnx[trt]')", stage=STAGE)
        return TrtexecBackend(t).build_engine(model, out_plan)
    from .trt import TrtBackend, check_precision

    if isinstance(model, onnx.ModelProto):
        model = with_batch(model, t.batch)
    return TrtBackend().build_engine(model, out_plan, check_precision(t.precision), calib_batches=calib_batches)


def layer_report(target: str | Target, model: onnx.ModelProto | str, *, top: int = 10) -> list[str]:
    """Lines for ``profile``: the whole model once through trtexec, its per-node times (fused layers
    summed onto their anchor node) and the reformat layers apart; ``[]`` on the Python-API runtime."""
    t = get_target(target)
    if t.backend != "tensorrt":
        return []
    backend = tensorrt_backend(t)
    if not isinstance(backend, TrtexecBackend):
        return []
    run = backend.profile_model(model)
    lm = run.layer_map
    if lm is None:
        return []
    total = run.summary.median_ms
    lines = [f"whole model on {backend.runtime.describe()}: GPU compute {total:.4f} ms" if total is not None
             else f"whole model on {backend.runtime.describe()}",
             f"per-node layer time {lm.kernel_ms:.4f} ms over {len(lm.node_ms)} nodes, reformats "
             f"{lm.reformat_total_ms:.4f} ms in {len(lm.reformat_ms)} layers"]
    for node, ms in sorted(lm.node_ms.items(), key=lambda kv: -kv[1])[:max(top, 0)]:
        fused = [n for n in lm.fused.get(node, ()) if n != node]
        lines.append(f"  {node[:40]:<40} {ms:9.4f} ms" + (f"  (+ {', '.join(fused)})" if fused else ""))
    return lines


def get_backend(target: str | Target, *, threads: int = 1) -> Backend:
    """The measuring backend of ``target`` on this machine, or a one-line error saying why not."""
    t = get_target(target)
    ok, reason = target_status(t)
    if t.backend == "ort-cpu":
        return OrtCpuBackend(threads)
    if not ok:
        raise HalpError(f"--target {t.name}: cannot measure here ({reason})", stage=STAGE)
    if t.backend == "tensorrt":
        return tensorrt_backend(t)
    if t.backend == "torch-cuda":
        from .torch_cuda import TorchCudaBackend

        return TorchCudaBackend(precision=t.precision)
    raise HalpError(f"--target {t.name}: measuring with backend {t.backend} is not supported; "
                    "use ort-cpu, torch-cuda or a trt-* target", stage=STAGE)
