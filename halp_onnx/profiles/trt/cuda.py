"""CUDA device buffers, a stream and event timing for the TensorRT Python-API driver, backed by
torch when it sees a GPU, else by cuda-python (:func:`_open_cuda`, :func:`_probe_cuda`)."""
from __future__ import annotations

from typing import Any, Protocol

from halp_onnx.errors import HalpError

from .common import _error


class _Cuda(Protocol):
    """Device buffers, a stream and event timing; backed by torch or cuda-python."""

    device_name: str

    def alloc(self, nbytes: int, random_dtype: str | None) -> int: ...

    def upload(self, ptr: int, host: Any) -> None:
        """Copy a host numpy array into the buffer at ``ptr`` (from :meth:`alloc`), synchronously."""

    @property
    def stream_handle(self) -> int: ...

    def synchronize(self) -> None: ...

    def time_call(self, fn: Any) -> float: ...

    def close(self) -> None: ...


class _TorchCuda:
    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise _error("torch sees no CUDA device")
        self._torch = torch
        self.device_name = str(torch.cuda.get_device_name(0))
        self._stream = torch.cuda.Stream()
        self._buffers: dict[int, Any] = {}
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def alloc(self, nbytes: int, random_dtype: str | None) -> int:
        torch = self._torch
        float_types = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if random_dtype in float_types:
            dtype = float_types[random_dtype]
            count = max(1, nbytes // torch.empty((), dtype=dtype).element_size())
            buf = torch.rand(count, dtype=dtype, device="cuda")
        else:
            buf = torch.zeros(max(1, nbytes), dtype=torch.uint8, device="cuda")
        self._buffers[int(buf.data_ptr())] = buf
        return int(buf.data_ptr())

    def upload(self, ptr: int, host: Any) -> None:
        import numpy as np

        data = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        dst = self._buffers[ptr].view(self._torch.uint8)
        if data.size > dst.numel():
            raise _error(f"{data.size} bytes do not fit a {dst.numel()}-byte device buffer")
        dst[: data.size].copy_(self._torch.from_numpy(data.copy()))
        self._torch.cuda.synchronize()

    @property
    def stream_handle(self) -> int:
        return int(self._stream.cuda_stream)

    def synchronize(self) -> None:
        self._torch.cuda.synchronize()  # device-wide: buffers were filled on the default stream

    def time_call(self, fn: Any) -> float:
        self._start.record(self._stream)
        fn()
        self._end.record(self._stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def close(self) -> None:
        self._buffers.clear()


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


class _CudaPython:
    def __init__(self) -> None:
        import numpy as np

        self._np = np
        self._rt = _import_cudart()
        self._ptrs: list[Any] = []
        self._sizes: dict[int, int] = {}
        count = self._call(self._rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not count:
            raise _error("cuda-python sees no CUDA device")
        props = self._call(self._rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = props.name
        self.device_name = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")
        self._stream = self._call(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self._start = self._call(self._rt.cudaEventCreate(), "cudaEventCreate")
        self._end = self._call(self._rt.cudaEventCreate(), "cudaEventCreate")

    def _call(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise _error(f"{what} failed: {err}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def alloc(self, nbytes: int, random_dtype: str | None) -> int:
        np = self._np
        nbytes = max(1, nbytes)
        ptr = self._call(self._rt.cudaMalloc(nbytes), "cudaMalloc")
        self._ptrs.append(ptr)
        self._sizes[int(ptr)] = nbytes
        if random_dtype in ("float32", "float16"):
            dtype = np.dtype(random_dtype)
            host = np.random.default_rng(0).random(nbytes // dtype.itemsize).astype(dtype)
            self._call(
                self._rt.cudaMemcpy(ptr, host.ctypes.data, host.nbytes,
                                    self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice),
                "cudaMemcpy",
            )
        else:
            self._call(self._rt.cudaMemset(ptr, 0, nbytes), "cudaMemset")
        return int(ptr)

    def upload(self, ptr: int, host: Any) -> None:
        data = self._np.ascontiguousarray(host)
        if data.nbytes > self._sizes.get(ptr, 0):
            raise _error(f"{data.nbytes} bytes do not fit a {self._sizes.get(ptr, 0)}-byte device buffer")
        self._call(self._rt.cudaMemcpy(ptr, data.ctypes.data, data.nbytes,
                                       self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy")

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        self._call(self._rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    def time_call(self, fn: Any) -> float:
        self._call(self._rt.cudaEventRecord(self._start, self._stream), "cudaEventRecord")
        fn()
        self._call(self._rt.cudaEventRecord(self._end, self._stream), "cudaEventRecord")
        self._call(self._rt.cudaEventSynchronize(self._end), "cudaEventSynchronize")
        return float(self._call(self._rt.cudaEventElapsedTime(self._start, self._end),
                                "cudaEventElapsedTime"))

    def close(self) -> None:
        for ptr in self._ptrs:
            self._rt.cudaFree(ptr)
        self._ptrs.clear()
        self._sizes.clear()
        self._rt.cudaEventDestroy(self._start)
        self._rt.cudaEventDestroy(self._end)
        self._rt.cudaStreamDestroy(self._stream)


def _open_cuda() -> _Cuda:
    """A CUDA helper from torch if it sees a GPU, else from cuda-python."""
    reasons: list[str] = []
    try:
        return _TorchCuda()
    except ImportError:
        reasons.append("torch is not installed")
    except HalpError as exc:
        reasons.append(exc.message)
    try:
        return _CudaPython()
    except ImportError:
        reasons.append("cuda-python is not installed")
    except HalpError as exc:
        reasons.append(exc.message)
    raise _error("no usable CUDA device (" + "; ".join(reasons) + ")")


def _probe_cuda() -> tuple[bool, str]:
    """(True, device name) or (False, reason) without allocating anything."""
    reasons: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            return True, str(torch.cuda.get_device_name(0))
        reasons.append("torch sees no CUDA device")
    except ImportError:
        reasons.append("torch is not installed")
    except Exception as exc:
        reasons.append(f"torch CUDA check failed ({type(exc).__name__}: {exc})")
    try:
        cudart = _import_cudart()
        err, count = cudart.cudaGetDeviceCount()
        if int(err) == 0 and count:
            return True, "CUDA device 0"
        reasons.append(f"cuda-python sees no CUDA device ({getattr(err, 'name', err)})")
    except ImportError:
        reasons.append("cuda-python is not installed")
    except Exception as exc:  # a driver-less machine can fail inside the binding itself
        reasons.append(f"cuda-python failed ({type(exc).__name__}: {exc})")
    return False, "no CUDA device is visible (" + "; ".join(reasons) + ")"
