"""The TensorRT Python-API driver: :class:`TrtBackend` builds an engine with the builder and
ONNX parser and times ``execute_async_v3`` with CUDA events; its ``trtexec`` methods come from
:class:`~halp_onnx.profiles.trt.trtexec_driver.TrtexecDriver`.

It is written against the real bindings of every supported release (``common.SUPPORTED``):
:data:`TRT_API` lists every TensorRT name it uses and ``tests/test_trt_surface.py`` checks the
list against the surfaces ``tools/trt_surface.py`` extracted from the 8.6.1, 10.4.0, 10.16.1.11
and 11.4.0.106 bindings wheels, and the code against the list.  Where releases differ it branches
on the imported module's major version:

* 8.x networks are created with ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` (the ONNX parser
  needs it); 10.x networks are always explicit-batch and 11.x has no such flag.
* 8.x and 10.x are weakly typed: fp16 / int8 are ``BuilderFlag.FP16`` / ``BuilderFlag.INT8``, int8
  scales come from Q/DQ nodes, an ``IInt8EntropyCalibrator2`` or (timing only) placeholder
  ``ITensor.set_dynamic_range`` values.  11.x removed all of these: networks are strongly typed,
  so fp16 needs a model with float16 tensors and int8 a model with Q/DQ nodes.
* Execution uses the named-tensor API (``set_input_shape``, ``set_tensor_address``,
  ``execute_async_v3``), which 8.6 already has: no release needs the binding-index API.
"""
from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from halp_onnx.errors import HalpError

from .common import (FALLBACK_HINT, NOT_INSTALLED, ModelLike, Precision, _error, _resolve_shape,
                     trt_version)
from .cuda import _Cuda, _open_cuda, _probe_cuda
from .parse_layers import parse_engine_info
from .records import EngineInfo, LayerTiming, TrtMeasurement
from .trtexec_driver import TrtexecDriver

# Every TensorRT name this module uses: module attributes under "", class members under the
# class.  ``tests/test_trt_surface.py`` checks each against every supported release's surface.
TRT_API: dict[str, tuple[str, ...]] = {
    "": ("Builder", "BuilderFlag", "DataType", "Dims", "IInt8EntropyCalibrator2", "IProfiler",
         "LayerInformationFormat", "LayerType", "Logger", "MemoryPoolType",
         "NetworkDefinitionCreationFlag", "OnnxParser", "ProfilingVerbosity", "Runtime", "TensorIOMode"),
    "Logger": ("INFO", "WARNING"),
    "Builder": ("build_serialized_network", "create_builder_config", "create_network",
                "create_optimization_profile"),
    "NetworkDefinitionCreationFlag": ("EXPLICIT_BATCH",),
    "OnnxParser": ("get_error", "num_errors", "parse", "parse_from_file"),
    "INetworkDefinition": ("get_input", "get_layer", "num_inputs", "num_layers"),
    "ILayer": ("get_output", "num_outputs", "type"),
    "ITensor": ("dtype", "is_shape_tensor", "name", "set_dynamic_range", "shape"),
    "IBuilderConfig": ("add_optimization_profile", "int8_calibrator", "profiling_verbosity",
                       "set_calibration_profile", "set_flag", "set_memory_pool_limit"),
    "IOptimizationProfile": ("set_shape",),
    "BuilderFlag": ("FP16", "INT8"),
    "DataType": ("BF16", "HALF"),
    "MemoryPoolType": ("WORKSPACE",),
    "LayerType": ("DEQUANTIZE", "QUANTIZE"),
    "ProfilingVerbosity": ("DETAILED",),
    "LayerInformationFormat": ("JSON",),
    "TensorIOMode": ("INPUT",),
    "Runtime": ("deserialize_cuda_engine",),
    "IHostMemory": (),
    "ICudaEngine": ("create_engine_inspector", "create_execution_context", "get_tensor_dtype",
                    "get_tensor_mode", "get_tensor_name", "num_io_tensors"),
    "IExecutionContext": ("execute_async_v3", "get_tensor_shape", "profiler", "set_input_shape",
                          "set_tensor_address"),
    "EngineInspector": ("execution_context", "get_engine_information"),
    # application-implemented interfaces: the methods our subclasses override
    "IProfiler": ("report_layer_time",),
    "IInt8EntropyCalibrator2": ("get_batch", "get_batch_size", "read_calibration_cache",
                                "write_calibration_cache"),
}

