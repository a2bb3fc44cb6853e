"""Named latency targets (``--target``): what runs a model, in which precision, on which GPU.

Backends:

* ``ort-cpu``: onnxruntime's CPUExecutionProvider (fp32).
* ``ort-cuda``: onnxruntime's CUDAExecutionProvider (fp32, or ``ort-cuda-fp16``).
* ``torch-cuda``: the model run by torch on CUDA (fp32, or ``torch-cuda-fp16``).
* ``tensorrt``: a TensorRT engine on a named GPU: ``trt-v100``, ``trt-a100``, ``trt-t4``,
  ``trt-orin``, ``trt-h100`` (fp16 by default; ``-fp32`` and ``-int8`` variants).  Where
  that GPU is not here its latencies come from the analytic model
  (:mod:`halp_onnx.profiles.analytic`) and are labelled *estimated*.  ``trt-local`` is the
  GPU present (found with ``nvidia-smi``, else ``torch.cuda``), with no analytic fallback.

A TensorRT target runs through the Python API or, with ``--trtexec PATH`` (or no Python API but
a ``trtexec`` on ``$TRTEXEC`` / ``PATH``), the ``trtexec`` binary (:func:`trt_runtime`); the
GPU and TensorRT version must be a pair NVIDIA's support matrix allows
(:mod:`halp_onnx.profiles.trt.policy`).

:func:`target_status` says whether a target can be measured on this machine (never
raises), :func:`device_fingerprint` describes the machine a profile was taken on.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from halp_onnx.errors import HalpError
from halp_onnx.profiles.analytic import GPU_SPECS, LABEL, GpuSpec, get_gpu_spec

__all__ = [
    "BACKENDS",
    "TARGETS",
    "Target",
    "TrtRuntime",
    "device_fingerprint",
    "get_target",
    "known_targets",
    "local_gpu",
    "target_status",
    "trt_runtime",
    "trt_target_runtime",
]

STAGE = "targets"
BACKENDS: tuple[str, ...] = ("ort-cpu", "ort-cuda", "torch-cuda", "tensorrt")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Target:
    """A named latency target."""

    name: str
    backend: str  # "ort-cpu" | "ort-cuda" | "torch-cuda" | "tensorrt"
    precision: str = "fp32"  # "fp32" | "fp16" | "int8"
    batch: int = 1
    gpu: str | None = None  # key of analytic.GPU_SPECS for a named GPU

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise HalpError(f"target {self.name!r}: backend {self.backend!r} is not one of {', '.join(BACKENDS)}",
                            stage=STAGE)
        if self.precision not in PRECISIONS:
            raise HalpError(f"target {self.name!r}: precision {self.precision!r} is not one of "
                            f"{', '.join(PRECISIONS)}", stage=STAGE)
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch <= 0:
            raise HalpError(f"target {self.name!r}: batch must be a positive int, got {self.batch!r}", stage=STAGE)
        if self.gpu is not None and self.gpu not in GPU_SPECS:
            raise HalpError(f"target {self.name!r}: unknown GPU {self.gpu!r}; known: {', '.join(GPU_SPECS)}",
                            stage=STAGE)

    @property
    def gpu_spec(self) -> GpuSpec | None:
        """The analytic spec of the named GPU, or None for targets that run on whatever is here."""
        return get_gpu_spec(self.gpu) if self.gpu else None

    @property
    def fusion(self) -> str:
        """How the runtime groups ops into kernels (``profiles.blocks.model_blocks``): TensorRT's fusions
        for TensorRT targets, onnxruntime's for the rest."""
        return "tensorrt" if self.backend == "tensorrt" else "ort"

    @property
    def estimable(self) -> bool:
        """Whether the analytic model can stand in for a measurement of this target."""
        return self.gpu is not None

    def with_batch(self, batch: int) -> Target:
        return dataclasses.replace(self, batch=int(batch))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build_registry() -> tuple[dict[str, Target], dict[str, str]]:
    targets: dict[str, Target] = {}
    aliases: dict[str, str] = {}

    def add(t: Target, *alias: str) -> None:
        targets[t.name] = t
        for a in alias:
            aliases[a] = t.name

    add(Target("ort-cpu", "ort-cpu", "fp32"), "ort-cpu-fp32")
    add(Target("ort-cuda", "ort-cuda", "fp32"), "ort-cuda-fp32")
    add(Target("ort-cuda-fp16", "ort-cuda", "fp16"))
    add(Target("torch-cuda", "torch-cuda", "fp32"), "torch-cuda-fp32")
    add(Target("torch-cuda-fp16", "torch-cuda", "fp16"))
    for gpu in ("v100", "a100", "t4", "orin", "h100"):
        add(Target(f"trt-{gpu}", "tensorrt", "fp16", gpu=gpu), f"trt-{gpu}-fp16")
        add(Target(f"trt-{gpu}-fp32", "tensorrt", "fp32", gpu=gpu))
        add(Target(f"trt-{gpu}-int8", "tensorrt", "int8", gpu=gpu))
    add(Target("trt-local", "tensorrt", "fp16"), "trt-local-fp16")  # the GPU present, whichever it is
    add(Target("trt-local-fp32", "tensorrt", "fp32"))
    add(Target("trt-local-int8", "tensorrt", "int8"))
    return targets, aliases


