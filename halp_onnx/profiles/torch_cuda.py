"""The ``torch-cuda`` backend: blocks and whole models run by torch (through the torch bridge).

:class:`TorchCudaBackend` times the same one-block models as every other backend
(:func:`~halp_onnx.profiles.block_model.block_model`), executed by the one ONNX executor of the
codebase, :class:`~halp_onnx.torch.executor.OnnxModule`:

* the module and its float inputs are moved to the device and cast to the backend's precision
  (``fp16``: half parameters, buffers and inputs; the block model's own dtype is overridden);
* with ``channels_last`` the 4-D parameters and inputs are in ``torch.channels_last``;
* it runs under ``torch.inference_mode()`` with ``torch.backends.cudnn.benchmark = True``.

On CUDA the forward is warmed up on a side stream, captured once as a CUDA graph (``cuda_graphs``;
a graph that cannot be captured, e.g. because an op syncs with the host, falls back to eager
launches) and timed with CUDA events: each event pair spans many back-to-back runs, so that a
few-microsecond kernel is well above the events' resolution; the figure is the per-run median
over the repeats. On the CPU (``device="cpu"``: tests, a logic check) runs are timed with
:func:`~halp_onnx.profiles.timing.time_callable`.

torch is imported only when the backend is constructed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx

from ..errors import HalpError
from .timing import Timing, _null_model, block_feeds_for, time_callable
from .block_model import block_feeds, block_model
from .signature import BlockSignature

__all__ = ["TorchCudaBackend", "TorchRunner"]

STAGE = "profiles"
PRECISIONS = ("fp32", "fp16")

# CUDA timing: one event pair spans at least PAIR_MS of runs (at most MAX_INNER runs), so that the
# events' ~0.5 us resolution and the pair's own launch are negligible for a few-us block
PAIR_MS = 1.0
MAX_INNER = 1000
WARMUP = 3


@dataclass
class TorchRunner:
    """A prepared model: ``run()`` executes one forward (a CUDA graph replay or an eager call) and
    returns the output tensor(s) (for a graph, its static output tensors, overwritten by each replay)."""

    module: Any  # OnnxModule
    inputs: dict[str, Any]  # graph input name -> torch.Tensor on the device
    run: Callable[[], Any]
    device: Any  # torch.device
    graphed: bool  # True when run() replays a captured CUDA graph
    graph: Any = None  # the torch.cuda.CUDAGraph, kept alive with its memory pool


class TorchCudaBackend:
    """Times blocks and models run by torch through :class:`~halp_onnx.torch.executor.OnnxModule`.

    ``precision``: ``"fp32"`` or ``"fp16"``; ``device``: ``"cuda"`` (``"cuda:N"``) or ``"cpu"``;
    ``budget_s``: time spent measuring each block (at least ``min_runs`` repeats).
    """

    name = "torch-cuda"

    def __init__(self, precision: str = "fp32", *, device: str = "cuda", channels_last: bool = True,
                 cuda_graphs: bool = True, budget_s: float = 0.1, min_runs: int = 5):
        try:
            import torch
        except ImportError:
            raise HalpError("torch-cuda: torch is not installed; install the torch extra "
                            "(pip install halp-onnx[torch])", stage=STAGE) from None
        if precision not in PRECISIONS:
            raise HalpError(f"torch-cuda: precision {precision!r} is not supported; expected "
                            f"{' or '.join(PRECISIONS)}", stage=STAGE)
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise HalpError(f"torch-cuda: bad device {device!r} ({exc})", stage=STAGE) from None
        if dev.type not in ("cuda", "cpu"):
            raise HalpError(f"torch-cuda: device {device!r} is not supported; expected 'cuda', 'cuda:N' or 'cpu'",
                            stage=STAGE)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise HalpError(f"torch-cuda: no CUDA device here (torch {_torch_version(torch)}, CUDA build: "
                                f"{torch.version.cuda or 'none, a CPU-only build'})", stage=STAGE)
            count = torch.cuda.device_count()
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            if index >= count:
                raise HalpError(f"torch-cuda: device {device!r} does not exist; this machine has {count} CUDA "
                                f"device(s)", stage=STAGE)
            dev = torch.device("cuda", index)
            torch.backends.cudnn.benchmark = True
        if budget_s <= 0 or min_runs < 1:
            raise HalpError(f"torch-cuda: budget_s must be > 0 and min_runs >= 1, got {budget_s}, {min_runs}",
                            stage=STAGE)
        self._torch = torch
        self.precision = precision
        self.device = dev
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.channels_last = bool(channels_last)
        self.cuda_graphs = bool(cuda_graphs) and dev.type == "cuda"
        self.budget_s = float(budget_s)
        self.min_runs = int(min_runs)
        self._overhead: float | None = None

    def __repr__(self) -> str:
        return (f"TorchCudaBackend(precision={self.precision!r}, device={str(self.device)!r}, "
                f"channels_last={self.channels_last}, cuda_graphs={self.cuda_graphs})")

    # ------------------------------------------------------------------------------------------
    # preparation

    def _tensor(self, value: Any):
        torch = self._torch
        t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        t = t.to(self.device)
        if t.is_floating_point():
            t = t.to(self.dtype)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def runner(self, model: onnx.ModelProto, feeds: dict[str, Any] | None = None) -> TorchRunner:
        """``model`` as an :class:`OnnxModule` on the device with this backend's settings, warmed up,
        captured as a CUDA graph where that is on (and works); ``feeds`` default to random inputs."""
        torch = self._torch
        from ..torch.executor import OnnxModule

        if feeds is None:
            feeds = block_feeds_for(model)
        module = OnnxModule(model, train_bn=False).eval().to(self.device)
        module = module.to(self.dtype)  # floating-point parameters and buffers only
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)  # 4-D parameters only
        module.requires_grad_(False)
        inputs = {k: self._tensor(v) for k, v in feeds.items()}

        def eager():
            return module(inputs)

        if self.device.type != "cuda":
            with torch.inference_mode():
                eager()
            return TorchRunner(module, inputs, eager, self.device, graphed=False)

        with torch.cuda.device(self.device), torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up (cudnn.benchmark autotunes here) off the default stream
                for _ in range(WARMUP):
                    eager()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            if self.cuda_graphs:
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(graph):
                        static_out = eager()
                    graph.replay()
                    torch.cuda.synchronize()
                except Exception:  # an op that syncs with the host, or one CUDA graphs cannot capture
                    del graph
                    try:
                        torch.cuda.synchronize()
                    except Exception:
                        pass
                else:
                    def replay(graph=graph, out=static_out):
                        graph.replay()
                        return out

                    return TorchRunner(module, inputs, replay, self.device, graphed=True, graph=graph)
            return TorchRunner(module, inputs, eager, self.device, graphed=False)

    # ------------------------------------------------------------------------------------------
    # timing

    def time_runner(self, runner: TorchRunner, budget_s: float | None = None) -> Timing:
        """Per-run timing of ``runner.run`` (CUDA events on CUDA, wall clock on the CPU)."""
        torch = self._torch
        budget = self.budget_s if budget_s is None else float(budget_s)
        if runner.device.type != "cuda":
            with torch.inference_mode():
                return time_callable(runner.run, budget_s=budget, min_runs=self.min_runs)
        with torch.cuda.device(runner.device), torch.inference_mode():
            run = runner.run
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for _ in range(WARMUP):
                run()
            # estimate one run, then choose how many runs one event pair spans
            inner = 1
            while True:
                start.record()
                for _ in range(inner):
                    run()
                end.record()
                end.synchronize()
                pair = start.elapsed_time(end)
                if pair >= PAIR_MS or inner >= MAX_INNER:
                    break
                inner = min(MAX_INNER, max(inner * 2, math.ceil(inner * PAIR_MS / max(pair, 1e-3))))
            per_run: list[float] = []
            t0 = time.perf_counter()
            while len(per_run) < 500 and (len(per_run) < self.min_runs or time.perf_counter() - t0 < budget):
                start.record()
                for _ in range(inner):
                    run()
                end.record()
                end.synchronize()
                per_run.append(start.elapsed_time(end) / inner)
        ms = np.asarray(per_run)
        return Timing(float(np.median(ms)), float(np.percentile(ms, 10)), float(np.percentile(ms, 90)),
                      len(ms) * inner)

    def _time(self, model: onnx.ModelProto, feeds: dict[str, Any] | None, budget_s: float) -> Timing:
        runner = self.runner(model, feeds)
        try:
            return self.time_runner(runner, budget_s)
        finally:
            del runner  # frees the graph's memory pool before the next block

    # ------------------------------------------------------------------------------------------
    # the Backend protocol

    def measure_timing(self, sig: BlockSignature, c_in: int, c_out: int) -> Timing:
        """Like :meth:`measure`, with the spread."""
        model = block_model(sig, c_in, c_out)
        return self._time(model, block_feeds(model), self.budget_s)

    def measure(self, sig: BlockSignature, c_in: int, c_out: int) -> float:
        """Median ms of one run of the block model of ``sig`` at ``(c_in, c_out)``."""
        return self.measure_timing(sig, c_in, c_out).median_ms

    def run_overhead_ms(self) -> float:
        """What one run of a trivial (one-Relu) model costs: a graph replay's fixed cost on CUDA."""
        if self._overhead is None:
            self._overhead = self._time(_null_model(), {"x": np.ones((1, 1), np.float32)},
                                        max(self.budget_s, 0.2)).median_ms
        return self._overhead

    def time_model(self, model: onnx.ModelProto | str, feeds: dict[str, np.ndarray] | None = None, *,
                   budget_s: float = 2.0) -> Timing:
        """End-to-end time of a whole model with the same settings as the blocks."""
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        return self._time(model, feeds, budget_s)


def _torch_version(torch) -> str:
    version = str(getattr(torch, "__version__", "?")).split("+")[0]
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else version
