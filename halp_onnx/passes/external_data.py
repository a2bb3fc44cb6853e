"""Reading a model file and its external data, by halp-onnx itself (not by onnx's loader).

The model file must be a regular file (not a folder, FIFO, device or symlink loop) under the protobuf
limit; it is read with bounded reads, so a path to ``/dev/zero`` or a pipe cannot hang or fill memory.

External data: every tensor's ``location`` must be a relative path that, after resolving symlinks,
stays inside the model's folder, names an existing regular file, and holds ``offset + length`` bytes,
with ``length`` the bytes the tensor's dims and type need; the total must fit the memory budget.
Each file is opened once without following a final symlink, checked with ``fstat`` and read with
``pread``. The bytes go into ``raw_data``: the loaded model holds every weight in memory.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import onnx

from ..errors import HalpError
from .validate import STAGE, MEMORY_ENV, _gib, check_tensor_header, dtype_name, expected_nbytes, iter_tensors

MAX_MODEL_FILE = 2 << 30  # a protobuf message cannot be larger
_CHUNK = 64 << 20


def _open_flags() -> int:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    return flags


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOENT:
        return "no such file"
    if err.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop?)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if err.errno == errno.ENOTDIR:
        return "a part of the path is not a folder"
    if err.errno == errno.EISDIR:
        return "is a directory, expected an .onnx file"
    return err.strerror or type(err).__name__


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def _read_exactly(fd: int, offset: int, length: int, what: str) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, min(_CHUNK, length - got), offset + got)
        if not chunk:
            raise HalpError(f"{what}: the file ended after {got:,} of {length:,} bytes (changed while reading?)",
                            stage=STAGE)
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_model_file(path: Path) -> onnx.ModelProto:
    """Parse the model at ``path`` (protobuf, or onnx's text formats by extension), bounded reads only."""
    try:
        fd = os.open(path, _open_flags())
    except OSError as err:
        raise HalpError(f"{path}: {_reason(err)}", stage=STAGE) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise HalpError(f"{path}: is a directory, expected an .onnx file", stage=STAGE)
        if not stat.S_ISREG(st.st_mode):
            raise HalpError(f"{path}: not a regular file ({_kind(st.st_mode)}), expected an .onnx file", stage=STAGE)
        if st.st_size > MAX_MODEL_FILE:
            raise HalpError(f"{path}: {st.st_size:,} bytes, more than a protobuf can hold (2 GiB); a model this "
                            "large keeps its weights in external data", stage=STAGE)
        try:
            data = _read_exactly(fd, 0, st.st_size, str(path))
        except OSError as err:
            raise HalpError(f"{path}: cannot be read ({_reason(err)})", stage=STAGE) from None
    finally:
        os.close(fd)
    return _parse(data, path)


def _parse(data: bytes, path: Path) -> onnx.ModelProto:
    fmt = None
    registry = getattr(getattr(onnx, "serialization", None), "registry", None)
    if registry is not None and path.suffix and path.suffix.lower() != ".onnx":
        try:
            fmt = registry.get_format_from_file_extension(path.suffix)
        except Exception:  # pragma: no cover - an onnx without that lookup
            fmt = None
    try:
        if fmt is not None and fmt != "protobuf":
            model = onnx.load_model_from_string(data, format=fmt)
        else:
            model = onnx.ModelProto()
            model.ParseFromString(data)
    except Exception as err:  # DecodeError, text_format.ParseError, UnicodeDecodeError: the bytes are not a model
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else "protobuf decode failed"
        raise HalpError(f"{path}: not a readable ONNX model ({first})", stage=STAGE) from None
    return model


def _location_problem(location: str) -> str:
    if not location:
        return "has external data with an empty location"
    if "\x00" in location:
        return "has an external-data location with a NUL character"
    if "\\" in location:
        return f"has external-data location '{location}' with backslashes (a Windows path?); use '/'"
    if os.path.isabs(location) or location.startswith("/") or (len(location) > 1 and location[1] == ":"):
        return f"has an absolute external-data location '{location}'; it must be relative to the model's folder"
    return ""


def _nonneg_int(text: str | None, key: str, what: str, name: str) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise HalpError(f"{name}: {what} has external-data {key} '{text}', not a whole number", stage=STAGE) from None
    if value < 0:
        raise HalpError(f"{name}: {what} has a negative external-data {key} ({value})", stage=STAGE)
    return value


class _Files:
    """The external files of one model, each opened once (no final symlink followed) and checked."""

    def __init__(self, folder: Path, name: str):
        self.root = os.path.realpath(folder)
        self.name = name
        self.open: dict[str, tuple[int, int]] = {}  # real path -> (fd, size)

    def get(self, location: str, what: str) -> tuple[int, int]:
        name = self.name
        problem = _location_problem(location)
        if problem:
            raise HalpError(f"{name}: {what} {problem}", stage=STAGE)
        real = os.path.realpath(os.path.join(self.root, location))
        if os.path.commonpath([self.root, real]) != self.root:
            raise HalpError(f"{name}: {what} has external-data location '{location}', which points outside the "
                            "model's folder (through '..' or a symlink); external data must lie beside the model",
                            stage=STAGE)
        if real in self.open:
            return self.open[real]
        try:
            fd = os.open(real, _open_flags() | getattr(os, "O_NOFOLLOW", 0))
        except OSError as err:
            raise HalpError(f"{name}: {what}: external data file '{location}': {_reason(err)}", stage=STAGE) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise HalpError(f"{name}: {what}: external data file '{location}' is not a regular file "
                            f"({'a directory' if stat.S_ISDIR(st.st_mode) else _kind(st.st_mode)})", stage=STAGE)
        self.open[real] = (fd, st.st_size)
        return fd, st.st_size

    def close(self) -> None:
        for fd, _ in self.open.values():
            os.close(fd)
        self.open.clear()


def resolve_external_data(model: onnx.ModelProto, folder: Path | None, name: str, budget: int) -> None:
    """Read every external tensor's bytes into ``raw_data`` after checking its location (see the module
    docstring); ``folder`` is the model's folder (None: a model given as an object, refused)."""
    external = [(t, what) for t, what in iter_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return
    if folder is None:
        t, what = external[0]
        raise HalpError(f"{name}: {what} keeps its data in an external file; give the model's path so the file "
                        "can be found beside it", stage=STAGE)
    files = _Files(folder, name)
    total = 0
    try:
        for t, what in external:
            check_tensor_header(t, what, name)
            info = {e.key: e.value for e in t.external_data}
            if "location" not in info:
                raise HalpError(f"{name}: {what} has external data without a location", stage=STAGE)
            location = info["location"]
            fd, size = files.get(location, what)
            offset = _nonneg_int(info.get("offset"), "offset", what, name) or 0
            length = _nonneg_int(info.get("length"), "length", what, name)
            need = expected_nbytes(t)
            if need is None:
                raise HalpError(f"{name}: {what} is a string tensor in external data, which ONNX does not allow",
                                stage=STAGE)
            if offset > size:
                raise HalpError(f"{name}: {what}: external-data offset {offset:,} is past the end of "
                                f"'{location}' ({size:,} bytes)", stage=STAGE)
            if length is None:
                length = size - offset
            if offset + length > size:
                raise HalpError(f"{name}: {what}: external data at offset {offset:,} with length {length:,} runs "
                                f"past the end of '{location}' ({size:,} bytes)", stage=STAGE)
            if length != need:
                shape = "x".join(str(d) for d in t.dims) or "scalar"
                raise HalpError(f"{name}: {what} has {length:,} bytes of external data in '{location}', but its "
                                f"shape {shape} of {dtype_name(t.data_type)} needs {need:,}", stage=STAGE)
            total += length
            if total > budget:
                raise HalpError(f"{name}: not enough memory for the model's external data: {what} brings it to "
                                f"{_gib(total)} (memory budget {_gib(budget)}; set {MEMORY_ENV} in bytes to change "
                                "it)", stage=STAGE)
            try:
                data = _read_exactly(fd, offset, length, f"{name}: {what}: '{location}'")
            except OSError as err:
                raise HalpError(f"{name}: {what}: external data file '{location}' cannot be read "
                                f"({_reason(err)})", stage=STAGE) from None
            t.raw_data = data
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    finally:
        files.close()


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """The external-data files a model on disk reads, resolved (symlinks followed), for locations that
    pass the checks above (the load pass refuses the others, with the reason). Never raises: for
    callers that only need to know which files an output must not overwrite."""
    p = Path(path)
    try:
        model = read_model_file(p)
    except (HalpError, OSError, ValueError):
        return []
    root = os.path.realpath(p.parent)
    found: list[Path] = []
    for t, _ in iter_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        if _location_problem(location):
            continue
        real = os.path.realpath(os.path.join(root, location))
        if os.path.commonpath([root, real]) == root and Path(real) not in found:
            found.append(Path(real))
    return found
