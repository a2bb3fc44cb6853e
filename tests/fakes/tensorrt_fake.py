"""A test double of the ``tensorrt`` module, claiming to be one real release, and of the CUDA side.

``make(version)`` returns a module whose ``__version__`` is ``version`` and whose classes expose,
for everything the Python-API driver uses, exactly the names the real bindings of that release
have: ``tests/data/trt_surface/<version>.json``, extracted from NVIDIA's wheel by
``tools/trt_surface.py``.  Enums are generated from the surface; a real member the double does not
model raises ``NotImplementedError`` naming it; a name the release lacks is absent (``AttributeError``,
as on the real module).  Building a class asserts that every public name it implements exists in
the surface, that properties are properties, and that each method's parameter names are those of
one of the real signatures (the bindings' docstrings).  ``make`` runs for every surface at import.

The behaviour is what the TensorRT Python API documents, cited per class below.  Pages:
``D8`` = https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-861/api/python_api,
``D10`` = https://docs.nvidia.com/deeplearning/tensorrt/api/python_api,
``D11`` = https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/_static/python-api.

``FakeCuda`` implements the driver's CUDA helper (``halp_onnx.profiles.trt.cuda._Cuda``) over host
memory that the fake engine reads; ``install(monkeypatch, version)`` puts both in place.
"""
from __future__ import annotations

import itertools
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, shape_inference

from tests.fakes import make_enum, surface_class

SURFACE_DIR = Path(__file__).resolve().parents[1] / "data" / "trt_surface"
DEVICE_MEMORY: dict[int, bytearray] = {}  # "device" buffers of FakeCuda, by pointer
_NEXT_PTR = itertools.count(0x7F0000000000, 0x10000)


def versions() -> list[str]:
    return sorted((p.stem for p in SURFACE_DIR.glob("*.json")), key=lambda v: tuple(map(int, v.split("."))))


def surface(version: str) -> dict[str, Any]:
    return json.loads((SURFACE_DIR / f"{version}.json").read_text())


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _log(trt: Any, severity: str, msg: str) -> None:
    trt._state["log"].append((severity, msg))


# -- Dims --------------------------------------------------------------------------------------


class Dims:
    """``tensorrt.Dims(shape)``: a sequence of ints (D10 index.html, Foundational Types: Dims)."""

    def __init__(self, shape: Any = ()) -> None:
        self._dims = tuple(int(d) for d in shape)

    __iter__ = lambda self: iter(self._dims)  # noqa: E731
    __len__ = lambda self: len(self._dims)  # noqa: E731
    __getitem__ = lambda self, i: self._dims[i]  # noqa: E731
    __repr__ = lambda self: repr(self._dims)  # noqa: E731

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if hasattr(other, "__iter__") else NotImplemented


def _dims(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"incompatible function arguments: expected Dims, got {type(value).__name__}")
    return tuple(int(d) for d in value)


# -- application-implemented interfaces (subclassed by the driver) ---------------------------


class _Subclassable:
    """pybind11 trampolines: a subclass must call the base ``__init__`` ("To implement a custom
    profiler, ensure that you explicitly instantiate the base class in __init__()", D10
    infer/Core/Profiler.html; the same for calibrators, D10 infer/Int8/pyInt8.html)."""

    def __init__(self) -> None:
        self._trt_base_init = True


def _require_base_init(obj: Any, what: str) -> None:
    if obj is not None and not getattr(obj, "_trt_base_init", False):
        raise TypeError(f"{type(obj).__name__}.__init__() must be called when overriding __init__ ({what})")


# The application-implemented methods (report_layer_time, get_batch_size, get_batch,
# read/write_calibration_cache) are left to the surface: calling one not overridden raises.


class IProfiler(_Subclassable):
    """``report_layer_time(layer_name, ms)`` is called once per layer for each execution
    (D10 infer/Core/Profiler.html; the C++ IProfiler: for executeV2()/enqueueV2()/enqueueV3())."""