TARGETS, _ALIASES = _build_registry()


def known_targets() -> list[str]:
    """The canonical target names, sorted."""
    return sorted(TARGETS)


def get_target(name: str | Target) -> Target:
    """The registered target called ``name`` (case-insensitive; ``trt-a100-fp16`` = ``trt-a100``)."""
    if isinstance(name, Target):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in TARGETS:
        return TARGETS[key]
    raise HalpError(f"--target {name!r}: unknown target; known: {', '.join(known_targets())}", stage=STAGE)


# ----------------------------------------------------------------------------------------
# Availability
# ----------------------------------------------------------------------------------------


def _dist_version(*names: str) -> str | None:
    for n in names:
        try:
            return metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # a broken metadata directory
            continue
    return None


ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")


def ort_distributions() -> list[str]:
    """The onnxruntime distributions installed (two of them overwrite each other's ``onnxruntime`` module)."""
    from importlib import metadata

    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def _ort_status(need_cuda: bool) -> tuple[bool, str]:
    dists = ort_distributions()
    if len(dists) > 1:
        return False, (f"{' and '.join(dists)} are both installed and share one module; keep one: "
                       "pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
                       f"{'onnxruntime-gpu' if need_cuda else 'onnxruntime'}")
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    except Exception as exc:
        return False, f"onnxruntime failed to import ({type(exc).__name__}: {exc})"
    version = getattr(ort, "__version__", "?")
    try:
        providers = list(ort.get_available_providers())
    except Exception as exc:
        return False, f"onnxruntime {version}: cannot list execution providers ({type(exc).__name__}: {exc})"
    wanted = "CUDAExecutionProvider" if need_cuda else "CPUExecutionProvider"
    if wanted in providers:
        return True, f"onnxruntime {version} ({wanted})"
    hint = " (install onnxruntime-gpu on a machine with an NVIDIA GPU)" if need_cuda else ""
    return False, f"onnxruntime {version} has no {wanted}{hint}; it offers {', '.join(providers) or 'none'}"


def _torch_status() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (pip install halp-onnx[torch])"
    except Exception as exc:
        return False, f"torch failed to import ({type(exc).__name__}: {exc})"
    version = getattr(torch, "__version__", "?")
    try:
        if torch.cuda.is_available():
            return True, f"torch {version} on {torch.cuda.get_device_name(0)}"
    except Exception as exc:
        return False, f"torch {version}: CUDA check failed ({type(exc).__name__}: {exc})"
    return False, f"torch {version} sees no CUDA device"


