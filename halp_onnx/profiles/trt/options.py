"""Command-line options of the TensorRT targets: ``--trtexec PATH`` and ``--trtexec-timeout S``.

The CLI adds them with :func:`add_trt_options` and activates what was given with
:func:`trt_settings` for the duration of a command (a context manager; activating without
``with`` lasts until :func:`reset_settings`). The TensorRT target code (``targets``,
``backends``, the ``trtexec`` driver) reads :func:`active_settings`, so no pipeline
configuration needs to carry them.
"""
from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass
from types import TracebackType

from halp_onnx.errors import HalpError

STAGE = "cli"
DEFAULT_TIMEOUT_S = 900.0
SYSTEM_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # where NVIDIA's containers and packages put it

_stack: list[TrtSettings] = []


@dataclass(frozen=True)
class TrtSettings:
    """What the TensorRT targets use: an explicit ``trtexec`` (``None``: the Python API, else
    ``$TRTEXEC`` / ``PATH``) and the wall-clock limit of one trtexec run."""

    trtexec: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __enter__(self) -> TrtSettings:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self in _stack:
            while _stack and _stack[-1] is not self:
                _stack.pop()
            _stack.pop()


def add_trt_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--trtexec`` and ``--trtexec-timeout`` to a subcommand's parser."""
    group = parser.add_argument_group("TensorRT (trt-* targets)")
    group.add_argument("--trtexec", metavar="PATH",
                       help="time trt-* targets with this trtexec binary instead of the TensorRT Python API, e.g. "
                            "--trtexec /usr/src/tensorrt/bin/trtexec (default: the Python API, else trtexec on "
                            "$TRTEXEC or PATH)")
    group.add_argument("--trtexec-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                       help=f"seconds one trtexec run may take (default {DEFAULT_TIMEOUT_S:g})")


def _check_executable(path: str, option: str) -> str:
    found = shutil.which(path) if os.sep not in path else path
    if not found or not os.path.isfile(found):
        raise HalpError(f"{option} {path}: no such executable", stage=STAGE)
    if not os.access(found, os.X_OK):
        raise HalpError(f"{option} {path}: not executable (chmod +x {found})", stage=STAGE)
    return os.path.abspath(found)


def trt_settings(args: argparse.Namespace | None = None, *, trtexec: str | os.PathLike[str] | None = None,
                 timeout_s: float | None = None) -> TrtSettings:
    """Activate the TensorRT settings of parsed ``args`` (or the keywords) and return them.

    Use as ``with trt_settings(args): ...`` to restore the previous settings afterwards. A bad
    ``--trtexec`` is a one-line error now, before any work.
    """
    path = trtexec if trtexec is not None else getattr(args, "trtexec", None)
    limit = timeout_s if timeout_s is not None else getattr(args, "trtexec_timeout", None)
    limit = DEFAULT_TIMEOUT_S if limit is None else float(limit)
    if limit <= 0:
        raise HalpError(f"--trtexec-timeout {limit:g}: expected a positive number of seconds", stage=STAGE)
    resolved = _check_executable(os.fspath(path), "--trtexec") if path is not None else None
    settings = TrtSettings(resolved, limit)
    _stack.append(settings)
    return settings


def active_settings() -> TrtSettings:
    """The settings of the command running now (defaults when none was activated)."""
    return _stack[-1] if _stack else TrtSettings()


def reset_settings() -> None:
    """Forget every activated setting (tests; a long-lived process between commands)."""
    _stack.clear()


def find_trtexec(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The trtexec to run: ``explicit``, the active ``--trtexec``, ``$TRTEXEC``, ``PATH``, then the
    system install; ``None`` when there is none."""
    candidates = [os.fspath(explicit) if explicit is not None else None, active_settings().trtexec,
                  os.environ.get("TRTEXEC"), shutil.which("trtexec"), SYSTEM_TRTEXEC]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    return None