class IInt8EntropyCalibrator2(_Subclassable):
    """get_batch_size / get_batch(names) -> device pointers, None when done / read_calibration_cache
    -> bytes or None / write_calibration_cache(cache), all application-implemented (D10 infer/Int8/pyInt8.html)."""

    def get_algorithm(self) -> Any:
        return self._trt.CalibrationAlgoType.ENTROPY_CALIBRATION_2


# -- logging, network, parser ----------------------------------------------------------------


class Logger:
    """``Logger(min_severity)`` with ``log(severity, msg)`` (D10 infer/Core/Logger.html)."""

    def __init__(self, min_severity: Any = None) -> None:
        self._min = min_severity

    min_severity = property(lambda self: self._min)

    def log(self, severity: Any, msg: str) -> None:
        self._trt._state["log"].append((getattr(severity, "name", str(severity)), msg))


class ITensor:
    """name, shape (-1 for a runtime dimension), dtype, set_dynamic_range (8.x/10.x)
    (D10 infer/Graph/LayerBase.html)."""

    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
        self._name, self._shape, self._dtype, self._range = name, shape, dtype, None

    name = property(lambda self: self._name)
    shape = property(lambda self: self._trt.Dims(self._shape))
    dtype = property(lambda self: self._dtype)
    is_shape_tensor = property(lambda self: False)

    def set_dynamic_range(self, min: float, max: float) -> bool:  # noqa: A002 (the real names)
        self._range = (float(min), float(max))
        return True


class ILayer:
    """name, type (a ``LayerType``), outputs (D10 infer/Graph/LayerBase.html)."""

    def __init__(self, name: str, kind: Any, outputs: list[ITensor]) -> None:
        self._name, self._type, self._outputs = name, kind, outputs

    name = property(lambda self: self._name)
    type = property(lambda self: self._type)
    num_outputs = property(lambda self: len(self._outputs))

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


_LAYER_TYPES = {"Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION", "Relu": "ACTIVATION",
                "Sigmoid": "ACTIVATION", "HardSwish": "ACTIVATION", "Clip": "ACTIVATION",
                "BatchNormalization": "SCALE", "Add": "ELEMENTWISE", "Mul": "ELEMENTWISE",
                "Pad": "PADDING", "Slice": "SLICE", "GlobalAveragePool": "REDUCE", "Flatten": "SHUFFLE",
                "Reshape": "SHUFFLE", "Gemm": "MATRIX_MULTIPLY", "MatMul": "MATRIX_MULTIPLY",
                "Concat": "CONCATENATION", "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE"}
_ONNX_TYPES = {TensorProto.FLOAT: "FLOAT", TensorProto.FLOAT16: "HALF", TensorProto.BFLOAT16: "BF16",
               TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8", TensorProto.INT32: "INT32",
               TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL"}


class INetworkDefinition:
    """Inputs and layers filled by the ONNX parser (D10 infer/Graph/Network.html)."""

    def __init__(self, flags: int) -> None:
        self._flags, self._inputs, self._layers, self._outputs = flags, [], [], []

    num_inputs = property(lambda self: len(self._inputs))
    num_layers = property(lambda self: len(self._layers))

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_layer(self, index: int) -> ILayer:
        return self._layers[index]

    def _dtype(self, elem_type: int) -> Any:
        name = _ONNX_TYPES.get(elem_type, "FLOAT")
        members = self._trt.DataType.__members__
        return members.get(name) or members["INT32"]  # 8.6 has no INT64: its parser casts to INT32

    def _load(self, model: onnx.ModelProto) -> None:
        inferred = shape_inference.infer_shapes(model)
        graph = inferred.graph
        infos = {v.name: v.type.tensor_type for v in [*graph.input, *graph.value_info, *graph.output]}
        inits = {i.name for i in graph.initializer}

        def tensor(name: str) -> ITensor:
            tt = infos.get(name)
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim) if tt else ()
            return self._trt.ITensor(name, dims, self._dtype(tt.elem_type if tt else TensorProto.FLOAT))

        self._inputs = [tensor(v.name) for v in graph.input if v.name not in inits]
        kinds = self._trt.LayerType.__members__
        for i, node in enumerate(graph.node):
            kind = kinds[_LAYER_TYPES.get(node.op_type, "IDENTITY")]
            layer = self._trt.ILayer(node.name or f"{node.op_type}_{i}", kind, [tensor(o) for o in node.output])
            self._layers.append(layer)
        self._outputs = [tensor(v.name) for v in graph.output]