def _smi_query(exe: str, fields: str) -> list[list[str]] | None:
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [[p.strip() for p in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def _nvidia_smi() -> list[dict[str, str]] | None:
    """Visible GPUs: name, driver, memory and (drivers that know the field) compute capability."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    rows = _smi_query(exe, "name,driver_version,memory.total,compute_cap")
    with_cc = rows is not None
    rows = rows if rows is not None else _smi_query(exe, "name,driver_version,memory.total")
    gpus = []
    for parts in rows or []:
        if len(parts) >= 2 and parts[0]:
            gpu = {"name": parts[0], "driver": parts[1], "memory": parts[2] if len(parts) > 2 else ""}
            if with_cc and len(parts) > 3 and parts[3] and parts[3] != "[N/A]":
                gpu["compute_capability"] = parts[3]
            gpus.append(gpu)
    return gpus or None


def local_gpu() -> tuple[dict[str, str] | None, str]:
    """The GPU here (device 0): from nvidia-smi, else torch.cuda where torch is installed;
    ``(None, why not)`` when there is none."""
    gpus = _nvidia_smi()
    if gpus:
        return dict(gpus[0]), "nvidia-smi"
    why = "nvidia-smi is not on PATH or sees no GPU"
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None, f"{why}, and torch is not installed"
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": str(torch.cuda.get_device_name(0)), "compute_capability": f"{major}.{minor}"}, "torch"
    except Exception as exc:  # a broken CUDA install
        return None, f"{why}, and torch's CUDA check failed ({type(exc).__name__}: {exc})"
    return None, f"{why}, and torch sees no CUDA device"


@dataclass(frozen=True)
class TrtRuntime:
    """How TensorRT runs here: the Python API or a ``trtexec`` binary, its version and its GPU."""

    kind: str  # "python" | "trtexec"
    version: str | None
    gpu_name: str | None
    compute_capability: str | None
    trtexec: str | None = None
    driver: str | None = None

    def describe(self) -> str:
        how = f"trtexec {self.trtexec}" if self.kind == "trtexec" else "the Python API"
        cc = f", compute capability {self.compute_capability}" if self.compute_capability else ""
        return f"TensorRT {self.version or '(version unknown)'} through {how} on {self.gpu_name or 'a GPU'}{cc}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def trt_runtime() -> tuple[TrtRuntime | None, str]:
    """The TensorRT runtime of this machine, or ``(None, why not)``; never raises.

    ``--trtexec PATH`` (:mod:`halp_onnx.profiles.trt.options`) picks that binary; otherwise the
    Python API when it works, else a ``trtexec`` on ``$TRTEXEC`` / ``PATH``. A binary is asked
    once (a one-node model) which TensorRT it is and which GPU it runs on.
    """
    from halp_onnx.profiles.trt.options import active_settings, find_trtexec

    settings = active_settings()
    api_reason = ""
    if settings.trtexec is None:
        from halp_onnx.profiles.trt import TrtBackend

        try:
            ok, api_reason = TrtBackend().available()
        except Exception as exc:  # available() should not raise; be safe anyway
            ok, api_reason = False, f"TensorRT check failed ({type(exc).__name__}: {exc})"
        if ok:
            trt = sys.modules.get("tensorrt")
            version = str(getattr(trt, "__version__", "")) or None
            device = api_reason.split(" on ", 1)[1] if " on " in api_reason else None
            gpu, _ = local_gpu()
            if device is None or re.fullmatch(r"CUDA device \d+", device):
                device = gpu["name"] if gpu else device
            cc = gpu.get("compute_capability") if gpu else None
            return TrtRuntime("python", version, device, cc, None, gpu.get("driver") if gpu else None), api_reason
    binary = find_trtexec()
    if binary is None:
        return None, f"{api_reason}; no trtexec either (give --trtexec PATH)" if api_reason else "no trtexec found"
    from halp_onnx.profiles.trt.trtexec_driver import probe_trtexec

    try:
        probe = probe_trtexec(binary, timeout_s=settings.timeout_s)
    except HalpError as exc:
        return None, f"trtexec {binary} failed a one-node run: {exc.message}"
    except OSError as exc:
        return None, f"cannot run trtexec {binary}: {exc.strerror or exc}"
    gpus = _nvidia_smi() or []
    driver = next((g["driver"] for g in gpus if probe.gpu_name and g["name"] == probe.gpu_name), None)
    rt = TrtRuntime("trtexec", probe.trt_version, probe.gpu_name, probe.compute_capability, binary, driver)
    return rt, rt.describe()


def trt_target_runtime(target: Target, what: str = "a measurement") -> TrtRuntime:
    """The TensorRT runtime that serves ``target`` here; a one-line :class:`HalpError` saying why
    not (no runtime, no GPU for ``trt-local``, another GPU, a release that does not support it)."""
    from halp_onnx.profiles.trt.policy import check_target_device

    rt, reason = trt_runtime()
    if rt is None:
        raise HalpError(f"--target {target.name}: cannot make {what} here: {reason}", stage="tensorrt")
    device, cc = rt.gpu_name, rt.compute_capability
    if target.gpu is None:  # trt-local: the GPU present, seen by nvidia-smi or torch
        gpu, why = local_gpu()
        if gpu is None:
            raise HalpError(f"{target.name}: no NVIDIA GPU found here ({why}); name the GPU with a target such as "
                            "trt-h100 to get analytic estimates", stage="tensorrt")
        device = device or gpu["name"]
        cc = cc or gpu.get("compute_capability")
    check_target_device(target.name, target.gpu, device, cc, rt.version, what=what)
    return rt


def _trt_status(target: Target) -> tuple[bool, str]:
    spec = target.gpu_spec
    fallback = f"{target.name} latencies are {LABEL} with the analytic {spec.name} model" if spec else ""
    rt, reason = trt_runtime()
    if rt is None:
        return False, f"{reason}; {fallback}" if fallback else reason
    try:
        trt_target_runtime(target)
    except HalpError as exc:
        return False, f"{exc.message}; {fallback}" if fallback else exc.message
    return True, rt.describe()


def target_status(target: str | Target) -> tuple[bool, str]:
    """``(available_here, reason)``: whether ``target`` can be measured on this machine.

    Never raises for a registered target; an unknown name raises ``HalpError``.
    """
    t = get_target(target)
    if t.backend == "ort-cpu":
        return _ort_status(need_cuda=False)
    if t.backend == "ort-cuda":
        return _ort_status(need_cuda=True)
    if t.backend == "torch-cuda":
        return _torch_status()
    return _trt_status(t)


# ----------------------------------------------------------------------------------------
# Fingerprint
# ----------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        text = ""
    def field(key: str) -> str:
        m = re.search(rf"^{re.escape(key)}\s*:\s*(.+)$", text, re.MULTILINE)
        return m.group(1).strip() if m else ""

    name = next((v for v in map(field, ("model name", "Model", "Hardware", "cpu model", "Processor")) if v), "")
    # a virtual machine may name only the vendor's line ("AMD EPYC"): the family, model and stepping
    # tell its generations (and their kernels' speeds) apart
    ident = " ".join(f"{k} {v}" for k, v in (("family", field("cpu family")), ("model", field("model")),
                                              ("stepping", field("stepping"))) if v)
    if name:
        return f"{name} ({ident})" if ident else name
    return platform.processor() or platform.machine() or "unknown"


def _torch_gpu() -> dict[str, str] | None:
    """Device name and CUDA version through torch, only if torch is already imported."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available():
            return {"name": str(torch.cuda.get_device_name(0)), "cuda": str(torch.version.cuda)}
    except Exception:
        return None
    return None


def device_fingerprint(target: str | Target) -> dict[str, Any]:
    """What a profile for ``target`` was (or would be) measured on; JSON-serialisable.

    GPU details come from ``nvidia-smi`` (and torch, when it is already imported); an
    analytic target also records its GPU spec and ``"estimated": True`` when it is not
    measurable here.
    """
    t = get_target(target)
    available, reason = target_status(t)
    fp: dict[str, Any] = {
        "target": t.name,
        "backend": t.backend,
        "precision": t.precision,
        "batch": t.batch,
        "available_here": available,
        "status": reason,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "halp_onnx": _dist_version("halp-onnx"),
            "onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu"),
            "torch": _dist_version("torch"),
            "tensorrt": _dist_version("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_libs"),
        },
        "gpu": None,
    }
    if t.backend == "tensorrt" and available:
        rt, _ = trt_runtime()
        if rt is not None:  # what measures: its TensorRT version and GPU, not only the Python package's
            fp["trt"] = rt.to_dict()
            fp["versions"]["tensorrt"] = rt.version
    if t.backend != "ort-cpu":
        gpus = _nvidia_smi()
        tg = _torch_gpu()
        if gpus or tg:
            gpu: dict[str, Any] = dict(gpus[0]) if gpus else {}
            if tg:
                gpu.setdefault("name", tg["name"])
                gpu["cuda"] = tg["cuda"]
            if gpus and len(gpus) > 1:
                gpu["count"] = len(gpus)
            fp["gpu"] = gpu
        trt_info = fp.get("trt")
        if trt_info and trt_info.get("gpu_name"):  # the device the TensorRT runtime reports
            gpu = dict(fp["gpu"] or {})
            if gpu.get("name") != trt_info["gpu_name"]:
                gpu = {"name": trt_info["gpu_name"], "driver": trt_info.get("driver")}
            gpu["compute_capability"] = trt_info.get("compute_capability") or gpu.get("compute_capability")
            fp["gpu"] = gpu
    if t.gpu_spec is not None:
        fp["gpu_spec"] = t.gpu_spec.to_dict()
        fp["estimated"] = not available
    return fp
