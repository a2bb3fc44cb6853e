"""Which TensorRT releases support which GPU: the version and device policy of the ``trt-*`` targets.

Every named GPU target knows its CUDA compute capability, and every compute capability the TensorRT
releases that support it (:data:`ARCHITECTURES`), from NVIDIA's support matrices and release notes:

* Volta, sm_70 (``trt-v100``): deprecated from TensorRT 10.0, **removed in 10.5** -- "NVIDIA Volta
  support (GPUs with compute capability 7.0) has been removed starting with TensorRT 10.5"
  (TensorRT 10.5.0 Release Notes, Announcements,
  https://docs.nvidia.com/deeplearning/tensorrt/latest/getting-started/release-notes-10/10.5.0.html;
  the 10.3.0 and 10.4.0 notes announce it). So sm_70 runs TensorRT up to 10.4.x.
* Kepler, sm_3x: "TensorRT 8.5 will be the last release supporting NVIDIA Kepler (SM 3.x) devices.
  Support for Maxwell (SM 5.x) devices will be dropped in TensorRT 9.0" (TensorRT 8.5.2 Release
  Notes, Announcements, https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-852/release-notes/).
* Pascal, sm_6x: TensorRT 10.x "has been compiled to support all NVIDIA hardware with capability
  SM 7.0 or higher" (TensorRT 10.1.0 Support Matrix, Hardware and Precision,
  https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-1010/support-matrix/), so Pascal
  ends with the 9.x line. (The GTX 1070 fixtures of ../shared ran 8.0.3, 8.2.3 and 8.4.1.)
* Hopper, sm_90 (``trt-h100``) and Ada, sm_89: first supported by TensorRT 8.5 (the 8.5.x support
  matrix, https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-853/support-matrix/,
  lists compute capability 9.0 / NVIDIA H100; 8.4 does not). The fixtures show 10.16.1 on an
  H100 PCIe and 10.14.1 on an RTX 6000 Ada.
* Orin, sm_87 (``trt-orin``): JetPack 5.0 brought Jetson AGX Orin with TensorRT 8.4; the TensorRT
  11.x release notes apply to "x86 Linux and Windows users, and ... SBSA" only (TensorRT 11.0.0
  Release Notes, https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/getting-started/release-notes-11/11.0.0.html),
  so Orin is held to the 8.4 .. 10.x lines.
* Ampere: sm_80 (``trt-a100``) from TensorRT 7.1, sm_86 from 7.2 (the 7.2 fixture ran on an RTX
  3070 Laptop GPU, compute capability 8.6). Turing, sm_75 (``trt-t4``): every release this
  project knows (7.0 and newer); no end announced.

Releases older than :data:`OLDEST_KNOWN` are outside what the parsers and this table cover. A
compute capability the table does not list (a GPU newer than it) gets no claim either way.
Asking for an engine or a measurement on a pair the table rules out is a one-line
:class:`~halp_onnx.errors.HalpError` naming the GPU and the TensorRT version
(:func:`check_supported`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from halp_onnx.errors import HalpError

STAGE = "tensorrt"
Version = tuple[int, ...]
OLDEST_KNOWN: Version = (7, 0)


@dataclass(frozen=True)
class Architecture:
    """The TensorRT releases that support one compute capability.

    ``first`` is the first release line (``(8, 5)``: 8.5.0 on); ``last`` the last one, as a prefix
    (``(10, 4)``: every 10.4.x; ``(10,)``: every 10.x), or ``None`` when no end is announced.
    """

    name: str
    compute_capability: tuple[int, int]
    first: Version
    last: Version | None
    source: str

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def supports(self, version: Version) -> bool:
        if version[: len(self.first)] < self.first:
            return False
        return self.last is None or version[: len(self.last)] <= self.last

    def range_text(self) -> str:
        end = "no announced end" if self.last is None else f"up to {_fmt(self.last)}.x"
        return f"TensorRT {_fmt(self.first)} on, {end}"


def _arch(name: str, cc: tuple[int, int], first: Version, last: Version | None, source: str) -> Architecture:
    return Architecture(name, cc, max(first, OLDEST_KNOWN), last, source)


_V105 = "TensorRT 10.5.0 release notes: Volta support removed starting with TensorRT 10.5"
_V852 = "TensorRT 8.5.2 release notes: 8.5 last for Kepler, Maxwell dropped in 9.0"
_V101 = "TensorRT 10.1.0 support matrix: 10.x is compiled for SM 7.0 or higher"
_V85 = "TensorRT 8.5.x support matrix: compute capability 9.0 / 8.9 first listed"
_ORIN = "JetPack 5.0 (TensorRT 8.4) first for Orin; TensorRT 11.x release notes do not cover JetPack"

ARCHITECTURES: dict[tuple[int, int], Architecture] = {a.compute_capability: a for a in (
    _arch("Kepler", (3, 5), (0,), (8, 5), _V852),
    _arch("Kepler", (3, 7), (0,), (8, 5), _V852),
    _arch("Maxwell", (5, 0), (0,), (8,), _V852),
    _arch("Maxwell", (5, 2), (0,), (8,), _V852),
    _arch("Maxwell", (5, 3), (0,), (8,), _V852),
    _arch("Pascal", (6, 0), (0,), (9,), _V101),
    _arch("Pascal", (6, 1), (0,), (9,), _V101),
    _arch("Pascal", (6, 2), (0,), (9,), _V101),
    _arch("Volta", (7, 0), (0,), (10, 4), _V105),
    _arch("Turing", (7, 5), (0,), None, "every release since 7.0; no end announced"),
    _arch("Ampere", (8, 0), (7, 1), None, "TensorRT 7.1: first with A100 (sm_80) support"),
    _arch("Ampere", (8, 6), (7, 2), None, "TensorRT 7.2 on sm_86 (fixture: RTX 3070 Laptop GPU)"),
    _arch("Orin", (8, 7), (8, 4), (10,), _ORIN),
    _arch("Ada", (8, 9), (8, 5), None, _V85),
    _arch("Hopper", (9, 0), (8, 5), None, _V85),
)}

# the named GPU targets (keys of analytic.GPU_SPECS) and their compute capability
GPU_COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {
    "v100": (7, 0), "t4": (7, 5), "a100": (8, 0), "orin": (8, 7), "h100": (9, 0),
}


def _fmt(version: Version) -> str:
    return ".".join(str(v) for v in version)


def parse_version(text: str | None) -> Version | None:
    """``"10.16.1"`` / ``"8.6.1.6"`` / ``"8003"`` (8.0.3's integer form) -> a tuple; ``None`` if none."""
    if text is None:
        return None
    text = str(text).strip()
    if re.fullmatch(r"\d{4,}", text):  # 8.x integer: major*1000 + minor*100 + patch
        n = int(text)
        return (n // 1000, n % 1000 // 100, n % 100)
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts[:4]) if parts else None


def parse_compute_capability(value: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"9.0"`` / ``"sm_90"`` / ``(9, 0)`` -> ``(9, 0)``; ``None`` for anything else."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return (int(value[0]), int(value[1]))
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(value)) or re.fullmatch(r"\s*sm_?(\d+)(\d)\s*", str(value))
    return (int(m.group(1)), int(m.group(2))) if m else None


def architecture(cc: str | tuple[int, int] | None) -> Architecture | None:
    """The table's entry for a compute capability, or ``None`` when it has none."""
    key = parse_compute_capability(cc)
    return ARCHITECTURES.get(key) if key else None


def target_compute_capability(gpu: str | None) -> tuple[int, int] | None:
    """The compute capability of a named GPU target (``"h100"`` -> ``(9, 0)``)."""
    return GPU_COMPUTE_CAPABILITY.get(gpu) if gpu else None


def is_supported(cc: str | tuple[int, int] | None, version: str | Version | None) -> bool | None:
    """``True``/``False`` when the table knows the pair; ``None`` when it cannot tell."""
    v = parse_version(version) if isinstance(version, str) or version is None else version
    arch = architecture(cc)
    if v is None:
        return None
    if v[:2] < OLDEST_KNOWN:
        return False
    if arch is None:
        return None
    return arch.supports(v)


def check_supported(gpu: str, cc: str | tuple[int, int] | None, version: str | None, *,
                    what: str = "a measurement") -> None:
    """Refuse ``what`` (a measurement, an engine) for a (GPU, TensorRT version) pair the matrix rules out.

    ``gpu`` names the device (``"NVIDIA V100"``); an unknown version is refused too, because a
    profile must record which TensorRT measured it.
    """
    v = parse_version(version)
    key = parse_compute_capability(cc)
    where = f"{gpu} (compute capability {key[0]}.{key[1]})" if key else gpu
    if v is None:
        raise HalpError(f"cannot make {what} on {where}: the TensorRT version is unknown (TensorRT 7.x "
                        "trtexec prints none); use TensorRT 8.0 or newer", stage=STAGE)
    if v[:2] < OLDEST_KNOWN:
        raise HalpError(f"cannot make {what} with TensorRT {_fmt(v)} on {where}: halp-onnx knows TensorRT "
                        f"{_fmt(OLDEST_KNOWN)} and newer", stage=STAGE)
    arch = architecture(key)
    if arch is not None and not arch.supports(v):
        raise HalpError(f"cannot make {what} with TensorRT {_fmt(v)} on {where}: {arch.name} ({arch.sm}) is "
                        f"supported by {arch.range_text()} ({arch.source})", stage=STAGE)


def check_target_device(target: str, gpu: str | None, device_name: str | None,
                        device_cc: str | tuple[int, int] | None, version: str | None, *,
                        what: str = "a measurement") -> None:
    """The device a runtime reports must be the target's GPU, and the pair supported.

    ``gpu`` is the target's GPU key (``None`` for ``trt-local``: any device, checked by its own
    compute capability).
    """
    from ..analytic import GPU_SPECS

    spec = GPU_SPECS.get(gpu) if gpu else None
    name = device_name or "an unidentified GPU"
    if spec is not None and not (device_name and spec.matches(device_name)):
        raise HalpError(f"--target {target}: TensorRT runs on {name} here, not an {spec.name}; "
                        f"cannot make {what} for it", stage=STAGE)
    want = target_compute_capability(gpu)
    have = parse_compute_capability(device_cc)
    if want and have and want != have:
        raise HalpError(f"--target {target}: {name} reports compute capability {have[0]}.{have[1]}, "
                        f"not {want[0]}.{want[1]}", stage=STAGE)
    check_supported(name, have or want, version, what=what)