class OnnxParser:
    """parse(model bytes) / parse_from_file(path) -> bool, errors through num_errors/get_error
    (D8 parsers/Onnx/pyOnnx.html).  TensorRT 8.x: explicit batch "is also required by the ONNX
    parser" (8.x Developer Guide, "Explicit Versus Implicit Batch",
    https://docs.nvidia.com/deeplearning/tensorrt/developer-guide/index.html#explicit-implicit-batch)."""

    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self._network, self._errors = network, []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> str:
        return self._errors[index]

    def parse(self, model: Any, path: str | None = None) -> bool:
        return self._import(lambda: onnx.load_from_string(bytes(model)))

    def parse_from_file(self, model: str) -> bool:
        return self._import(lambda: onnx.load(model))

    def _import(self, load: Any) -> bool:
        try:
            proto = load()
        except Exception as exc:  # the real parser reports, it does not raise
            self._errors.append(f"ModelImporter: failed to parse the ONNX model ({exc})")
            return False
        trt = self._trt
        if _major(trt) == 8:
            bit = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
            if not self._network._flags & bit:
                self._errors.append("the ONNX parser requires an explicit-batch network")
                return False
        if not proto.graph.node:
            self._errors.append("ModelImporter: the ONNX graph has no nodes")
            return False
        self._network._load(proto)
        return True


# -- builder -----------------------------------------------------------------------------------


class IOptimizationProfile:
    """set_shape(input, min, opt, max) for every runtime-dimension input (D10 infer/Core/OptimizationProfile.html)."""

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
        self._shapes[input] = (_dims(min), _dims(opt), _dims(max))


class IBuilderConfig:
    """Flags, memory pools, optimization profiles, int8_calibrator / set_calibration_profile
    (8.x/10.x), profiling_verbosity (D10 infer/Core/BuilderConfig.html)."""

    def __init__(self) -> None:
        self._flags, self._pools, self._profiles = set(), {}, []
        self._calibrator, self._calib_profile, self._verbosity = None, None, None

    def set_flag(self, flag: Any) -> None:
        self._flags.add(flag.name)

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._pools[pool.name] = int(pool_size)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self._calib_profile = profile
        return True

    def _set_calibrator(self, value: Any) -> None:
        _require_base_init(value, "int8_calibrator")
        self._calibrator = value

    int8_calibrator = property(lambda self: self._calibrator, _set_calibrator)
    profiling_verbosity = property(lambda self: self._verbosity or self._trt.ProfilingVerbosity.LAYER_NAMES_ONLY,
                                   lambda self, v: setattr(self, "_verbosity", v))


