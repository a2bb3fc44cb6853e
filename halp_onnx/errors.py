"""Errors a user can read: each names the pass (stage) that failed and why, on one line.

Everything a model or a path controls (node, tensor and file names) reaches the terminal through
:func:`sanitize`: control characters (ANSI escapes, newlines, tabs, other C0/C1 codes, bidi
overrides, lone surrogates of undecodable file names) are shown escaped, so an error is one line that
cannot repaint the terminal or forge a second message.
"""
from __future__ import annotations

import errno
import re
import sys
import warnings
from typing import Any, Callable, TextIO

MAX_MESSAGE = 2000  # characters of one error line; longer ones (20k-character node names) are shortened

# C0, DEL and C1 controls; zero-width and bidi formatting (LRM/RLM, LRE..RLO, LRI..PDI); line and
# paragraph separators; BOM; surrogates (undecodable bytes of a file name under surrogateescape)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def _escape(match: re.Match) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def sanitize(text: object, limit: int | None = None) -> str:
    """``text`` as one printable line: control and bidi characters escaped (``\\n``, ``\\x1b``,
    ``\\u202e``), optionally cut to ``limit`` characters. Idempotent on its own output."""
    out = _UNSAFE.sub(_escape, str(text))
    if limit is not None and len(out) > limit:
        out = out[: max(limit - 40, 0)] + f"... ({len(out) - limit + 40} more characters)"
    return out


class HalpError(Exception):
    """A user-facing error. ``str(err)`` is one line naming the stage and the file/node/option; the
    message is sanitised at construction (names from the model or the file system are escaped)."""

    def __init__(self, message: str, *, stage: str | None = None):
        self.stage = sanitize(stage) if stage is not None else None
        self.message = sanitize(message, MAX_MESSAGE)
        super().__init__(f"{self.stage}: {self.message}" if self.stage else self.message)


# ------------------------------------------------------------------------------ environment errors
# OSErrors about the user's paths or machine (not bugs): the CLI prints them as one line, exit 2
ENVIRONMENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EACCES", "EPERM", "EISDIR", "ENOTDIR", "EROFS", "ENOSPC", "EDQUOT", "ENAMETOOLONG", "ELOOP", "ENOENT",
    "EEXIST", "EFBIG", "EMFILE", "ENFILE", "EXDEV", "EBUSY", "ETXTBSY", "ENXIO", "ENODEV", "EIO", "ENOTEMPTY",
    "ESTALE") if hasattr(errno, name))


def environment_error(err: BaseException) -> str | None:
    """One sanitised line for an OSError caused by the user's paths or machine (permission denied,
    read-only file system, no space left, name too long, symlink loop, ...), naming the path; None for
    any other exception. Python < 3.13 reports a symlink loop in ``Path.resolve`` as RuntimeError."""
    if isinstance(err, RuntimeError) and str(err).startswith("Symlink loop from "):
        path = str(err)[len("Symlink loop from "):].strip("'\"")
        return sanitize(f"{path}: too many levels of symbolic links (a symlink loop?)", MAX_MESSAGE)
    if not isinstance(err, OSError) or isinstance(err, BrokenPipeError) or err.errno not in ENVIRONMENT_ERRNOS:
        return None
    what = err.strerror or type(err).__name__
    if err.errno == errno.ELOOP:
        what = "too many levels of symbolic links (a symlink loop?)"
    paths = [p for p in (err.filename, getattr(err, "filename2", None)) if p is not None]
    if paths:
        shown = " -> ".join(_path_text(p) for p in paths)
        return sanitize(f"{shown}: {what}", MAX_MESSAGE)
    return sanitize(what, MAX_MESSAGE)


def _path_text(path: Any) -> str:
    if isinstance(path, bytes):
        return path.decode("utf-8", "backslashreplace")
    return str(path)


# ------------------------------------------------------------------------------ warnings
def format_warning(message: Any, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    """A Python warning as one line, ``halp-onnx: warning: <message>``, without its source line."""
    return f"halp-onnx: warning: {sanitize(message, MAX_MESSAGE)}\n"


def show_warning(message: Any, category: type, filename: str, lineno: int, file: TextIO | None = None,
                 line: str | None = None) -> None:
    stream = file if file is not None else sys.stderr
    if stream is None:  # pythonw: no stderr
        return
    try:
        stream.write(format_warning(message, category, filename, lineno, line))
    except (OSError, ValueError):  # a closed or broken stderr: warnings are not worth a crash
        pass


def one_line_warnings() -> Callable[[], None]:
    """Render Python warnings as one line each from now on; returns a function restoring the previous
    hooks (the CLI installs them for the duration of one command)."""
    saved = (warnings.showwarning, warnings.formatwarning)
    warnings.showwarning = show_warning
    warnings.formatwarning = format_warning

    def restore() -> None:
        warnings.showwarning, warnings.formatwarning = saved

    return restore