# The last major version that has the explicit-batch creation flag the 8.x ONNX parser needs
# (10.x keeps it, deprecated and ignored; 11.x removed it), and the last weakly typed one.
EXPLICIT_BATCH_FLAG_LAST = 8
WEAK_TYPING_LAST = 10
_WEAK = tuple(range(8, WEAK_TYPING_LAST + 1))
# Names used only on a version branch: "Class.member" (or a module attribute) -> the majors
# whose branch uses it.  Everything else in TRT_API is used on every supported release.
TRT_API_MAJORS: dict[str, tuple[int, ...]] = {
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH": tuple(range(8, EXPLICIT_BATCH_FLAG_LAST + 1)),
    "BuilderFlag.FP16": _WEAK,
    "BuilderFlag.INT8": _WEAK,
    "IInt8EntropyCalibrator2": _WEAK,
    "IInt8EntropyCalibrator2.get_batch": _WEAK,
    "IInt8EntropyCalibrator2.get_batch_size": _WEAK,
    "IInt8EntropyCalibrator2.read_calibration_cache": _WEAK,
    "IInt8EntropyCalibrator2.write_calibration_cache": _WEAK,
    "IBuilderConfig.int8_calibrator": _WEAK,
    "IBuilderConfig.set_calibration_profile": _WEAK,
    "ITensor.set_dynamic_range": _WEAK,
    "DataType.BF16": (11,),
}
# The local names that hold TensorRT objects in this module, by class (the surface test checks
# every attribute used on them).
TRT_OBJECTS: dict[str, str] = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser",
    "config": "IBuilderConfig", "profile": "IOptimizationProfile", "tensor": "ITensor",
    "layer": "ILayer", "runtime": "Runtime", "engine": "ICudaEngine", "context": "IExecutionContext",
    "inspector": "EngineInspector", "serialized": "IHostMemory",
}

# Byte size and random-fill type for TensorRT data types, by enum name.
_TRT_DTYPES: dict[str, tuple[float, str | None]] = {
    "FLOAT": (4, "float32"), "HALF": (2, "float16"), "BF16": (2, "bfloat16"), "INT8": (1, None),
    "UINT8": (1, None), "FP8": (1, None), "INT32": (4, None), "INT64": (8, None), "BOOL": (1, None),
    "INT4": (0.5, None), "FP4": (0.5, None),
}
# numpy types for calibration inputs, by TensorRT data type name.
_NUMPY_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64",
                 "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}

CalibBatch = Any  # one calibration batch: an array (one-input model) or {input name: array}


def _dtype_name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1].upper()


def _nbytes(shape: Sequence[int], dtype: Any) -> tuple[int, str | None]:
    size, fill = _TRT_DTYPES.get(_dtype_name(dtype), (4, None))
    return int(math.ceil(math.prod(shape) * size)), fill


def _model_source(model: ModelLike) -> bytes | str | os.PathLike[str]:
    """``model`` as TensorRT's ONNX parser takes it: an in-memory ``onnx.ModelProto`` serialised
    to bytes, anything else (bytes, a path) as it is."""
    if isinstance(model, (bytes, bytearray, str, os.PathLike)):
        return model
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    return model