class IHostMemory:
    """The serialized engine: a buffer (D10 index.html, Foundational Types: IHostMemory)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    nbytes = property(lambda self: len(self._data))

    def __bytes__(self) -> bytes:
        return self._data


class Builder:
    """create_network(flags), create_builder_config(), create_optimization_profile(),
    build_serialized_network(network, config) -> IHostMemory or None (D10 infer/Core/Builder.html)."""

    def __init__(self, logger: Logger) -> None:
        self._logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return self._trt.INetworkDefinition(int(flags))

    def create_builder_config(self) -> IBuilderConfig:
        return self._trt.IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return self._trt.IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> Any:
        trt = self._trt
        profiled = {name for p in config._profiles for name in p._shapes}
        for tensor in network._inputs:
            if any(d < 0 for d in tensor._shape) and tensor.name not in profiled:
                _log(trt, "ERROR", "Network has dynamic or shape inputs, but no optimization profile has been defined.")
                return None
        qdq = any(layer.type.name in ("QUANTIZE", "DEQUANTIZE") for layer in network._layers)
        scales = "qdq" if qdq else None
        if "INT8" in config._flags and not qdq:
            if config._calibrator is not None:
                if not self._calibrate(network, config._calibrator):
                    return None
                scales = "calibration"
            else:  # no calibrator: the tensors' dynamic ranges; a tensor without one falls back
                tensors = [*network._inputs, *(t for layer in network._layers for t in layer._outputs)]
                missing = [t.name for t in tensors if t._range is None]
                for name in missing:  # (TensorRT's build log warns so and builds)
                    _log(trt, "WARNING", f"Missing scale and zero-point for tensor {name}, expect fall back "
                                         "to non-int8 implementation")
                scales = "dynamic_range" if not missing else "missing"
        plan = {"fake_tensorrt": str(trt.__version__), "flags": sorted(config._flags), "int8_scales": scales,
                "verbosity": config.profiling_verbosity.name,
                "inputs": [[t.name, list(t._shape), t.dtype.name] for t in network._inputs],
                "outputs": [[t.name, list(t._shape), t.dtype.name] for t in network._outputs],
                "layers": [[layer.name, layer.type.name] for layer in network._layers]}
        return trt.IHostMemory(json.dumps(plan).encode())

    def _calibrate(self, network: INetworkDefinition, calibrator: Any) -> bool:
        """Read the cache, else feed get_batch(input names) until it returns None / [] and write the cache."""
        trt = self._trt
        names = [t.name for t in network._inputs]
        cache = calibrator.read_calibration_cache()
        if not cache:
            batch_size, batches, peak = int(calibrator.get_batch_size()), 0, 0.0
            while True:
                ptrs = calibrator.get_batch(names)
                if not ptrs:
                    break
                if len(ptrs) != len(names) or any(int(p) not in DEVICE_MEMORY for p in ptrs):
                    _log(trt, "ERROR", "get_batch returned invalid device pointers")
                    return False
                for tensor, ptr in zip(network._inputs, ptrs):
                    count = int(np.prod(tensor._shape))
                    data = np.frombuffer(DEVICE_MEMORY[int(ptr)], dtype=np.float32, count=count)
                    peak = max(peak, float(np.abs(data).max(initial=0.0)))
                batches += 1
            if not batches:
                _log(trt, "ERROR", "Calibration failure occurred with no scaling factors detected.")
                return False
            trt._state["calibrated"].append({"batches": batches, "batch_size": batch_size, "peak": peak})
            cache = f"TRT-{trt.__version__}-EntropyCalibration2\n" + "".join(
                f"{n}: {np.float32(peak / 127.0).view(np.uint32):08x}\n" for n in names)
            calibrator.write_calibration_cache(cache.encode())
        return True


# -- runtime, engine, context, inspector ----------------------------------------------------------


class Runtime:
    """deserialize_cuda_engine(buffer) -> ICudaEngine, or None if it cannot (an engine of another
    TensorRT version; D10 infer/Core/Runtime.html)."""

    def __init__(self, logger: Logger) -> None:
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        trt = self._trt
        try:
            plan = json.loads(bytes(serialized_engine))
        except (ValueError, TypeError):
            plan = {}
        if plan.get("fake_tensorrt") != str(trt.__version__):
            _log(trt, "ERROR", "The engine plan file is not compatible with this version of TensorRT")
            return None
        return trt.ICudaEngine(plan)


class ICudaEngine:
    """Named I/O tensors: num_io_tensors, get_tensor_name(index), get_tensor_mode/dtype/shape(name)
    (D10 infer/Core/Engine.html)."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self._plan = plan
        self._io = {n: (shape, dtype, "INPUT") for n, shape, dtype in plan["inputs"]}
        self._io.update({n: (shape, dtype, "OUTPUT") for n, shape, dtype in plan["outputs"]})

    num_io_tensors = property(lambda self: len(self._io))
    num_layers = property(lambda self: len(self._plan["layers"]))

    def get_tensor_name(self, index: int) -> str:
        return list(self._io)[index]

    def get_tensor_mode(self, name: str) -> Any:
        return self._trt.TensorIOMode.__members__[self._io[name][2]]

    def get_tensor_dtype(self, name: str) -> Any:
        return self._trt.DataType.__members__[self._io[name][1]]

    def get_tensor_shape(self, name: str) -> Dims:
        return self._trt.Dims(self._io[name][0])

    def create_execution_context(self) -> Any:
        return self._trt.IExecutionContext(self)

    def create_engine_inspector(self) -> Any:
        return self._trt.EngineInspector(self)


