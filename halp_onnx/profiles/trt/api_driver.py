"""The TensorRT Python-API driver: :class:`TrtBackend` builds an engine with the builder and
ONNX parser and times ``execute_async_v3`` with CUDA events; its ``trtexec`` methods come from
:class:`~halp_onnx.profiles.trt.trtexec_driver.TrtexecDriver`."""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import FALLBACK_HINT, NOT_INSTALLED, ModelLike, Precision, _error, _resolve_shape
from .cuda import _open_cuda, _probe_cuda
from .records import TrtMeasurement
from .trtexec_driver import TrtexecDriver

# Byte size and random-fill type for TensorRT data types, by enum name.
_TRT_DTYPES: dict[str, tuple[float, str | None]] = {
    "FLOAT": (4, "float32"),
    "HALF": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "INT8": (1, None),
    "UINT8": (1, None),
    "FP8": (1, None),
    "INT32": (4, None),
    "INT64": (8, None),
    "BOOL": (1, None),
    "INT4": (0.5, None),
    "FP4": (0.5, None),
}


def _dtype_name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1].upper()


def _nbytes(shape: Sequence[int], dtype: Any) -> tuple[int, str | None]:
    size, fill = _TRT_DTYPES.get(_dtype_name(dtype), (4, None))
    return int(math.ceil(math.prod(shape) * size)), fill


def _trt_major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


def _model_source(model: ModelLike) -> bytes | str | os.PathLike[str]:
    """``model`` as TensorRT's ONNX parser takes it: an in-memory ``onnx.ModelProto`` serialised
    to bytes, anything else (bytes, a path) as it is."""
    if isinstance(model, (bytes, bytearray, str, os.PathLike)):
        return model
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    return model


class TrtBackend(TrtexecDriver):
    """Measures ONNX models on TensorRT, through the Python API or the ``trtexec`` binary.

    ``available()`` says whether the Python API path can run here; every measuring
    method raises a one-line :class:`HalpError` (stage ``tensorrt``) when it cannot.
    """

    MIN_VERSION = (8, 5)  # the named-tensor API (set_tensor_address, execute_async_v3)

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
        version = str(getattr(trt, "__version__", "0"))
        parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
        if parts < self.MIN_VERSION:
            need = ".".join(map(str, self.MIN_VERSION))
            return False, f"TensorRT {version} is too old; {need} or newer is needed"
        ok, device = _probe_cuda()
        if not ok:
            return False, device
        return True, f"TensorRT {version} on {device}"

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
    ) -> tuple[bytes, dict[str, tuple[int, ...]]]:
        builder = trt.Builder(logger)
        flags = 0
        if _trt_major(trt) < 10:  # 10.x networks are always explicit-batch
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
        self._apply_precision(trt, network, config, precision)

        shapes: dict[str, tuple[int, ...]] = {}
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
            if any(d < 0 for d in model_shape):
                dynamic = True
                profile.set_shape(tensor.name, shape, shape, shape)
        if dynamic:
            config.add_optimization_profile(profile)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise _error(f"TensorRT failed to build a {precision} engine (see the TensorRT log)")
        return bytes(serialized), shapes

    @staticmethod
    def _apply_precision(trt: Any, network: Any, config: Any, precision: str) -> None:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision != "int8":
            return
        config.set_flag(trt.BuilderFlag.INT8)
        has_qdq = any(
            network.get_layer(i).type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
            for i in range(network.num_layers)
        )
        if has_qdq:
            return
        # No Q/DQ and no calibrator: give every tensor a placeholder range, as trtexec --int8
        # does.  The engine's numbers are meaningless; its speed is what we measure.
        tensors: list[Any] = [network.get_input(i) for i in range(network.num_inputs)]
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            tensors.extend(layer.get_output(j) for j in range(layer.num_outputs))
        for tensor in tensors:
            if hasattr(tensor, "set_dynamic_range"):
                tensor.set_dynamic_range(-4.0, 4.0)

    def build_engine(
        self,
        model: ModelLike,
        out_plan: str | os.PathLike[str],
        precision: Precision = "fp16",
        *,
        batch: int | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> Path:
        """Build a serialized TensorRT engine from an ONNX model and write it to ``out_plan``."""
        self._check_precision(precision)
        trt = self._require_trt()
        serialized, _ = self._build_serialized(trt, self._logger(trt), model, precision, batch,
                                               input_shapes or {})
        out = Path(out_plan)
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
    ) -> TrtMeasurement:
        """Build an engine and time ``iters`` runs of ``execute_async_v3`` with CUDA events.

        ``batch`` overrides a dynamic first dimension (dynamic: 1 when ``None``);
        ``input_shapes`` fixes any input's full shape.  Inputs are random floats or zeros.
        Each sample brackets one enqueue with events on an otherwise idle stream, so for
        very small engines it includes the launch gap that trtexec's pipelined
        ``GPU Compute Time`` hides.
        """
        self._check_precision(precision)
        if iters < 1 or warmup < 0:
            raise _error(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
        trt = self._require_trt()
        logger = self._logger(trt)
        serialized, shapes = self._build_serialized(trt, logger, model, precision, batch,
                                                    input_shapes or {})
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
                if not context.set_input_shape(name, shapes[name]):
                    raise _error(f"TensorRT rejected shape {shapes[name]} for input {name!r}")
            for name in names:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise _error(f"output {name!r} has a data-dependent shape {shape}; time this "
                                 "model with time_with_trtexec instead")
                nbytes, fill = _nbytes(shape, engine.get_tensor_dtype(name))
                ptr = cuda.alloc(nbytes, fill if name in inputs else None)
                context.set_tensor_address(name, ptr)
            cuda.synchronize()  # input buffers are filled before the first run

            handle = cuda.stream_handle

            def run() -> None:
                if not context.execute_async_v3(handle):
                    raise _error("execute_async_v3 failed (see the TensorRT log)")

            for _ in range(warmup):
                run()
            cuda.synchronize()
            samples = tuple(cuda.time_call(run) for _ in range(iters))
            device = cuda.device_name
        finally:
            cuda.close()
        return TrtMeasurement(
            samples_ms=samples,
            precision=precision,
            input_shapes=tuple((n, shapes[n]) for n in sorted(shapes)),
            trt_version=str(trt.__version__),
            device=device,
        )

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