def _network_tensors(network: Any) -> list[Any]:
    """The network's inputs and every layer's outputs."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        tensors.extend(layer.get_output(j) for j in range(layer.num_outputs))
    return tensors


def _has_qdq(trt: Any, network: Any) -> bool:
    kinds = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            return True
    return False


def _has_reduced_float(trt: Any, network: Any) -> bool:
    """Whether a strongly typed network computes anything in float16 / bfloat16."""
    reduced = (trt.DataType.HALF, trt.DataType.BF16)
    return any(tensor.dtype in reduced for tensor in _network_tensors(network))


class _Calibration:
    """Calibration batches for an ``IInt8EntropyCalibrator2``, checked against the network inputs."""

    def __init__(self, batches: Iterable[CalibBatch], shapes: Mapping[str, tuple[int, ...]],
                 dtypes: Mapping[str, str], cache_path: Path) -> None:
        self.shapes = dict(shapes)
        self.dtypes = dict(dtypes)
        self.cache_path = cache_path
        self.batches = iter(batches)
        self.used = 0
        self.error: HalpError | None = None

    def arrays(self, feed: CalibBatch, names: Sequence[str]) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            if len(self.shapes) != 1:
                raise _error(f"calibration batch {self.used} must map each of the inputs "
                             f"{', '.join(sorted(self.shapes))} to an array")
            feed = {next(iter(self.shapes)): feed}
        out: dict[str, np.ndarray] = {}
        for name in names:
            if name not in feed:
                raise _error(f"calibration batch {self.used} has no array for input {name!r}")
            array = np.ascontiguousarray(np.asarray(feed[name]), dtype=self.dtypes.get(name, "float32"))
            if tuple(array.shape) != self.shapes[name]:
                raise _error(f"calibration batch {self.used}: input {name!r} has shape "
                             f"{tuple(array.shape)}, the engine is built for {self.shapes[name]}")
            out[name] = array
        return out


def _entropy_calibrator(trt: Any, cuda: _Cuda, calib: _Calibration) -> Any:
    """An ``IInt8EntropyCalibrator2`` (TensorRT 8.x/10.x) feeding ``calib``'s batches from device
    buffers; it always calibrates (no cache is read) and writes the cache to ``calib.cache_path``."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # the bindings require the base __init__
            self.ptrs = {name: cuda.alloc(math.prod(shape) * np.dtype(calib.dtypes[name]).itemsize, None)
                         for name, shape in calib.shapes.items()}

        def get_batch_size(self) -> int:
            first = next(iter(calib.shapes.values()), ())
            return int(first[0]) if first else 1

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            if calib.error is not None:
                return None
            try:
                feed = next(calib.batches, None)
                if feed is None:
                    return None
                for name, array in calib.arrays(feed, names).items():
                    cuda.upload(self.ptrs[name], array)
            except Exception as exc:  # an exception cannot cross TensorRT: keep it, stop calibrating
                calib.error = exc if isinstance(exc, HalpError) else _error(
                    f"calibration batch {calib.used}: {type(exc).__name__}: {exc}")
                return None
            calib.used += 1
            return [self.ptrs[name] for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            calib.cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()


def _layer_profiler(trt: Any) -> Any:
    """An ``IProfiler`` collecting ``report_layer_time`` calls (once per layer per execution)."""

    class LayerTimes(trt.IProfiler):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.times: dict[str, list[float]] = {}

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.times.setdefault(str(layer_name), []).append(float(ms))

    return LayerTimes()


def _layer_timings(times: Mapping[str, list[float]]) -> tuple[LayerTiming, ...]:
    avgs = {name: math.fsum(v) / len(v) for name, v in times.items() if v}
    total = math.fsum(avgs.values())
    return tuple(
        LayerTiming(name=name, time_ms_total=math.fsum(v), avg_ms=avgs[name],
                    median_ms=float(statistics.median(v)),
                    percentage=100.0 * avgs[name] / total if total > 0 else None)
        for name, v in times.items() if v
    )


class TrtBackend(TrtexecDriver):
    """Measures ONNX models on TensorRT, through the Python API or the ``trtexec`` binary.

    ``available()`` says whether the Python API path can run here; every measuring
    method raises a one-line :class:`HalpError` (stage ``tensorrt``) when it cannot.
    """

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
        try:
            trt_version(trt)
        except HalpError as exc:
            return False, exc.message
        ok, device = _probe_cuda()
        if not ok:
            return False, device
        return True, f"TensorRT {trt.__version__} on {device}"

    def _require_trt(self) -> Any:
        ok, reason = self.available()
        if not ok:
            raise _error(f"{reason}; {FALLBACK_HINT}")
        import tensorrt as trt

        return trt

    # -- engine building ---------------------------------------------------------------
    # (_check_precision, trtexec_path and the trtexec methods are inherited from TrtexecDriver)

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
        *,
        for_user: bool = False,
        calib_batches: Iterable[CalibBatch] | None = None,
        calib_cache: Path | None = None,
        cuda: _Cuda | None = None,
        detailed: bool = False,
    ) -> tuple[bytes, dict[str, tuple[int, ...]], str | None]:
        """The serialized engine, the input shapes it was built for and where int8 scales came
        from (``"qdq"``, ``"calibration"``, ``"placeholder"`` or ``None``)."""
        major = trt_version(trt)[0]
        builder = trt.Builder(logger)
        flags = 0
        if major <= EXPLICIT_BATCH_FLAG_LAST:  # the 8.x ONNX parser needs an explicit-batch network
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        model = _model_source(model)
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
        if detailed:  # layer names and parameters for the profiler and the engine inspector
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED

        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, str] = {}
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
            dtypes[tensor.name] = _NUMPY_DTYPES.get(_dtype_name(tensor.dtype), "float32")
            if any(d < 0 for d in model_shape):
                dynamic = True
                dims = trt.Dims(list(shape))
                profile.set_shape(tensor.name, dims, dims, dims)
        if dynamic:
            config.add_optimization_profile(profile)

        calib = None
        if calib_batches is not None:
            calib = _Calibration(calib_batches, shapes, dtypes, calib_cache or Path("calibration.cache"))
        source = self._apply_precision(trt, major, network, config, precision, for_user, calib is not None)
        if calib is not None and source == "calibration":
            if cuda is None:
                raise _error("INT8 calibration needs a CUDA device")
            config.int8_calibrator = _entropy_calibrator(trt, cuda, calib)
            if dynamic:
                config.set_calibration_profile(profile)

        serialized = builder.build_serialized_network(network, config)
        if calib is not None and calib.error is not None:
            raise calib.error
        if calib is not None and source == "calibration" and calib.used == 0:
            raise _error("calib_batches gave no calibration batch; an int8 engine needs at least one")
        if serialized is None:
            raise _error(f"TensorRT failed to build a {precision} engine (see the TensorRT log)")
        return bytes(serialized), shapes, source

    @staticmethod
    def _apply_precision(trt: Any, major: int, network: Any, config: Any, precision: str,
                         for_user: bool, calibrate: bool) -> str | None:
        """Set the builder up for ``precision``; where int8 scales come from, or a one-line error."""
        version = str(trt.__version__)
        weak = major <= WEAK_TYPING_LAST
        if precision == "fp16":
            if weak:
                config.set_flag(trt.BuilderFlag.FP16)
            elif not _has_reduced_float(trt, network):
                raise _error(f"TensorRT {version} builds strongly typed networks only (BuilderFlag.FP16 "
                             "was removed in 11.0): fp16 needs a model with float16 tensors (convert it, "
                             "e.g. with ModelOpt AutoCast) or precision 'fp32'")
            return None
        if precision != "int8":
            return None
        if weak:
            config.set_flag(trt.BuilderFlag.FP16)  # layers without INT8 kernels fall back to FP16
            config.set_flag(trt.BuilderFlag.INT8)
        if _has_qdq(trt, network):
            return "qdq"
        if not weak:
            raise _error(f"TensorRT {version} has no INT8 calibration (implicit quantization was removed "
                         "in 11.0): int8 needs a model with QuantizeLinear/DequantizeLinear nodes")
        if calibrate:
            return "calibration"
        if for_user:
            raise _error("an int8 engine needs calibration data (calib_batches=...) or a model with "
                         "QuantizeLinear/DequantizeLinear nodes; placeholder ranges are for timing only")
        # Timing only: give every tensor a placeholder range, as trtexec --int8 does.  The
        # engine's numbers are meaningless; its speed is what we measure.
        for tensor in _network_tensors(network):
            tensor.set_dynamic_range(-4.0, 4.0)
        return "placeholder"

    def build_engine(
        self,
        model: ModelLike,
        out_plan: str | os.PathLike[str],
        precision: Precision = "fp16",
        *,
        batch: int | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        calib_batches: Iterable[CalibBatch] | None = None,
    ) -> Path:
        """Build a serialized TensorRT engine from an ONNX model and write it to ``out_plan``.

        An int8 engine is calibrated from ``calib_batches`` (each an array shaped like the
        model's input, or ``{input name: array}``) with an entropy calibrator, its cache
        written to ``<out_plan>.calib``, unless the model has QuantizeLinear/DequantizeLinear
        nodes; without either it is refused (TensorRT 11.x accepts only the Q/DQ model).
        """
        self._check_precision(precision)
        trt = self._require_trt()
        out = Path(out_plan)
        cache = out.with_name(out.name + ".calib")
        calibrating = precision == "int8" and calib_batches is not None
        cuda = _open_cuda() if calibrating else None
        try:
            serialized, _, _ = self._build_serialized(
                trt, self._logger(trt), model, precision, batch, input_shapes or {}, for_user=True,
                calib_batches=calib_batches if calibrating else None, calib_cache=cache, cuda=cuda)
        finally:
            if cuda is not None:
                cuda.close()
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
        profile_layers: bool = False,
    ) -> TrtMeasurement:
        """Build an engine and time ``iters`` runs of ``execute_async_v3`` with CUDA events.

        ``batch`` overrides a dynamic first dimension (dynamic: 1 when ``None``);
        ``input_shapes`` fixes any input's full shape.  Inputs are random floats or zeros.
        Each sample brackets one enqueue with events on an otherwise idle stream, so for
        very small engines it includes the launch gap that trtexec's pipelined
        ``GPU Compute Time`` hides.  ``profile_layers`` builds with detailed profiling
        verbosity and, after the timed runs, runs ``iters`` more with an ``IProfiler``
        attached for per-layer times and asks the engine inspector for the layers.
        """
        self._check_precision(precision)
        if iters < 1 or warmup < 0:
            raise _error(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
        trt = self._require_trt()
        logger = self._logger(trt)
        serialized, shapes, source = self._build_serialized(
            trt, logger, model, precision, batch, input_shapes or {}, detailed=profile_layers)
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
                if not context.set_input_shape(name, trt.Dims(list(shapes[name]))):
                    raise _error(f"TensorRT rejected shape {shapes[name]} for input {name!r}")
            for name in names:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise _error(f"output {name!r} has a data-dependent shape {shape}; time this "
                                 "model with time_with_trtexec instead")
                nbytes, fill = _nbytes(shape, engine.get_tensor_dtype(name))
                ptr = cuda.alloc(nbytes, fill if name in inputs else None)
                if not context.set_tensor_address(name, ptr):
                    raise _error(f"TensorRT rejected the buffer for tensor {name!r}")
            cuda.synchronize()  # input buffers are filled before the first run

            handle = cuda.stream_handle

            def run() -> None:
                if not context.execute_async_v3(handle):
                    raise _error("execute_async_v3 failed (see the TensorRT log)")

            for _ in range(warmup):
                run()
            cuda.synchronize()
            samples = tuple(cuda.time_call(run) for _ in range(iters))
            layers: tuple[LayerTiming, ...] = ()
            info: EngineInfo | None = None
            if profile_layers:
                profiler = _layer_profiler(trt)
                context.profiler = profiler
                for _ in range(iters):
                    run()
                cuda.synchronize()
                layers = _layer_timings(profiler.times)
                info = self._engine_info(trt, engine, context, names)
            device = cuda.device_name
        finally:
            cuda.close()
        return TrtMeasurement(
            samples_ms=samples,
            precision=precision,
            input_shapes=tuple((n, shapes[n]) for n in sorted(shapes)),
            trt_version=str(trt.__version__),
            device=device,
            layers=layers,
            engine_info=info,
            int8_source=source,
        )

    @staticmethod
    def _engine_info(trt: Any, engine: Any, context: Any, names: Sequence[str]) -> EngineInfo | None:
        """The engine inspector's layers (JSON) with the engine's I/O tensor names as bindings
        (11.x replaced the inspector's ``Bindings`` list with ``I/O Tensors`` objects)."""
        inspector = engine.create_engine_inspector()
        if inspector is None:
            return None
        inspector.execution_context = context
        text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        try:
            parsed = parse_engine_info(str(text))
        except HalpError:
            return None
        return EngineInfo(layers=parsed.layers, bindings=tuple(names))

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