class IExecutionContext:
    """set_input_shape(name, shape) -> bool, get_tensor_shape(name), set_tensor_address(name,
    memory) -> bool, execute_async_v3(stream_handle) -> bool (every I/O address must be set), and
    the profiler, called per layer on each execution since enqueue_emits_profile defaults to True
    (D8 and D11 infer/Core/ExecutionContext.html)."""

    def __init__(self, engine: ICudaEngine) -> None:
        self._engine, self._shapes, self._addresses, self._profiler = engine, {}, {}, None

    def _set_profiler(self, value: Any) -> None:
        _require_base_init(value, "profiler")
        self._profiler = value

    profiler = property(lambda self: self._profiler, _set_profiler)

    def set_input_shape(self, name: str, shape: Any) -> bool:
        want = self._engine._io.get(name)
        dims = _dims(shape)
        if want is None or want[2] != "INPUT" or len(dims) != len(want[0]) or any(
                w >= 0 and w != d for w, d in zip(want[0], dims)):
            return False
        self._shapes[name] = dims
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        shape, _, mode = self._engine._io[name]
        if mode == "INPUT":
            return self._trt.Dims(self._shapes.get(name, shape))
        batch = next(iter(self._shapes.values()), (1,))[0] if self._shapes else 1
        return self._trt.Dims([batch if d < 0 else d for d in shape])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self._engine._io:
            return False
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        trt = self._trt
        for name, (shape, _, mode) in self._engine._io.items():
            if name not in self._addresses or self._addresses[name] not in DEVICE_MEMORY:
                _log(trt, "ERROR", f"IExecutionContext::enqueueV3: address of tensor {name!r} is not set")
                return False
            if mode == "INPUT" and any(d < 0 for d in shape) and name not in self._shapes:
                _log(trt, "ERROR", f"IExecutionContext::enqueueV3: shape of input {name!r} is not set")
                return False
        trt._state["executions"] += 1
        if self._profiler is not None:
            for i, (layer, _kind) in enumerate(self._engine._plan["layers"]):
                self._profiler.report_layer_time(layer, 0.001 * (i + 1))
        return True


class EngineInspector:
    """execution_context, get_engine_information(format): the layers (names only unless built with
    ProfilingVerbosity.DETAILED) and the I/O tensors, "Bindings" up to 10.x and "I/O Tensors" in
    11.x (D10 infer/Core/EngineInspector.html; the 11.x migration guide, IEngineInspector JSON)."""

    def __init__(self, engine: ICudaEngine) -> None:
        self._engine, self._context = engine, None

    execution_context = property(lambda self: self._context, lambda self, v: setattr(self, "_context", v))

    def _layer(self, index: int) -> Any:
        name, kind = self._engine._plan["layers"][index]
        if self._engine._plan["verbosity"] != "DETAILED":
            return name
        return {"Name": name, "LayerType": kind.title(), "Inputs": [], "Outputs": []}

    def get_engine_information(self, format: Any) -> str:  # noqa: A002
        doc: dict[str, Any] = {"Layers": [self._layer(i) for i in range(self._engine.num_layers)]}
        if _major(self._trt) >= 11:
            doc["I/O Tensors"] = [{"Name": n, "IOMode": m.title(), "DataType": d, "Dimensions": s}
                                  for n, (s, d, m) in self._engine._io.items()]
        else:
            doc["Bindings"] = list(self._engine._io)
        return json.dumps(doc)


