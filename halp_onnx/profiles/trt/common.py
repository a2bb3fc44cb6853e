"""Shared pieces of the TensorRT backend: constants, type aliases, the stage's error, the
log-text and JSON helpers every parser uses, and input-shape resolution for both drivers."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

from halp_onnx.errors import HalpError

if TYPE_CHECKING:
    import onnx

STAGE = "tensorrt"
NOT_INSTALLED = "TensorRT is not installed (pip install halp-onnx[trt] on a machine with an NVIDIA GPU)"
FALLBACK_HINT = "use an analytic target estimate instead"

# The TensorRT releases the Python-API driver is written for: 8.6 up to the last 11.x.  Every
# TensorRT name the driver uses is checked against the real bindings of 8.6.1, 10.4.0 (the last
# release with Volta), 10.16.1.11 and 11.4.0.106 (tests/data/trt_surface, tools/trt_surface.py).
SUPPORTED: tuple[str, str] = ("8.6", "11.99")
# Majors inside that range the driver refuses: no 9.x bindings wheel is on PyPI (the 9.x releases
# were for LLM workloads only), so no surface checks them.
UNSUPPORTED_MAJORS: tuple[int, ...] = (9,)

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

TextLike: TypeAlias = str | bytes
JsonLike: TypeAlias = str | bytes | Path | Mapping[str, Any] | Sequence[Any]
# an in-memory onnx.ModelProto is serialised with SerializeToString() before TensorRT parses it
ModelLike: TypeAlias = "bytes | str | os.PathLike[str] | onnx.ModelProto"


def _error(message: str) -> HalpError:
    """A ``HalpError`` for this stage, with the message folded onto one line."""
    return HalpError(" ".join(str(message).split()), stage=STAGE)


def check_precision(precision: str) -> Precision:
    """``precision`` as a :data:`Precision`; the stage's error when it is not one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise _error(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return cast(Precision, precision)


def _version_tuple(text: str) -> tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def trt_version(trt: Any) -> tuple[int, int]:
    """``(major, minor)`` of an imported ``tensorrt`` module; the stage's one-line error when it
    is outside :data:`SUPPORTED` or one of :data:`UNSUPPORTED_MAJORS`."""
    text = str(getattr(trt, "__version__", "") or "unknown")
    version = _version_tuple(text) if re.match(r"\s*\d", text) else (0, 0)
    low, high = (_version_tuple(v) for v in SUPPORTED)
    if not low <= version <= high or version[0] in UNSUPPORTED_MAJORS:
        raise _error(f"TensorRT {text} is not supported: the Python-API driver needs TensorRT "
                     f"{SUPPORTED[0]} to {high[0]}.x (not {'/'.join(f'{m}.x' for m in UNSUPPORTED_MAJORS)})")
    return version


# --------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------

_NUM = r"(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan))"
_PREFIX_RE = re.compile(r"^\s*(?:\[[^\]\r\n]*\]\s*)*")
_LEVEL_RE = re.compile(r"\[([IWEVF])\]")


def _num(text: str) -> float:
    return float(text)


def _to_text(data: TextLike) -> str:
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    if not isinstance(data, str):
        raise _error(f"expected log text, got {type(data).__name__}")
    return data.lstrip("\ufeff")


@dataclass(frozen=True)
class _Line:
    level: str | None
    message: str


_NEWLINE_RE = re.compile(r"\r\n|\r|\n")


def _split_lines(text: str) -> list[str]:
    """Split on CR/LF only; ``str.splitlines`` also splits on the 0x1E record separator,
    which TensorRT 10.x puts between the entries of a layer's ``Metadata``."""
    return _NEWLINE_RE.split(text)


def _lines(text: str) -> Iterator[_Line]:
    """Split a log into (level, message) with every leading ``[...]`` group removed.

    Handles ``[ts] [I] msg``, ``[ts] [I] [TRT] msg``, polygraphy's ``[ts] [TRT] [I]``,
    7.x orphan timestamps ``[ts] [ts] [I] msg`` and wrapper prefixes ``[INFO] [ts] [I]``.
    """
    for raw in _split_lines(text):
        match = _PREFIX_RE.match(raw)
        prefix = raw[: match.end()] if match else ""
        levels = _LEVEL_RE.findall(prefix)
        message = raw[len(prefix):].strip()
        yield _Line(levels[-1] if levels else None, message)


def _load_json(data: JsonLike, what: str) -> Any:
    if isinstance(data, Path):
        path = data
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _error(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    if isinstance(data, (str, bytes)):
        text = _to_text(data)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise _error(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return data


# --------------------------------------------------------------------------------------
# Input shapes
# --------------------------------------------------------------------------------------


def _resolve_shape(
    name: str, shape: Sequence[int], batch: int | None, input_shapes: Mapping[str, Sequence[int]]
) -> tuple[int, ...]:
    """A concrete shape for one model input: explicit > batch for dim 0 > the model's own."""
    if name in input_shapes:
        return tuple(int(d) for d in input_shapes[name])
    dims = [int(d) for d in shape]
    if dims and batch is not None:
        if dims[0] >= 0 and dims[0] != batch:
            raise _error(f"input {name!r} has a static batch of {dims[0]}, not {batch}; "
                         "re-export the model with a dynamic batch or pass batch=None")
        dims[0] = batch
    elif dims and dims[0] < 0:
        dims[0] = 1
    if any(d < 0 for d in dims):
        raise _error(f"input {name!r} has dynamic dimensions {tuple(shape)}; "
                     f"pass input_shapes={{{name!r}: (...)}}")
    return tuple(dims)
