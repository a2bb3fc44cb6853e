"""What every command does with its output paths: refuse bad ones up front, write atomically."""
from __future__ import annotations

from pathlib import Path

from .errors import HalpError

STAGE = "cli"


def check_output(model: str, out: str | None, option: str, *, folder_must_exist: bool = False) -> None:
    """One-line error when ``out`` is the input model, a directory, or (optionally) in a missing folder."""
    if out is None:
        return
    if Path(out).resolve() == Path(model).resolve():
        raise HalpError(f"{option} {out}: the output path is the input model; choose another file", stage=STAGE)
    if Path(out).is_dir():
        raise HalpError(f"{option} {out}: is a directory", stage=STAGE)
    if folder_must_exist and not Path(out).resolve().parent.is_dir():
        raise HalpError(f"{option} {out}: folder {Path(out).parent} does not exist", stage=STAGE)


def write_text_atomic(path: str, text: str) -> None:
    """A hidden temporary file beside ``path``, then a rename: readers never see half a file."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(text)
    tmp.replace(p)