# -- building the module ------------------------------------------------------------------------

_IMPLS: dict[str, type] = {c.__name__: c for c in (
    Dims, Logger, Builder, INetworkDefinition, ITensor, ILayer, OnnxParser, IOptimizationProfile, IBuilderConfig,
    IHostMemory, Runtime, ICudaEngine, IExecutionContext, EngineInspector, IProfiler, IInt8EntropyCalibrator2)}


def make(version: str) -> types.ModuleType:
    """A fake ``tensorrt`` module that claims to be ``version`` (a surface under SURFACE_DIR)."""
    surf = surface(version)
    trt = types.ModuleType("tensorrt", f"fake tensorrt {version} (tests/fakes/tensorrt_fake.py)")
    trt.__version__ = version
    trt._state = {"log": [], "executions": 0, "calibrated": []}
    for qualname, members in surf["enums"].items():
        if "." not in qualname:
            setattr(trt, qualname, make_enum(qualname, members))
    severity = make_enum("ILogger.Severity", surf["enums"]["ILogger.Severity"])
    every = [surface(v) for v in versions()]
    for name, impl in _IMPLS.items():
        if name in surf["classes"]:  # IInt8EntropyCalibrator2 is not in 11.x
            extra = {"Severity": severity, **severity.__members__} if name == "Logger" else {}
            # (the wheel's __init__.py copies ILogger.Severity onto Logger)
            setattr(trt, name, surface_class(name, impl, surf, every, trt, extra, f"tensorrt {version}"))
    return trt


# -- the CUDA side --------------------------------------------------------------------------------


class FakeCuda:
    """The driver's CUDA helper over host memory (``cuda._Cuda``): alloc / upload / stream_handle /
    synchronize / time_call (wall time of the call) / close."""

    device_name = "Fake GPU (tests/fakes/tensorrt_fake.py)"

    def __init__(self) -> None:
        self._ptrs: list[int] = []
        self.uploads = 0

    def alloc(self, nbytes: int, random_dtype: str | None) -> int:
        ptr = next(_NEXT_PTR)
        DEVICE_MEMORY[ptr] = bytearray(max(1, int(nbytes)))
        if random_dtype in ("float32", "float16"):
            values = np.random.default_rng(0).random(len(DEVICE_MEMORY[ptr]) // np.dtype(random_dtype).itemsize)
            data = values.astype(random_dtype).tobytes()
            DEVICE_MEMORY[ptr][: len(data)] = data
        self._ptrs.append(ptr)
        return ptr

    def upload(self, ptr: int, host: Any) -> None:
        data = np.ascontiguousarray(host).tobytes()
        assert len(data) <= len(DEVICE_MEMORY[ptr]), "upload larger than the buffer"
        DEVICE_MEMORY[ptr][: len(data)] = data
        self.uploads += 1

    stream_handle = property(lambda self: 0x5EED)

    def synchronize(self) -> None:
        pass

    def time_call(self, fn: Any) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    def close(self) -> None:
        for ptr in self._ptrs:
            DEVICE_MEMORY.pop(ptr, None)
        self._ptrs.clear()


def install(monkeypatch: Any, version: str) -> types.ModuleType:
    """Make ``import tensorrt`` give the fake ``version`` and the driver use :class:`FakeCuda`."""
    from halp_onnx.profiles.trt import api_driver

    trt = make(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(api_driver, "_open_cuda", FakeCuda)
    monkeypatch.setattr(api_driver, "_probe_cuda", lambda: (True, FakeCuda.device_name))
    return trt


for _version in versions():  # every fake class checked against every surface at import
    make(_version)
