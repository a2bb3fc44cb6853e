"""What every command does with its outputs: :class:`OutputPlan`.

The contract a deployment pipeline relies on: exit 0 with every requested output complete, or exit 2
with one line on stderr and *nothing* written (no output created, replaced or left half-written).

1. **Up front** (:meth:`OutputPlan.check`, before any work): every output option (``-o``,
   ``--report``, ``--html``, ``--engine``, ``--checkpoint``, ``--profile``) is refused, with one line
   naming the option and the path, when two of them are the same file (after resolving symlinks and
   hard links), when one is an input (the model, its external-data files, ``--teacher``, ``--data`` ...),
   when its folder is missing, not a folder or not writable, or when the path exists and is not a
   regular file (a directory, device node, FIFO, socket; ``/dev/stdout``, ``/dev/null`` and
   ``/proc/self/fd/N`` included: ``-`` writes a report to stdout instead). Optional dependencies
   (``--html`` needs matplotlib) are imported here too. Stale temporary files of a killed run (see
   below) in every folder the run writes to are removed.
2. **Staging**: each file output is written to ``.<name>.halp-tmp-<pid>-<8 hex>`` in its destination
   folder (reserved empty during ``check``, so an unwritable folder fails before any work).
3. **Commit** (:meth:`OutputPlan.commit`), in this order: reports and HTML, the TensorRT engine, the
   model's external-data file, the ONNX model (last), then whatever goes to stdout. Each step is an
   atomic ``os.replace``; a destination that already existed is first hard-linked to a backup temp
   file. If a step fails, the steps already done are undone (the old file put back, or the new one
   removed), and the error is one line naming the path. SIGTERM and SIGINT wait until the commit ends.
4. **Cleanup**: the temporary files are removed on every exit path: an exception, KeyboardInterrupt,
   SIGTERM (turned into :class:`Terminated`, exit 143). A kill -9 cannot clean up; the next run that
   writes to the same folder removes every ``.*.halp-tmp-<pid>-*`` whose process is gone.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import signal
import stat
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from .errors import HalpError

STAGE = "cli"
TMP_MARK = ".halp-tmp-"
TMP_RE = re.compile(r"^\.(?P<name>.+)\.halp-tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")
STDOUT = "-"
# commit order by role: the model last, so a failing report never leaves a fresh model without it
COMMIT_ORDER = ("report", "html", "engine", "model_data", "model")


class Terminated(SystemExit):
    """SIGTERM during a run: unwinds like an exception (temporary files removed), exit status 143."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__


def temp_path(dest: Path) -> Path:
    """The temporary file a run stages ``dest`` in: same folder, hidden, named after the run's pid."""
    return dest.with_name(f".{dest.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of runs that died (kill -9) in ``folder``; returns what it removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(str(folder)))
    except OSError:
        return removed
    for entry in entries:
        m = TMP_RE.match(entry.name)
        if m is None or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _is_stream_path(path: str) -> bool:
    """``/dev/...`` (but ``/dev/shm``) and ``/proc/...``: devices and other processes' descriptors."""
    parts = Path(os.path.abspath(path)).parts
    return len(parts) > 1 and (parts[1] == "proc" or (parts[1] == "dev" and parts[2:3] != ("shm",)))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def model_data_files(model: str | os.PathLike) -> list[Path]:
    """The external-data files an ONNX model on disk reads (empty when it has none or cannot be read);
    resolved by the load pass's own confined resolver, never raising."""
    from .passes.external_data import external_data_files

    return external_data_files(model)


@dataclass
class Output:
    option: str
    path: str
    role: str
    stdout_ok: bool = False
    staged: bool = True  # False: checked only (a writer elsewhere writes it, e.g. --checkpoint, --profile)
    dest: Path | None = None  # resolved; None for stdout
    tmp: Path | None = None
    data_tmp: Path | None = None  # the model's external-data file, when it has one
    text: str | None = None
    ready: bool = False

    @property
    def stdout(self) -> bool:
        return self.path == STDOUT


@dataclass
class _Done:
    dest: Path
    backup: Path | None
    existed: bool


@dataclass
class OutputPlan:
    """The outputs of one command run; see the module docstring for the contract.

    ``with plan:`` checks everything up front, catches warnings (one line each, kept for the report),
    turns SIGTERM into :class:`Terminated` and removes the temporary files on every way out."""

    command: str
    inputs: Sequence[tuple[str, str | None]] = ()  # (option, path) of every file the run reads
    quiet: bool = False
    write: bool = True  # False: validate only (e.g. a non-zero rank under torchrun)
    outputs: list[Output] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)  # also cleaned of stale temp files (profile folder)
    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)  # stages timed by the command itself
    _needs: list[tuple[str, str, str, str]] = field(default_factory=list)
    _checked: bool = False
    _committed: bool = False
    _committing: bool = False
    _pending: list[int] = field(default_factory=list)
    _saved: dict[int, Any] = field(default_factory=dict)
    _warn_ctx: Any = None

    # ------------------------------------------------------------------ declaring
    def add(self, option: str, path: str | None, role: str, *, stdout_ok: bool = False,
            staged: bool = True) -> Output | None:
        if path is None:
            return None
        out = Output(option, str(path), role, stdout_ok=stdout_ok, staged=staged)
        self.outputs.append(out)
        return out

    def add_report(self, report: str | None, json_flag: bool = False) -> None:
        """``--report PATH`` (``-``: stdout) and ``--json`` (the report on stdout, human text on stderr)."""
        self.add("--report", report, "report", stdout_ok=True)
        if json_flag and report != STDOUT:
            self.add("--json", STDOUT, "report", stdout_ok=True)

    def require(self, option: str, path: str | None, module: str, hint: str) -> None:
        """An optional dependency the output ``option`` needs, imported in :meth:`check`."""
        if path is not None:
            self._needs.append((option, path, module, hint))

    @property
    def reports(self) -> bool:
        return any(o.role == "report" for o in self.outputs)

    @property
    def human(self) -> TextIO:
        """Where the human-readable text goes: stderr when stdout carries a report."""
        return sys.stderr if any(o.stdout for o in self.outputs) else sys.stdout

    def say(self, *parts: Any) -> None:
        """Human text, each line printable: names from the model (node, tensor, file) may hold control
        or bidi characters, escaped here as everywhere else."""
        from .errors import sanitize

        text = " ".join(str(p) for p in parts)
        print("\n".join(sanitize(line) for line in text.split("\n")), file=self.human)

    @property
    def progress_lines(self) -> bool:
        """A line per stage on stderr: when stderr is not a terminal (logs, CI) and not --quiet."""
        return not self.quiet and not sys.stderr.isatty()

    def on_stage(self, stage: str, seconds: float) -> None:
        """The pipeline runner's ``on_stage`` callback: records the time, prints the stage line."""
        self.seconds[stage] = seconds
        if self.progress_lines:
            print(f"[{self.command}] {stage} {seconds:.2f}s", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ checking
    def _fail(self, out: Output, what: str) -> HalpError:
        return HalpError(f"{out.option} {out.path}: {what}", stage=STAGE)

    def check(self) -> None:
        """Refuse bad outputs, import what they need, clean stale temp files, reserve the temp files."""
        if self._checked:
            return
        stdout = [o for o in self.outputs if o.stdout]
        for out in self.outputs:
            self._check_one(out)
        if len(stdout) > 1 and any(o.role != "report" for o in stdout):
            first, other = stdout[0], next(o for o in stdout[1:])
            raise self._fail(other, f"stdout already carries {first.option}{'' if first.option == '--json' else ' -'}")
        self._check_distinct()
        for option, path, module, hint in self._needs:
            try:
                __import__(module)
            except ImportError:
                raise HalpError(f"{option} {path}: needs {module}, which is not installed ({hint})",
                                stage=STAGE) from None
        if self.write:
            for folder in {o.dest.parent for o in self.outputs if o.dest is not None} | set(self.folders):
                remove_stale(folder)
            for out in self.outputs:
                if out.staged and out.dest is not None:
                    out.tmp = self._reserve(out, out.dest)
        self._checked = True

    def _check_one(self, out: Output) -> None:
        if out.stdout:
            if not out.stdout_ok:
                raise self._fail(out, "this output cannot go to stdout; give a file path")
            return
        if not out.path:
            raise self._fail(out, "empty path")
        hint = "use '-' to write it to stdout" if out.stdout_ok else "give a regular file"
        if _is_stream_path(out.path):
            raise self._fail(out, f"a device or stream, not a regular file; {hint}")
        dest = Path(os.path.realpath(out.path))
        try:
            st = os.stat(dest)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise self._fail(out, f"{_first_file(dest)} is a file, not a folder") from None
            raise self._fail(out, f"cannot be read ({reason(exc)})") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise self._fail(out, "is a directory")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise self._fail(out, f"exists and is not a regular file (a device, FIFO or socket); {hint}")
        folder = dest.parent
        if not folder.exists():
            raise self._fail(out, f"folder {Path(out.path).parent} does not exist")
        if not folder.is_dir():
            raise self._fail(out, f"{_first_file(dest)} is a file, not a folder")
        if out.staged and not os.access(folder, os.W_OK | os.X_OK):
            raise self._fail(out, f"folder {Path(out.path).parent} is not writable")
        out.dest = dest

    def _check_distinct(self) -> None:
        seen: dict[Any, Output] = {}
        for out in self.outputs:
            if out.dest is None:
                continue
            keys: list[tuple[Any, str]] = [(out.dest, ""), (_identity(out.dest), "")]
            if out.role == "model":
                data = out.dest.with_name(out.dest.name + ".data")
                keys += [(data, " (its external-data file)"), (_identity(data), " (its external-data file)")]
            for key, what in keys:
                if key is None:
                    continue
                other = seen.get(key)
                if other is not None and other is not out:
                    raise self._fail(out, f"the same file as {other.option} {other.path}{what}; "
                                          "give each output its own path")
                seen[key] = out
        if not seen:
            return
        for option, path in self.inputs:
            if path is None:
                continue
            files = [(Path(os.path.realpath(path)), "")]
            home = files[0][0].parent  # external data lies at or below the model's folder
            if (option == "model" or option.endswith("teacher")) and any(
                    o.dest is not None and home in o.dest.parents for o in self.outputs):
                files += [(Path(os.path.realpath(d)), " (its external-data file)") for d in model_data_files(path)]
            for f, what in files:
                for key in (f, _identity(f)):
                    hit = seen.get(key) if key is not None else None
                    if hit is None or (hit.role == "checkpoint" and option == "--resume"):
                        continue
                    if option == "model":
                        raise self._fail(hit, f"the output path is the input model{what}; choose another file")
                    raise self._fail(hit, f"the output path is the {option} input {path}{what}; choose another file")

    def _reserve(self, out: Output, dest: Path) -> Path:
        tmp = temp_path(dest)
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except OSError as exc:
            raise self._fail(out, f"cannot write in {Path(out.path).parent or '.'} ({reason(exc)})") from None
        return tmp

    # ------------------------------------------------------------------ staging
    def get(self, role: str) -> list[Output]:
        return [o for o in self.outputs if o.role == role and o.staged]

    def planned(self, role: str) -> bool:
        return bool(self.get(role))

    def stage_text(self, role: str, text: str) -> None:
        for out in self.get(role):
            if out.stdout:
                out.text, out.ready = text, True
                continue
            if not self.write:
                continue
            assert out.tmp is not None, "check() before staging"
            try:
                _write_text(out.tmp, text)
            except OSError as exc:
                raise self._fail(out, f"cannot write ({reason(exc)})") from None
            out.ready = True

    def stage_report(self, report: dict) -> None:
        self.stage_text("report", json.dumps(report, indent=1, allow_nan=False) + "\n")

    def stage_model(self, role: str, model: Any) -> None:
        from .passes.rewrite import save_model

        for out in self.get(role):
            if not self.write:
                continue
            assert out.tmp is not None and out.dest is not None, "check() before staging"
            data_name = out.dest.name + ".data"
            out.data_tmp = temp_path(out.dest.with_name(data_name))
            try:
                save_model(model, out.tmp, data_name=data_name, data_path=out.data_tmp, atomic=False)
            except OSError as exc:
                raise self._fail(out, f"cannot write ({reason(exc)})") from None
            if not out.data_tmp.exists():
                out.data_tmp = None
            out.ready = True

    def stage_file(self, role: str, writer: Callable[[Path], Any]) -> None:
        """Let ``writer(temp_path)`` write an output (e.g. a TensorRT engine builder)."""
        for out in self.get(role):
            if not self.write:
                continue
            assert out.tmp is not None, "check() before staging"
            try:
                writer(out.tmp)
            except OSError as exc:
                raise self._fail(out, f"cannot write ({reason(exc)})") from None
            out.ready = True

    def written(self) -> dict[str, str]:
        """role -> path of what this run writes (for the report's ``outputs``)."""
        res: dict[str, str] = {}
        for out in self.outputs:
            if out.option == "--json":
                continue
            res[out.role] = out.path
            if out.data_tmp is not None:
                res["model_data"] = out.path + ".data"
        return res

    # ------------------------------------------------------------------ commit / cleanup
    def commit(self) -> dict[str, str]:
        """Move every staged output into place (see the order in the module docstring)."""
        self.check()
        if not self.write:
            self._committed = True
            return {}
        steps: list[tuple[Output, Path, Path]] = []
        for out in self.outputs:
            if out.stdout or not out.staged:
                continue
            if not out.ready:
                raise RuntimeError(f"{out.option} {out.path}: planned but never staged")
            assert out.tmp is not None and out.dest is not None
            if out.data_tmp is not None:
                steps.append((out, out.data_tmp, out.dest.with_name(out.dest.name + ".data")))
            steps.append((out, out.tmp, out.dest))
        rank = {r: i for i, r in enumerate(COMMIT_ORDER)}
        steps.sort(key=lambda s: rank.get("model_data" if s[2] != s[0].dest else s[0].role, 0))
        done: list[_Done] = []
        self._committing = True
        try:
            for out, tmp, dest in steps:
                try:
                    done.append(_replace(tmp, dest))
                except OSError as exc:
                    undone = _rollback(done)
                    raise self._fail(out, f"cannot write ({reason(exc)}); "
                                          + ("nothing written" if undone else "earlier outputs could not be restored")
                                     ) from None
            for d in done:
                if d.backup is not None:
                    _unlink(d.backup)
            for out in self.outputs:
                if out.stdout and out.ready and out.text is not None:
                    sys.stdout.write(out.text)
            sys.stdout.flush()
            self._committed = True
        finally:
            self._committing = False
        if self._pending:
            raise Terminated() if self._pending[0] == signal.SIGTERM else KeyboardInterrupt()
        return self.written()

    def discard(self) -> None:
        for out in self.outputs:
            for tmp in (out.tmp, out.data_tmp):
                if tmp is not None:
                    _unlink(tmp)

    def __enter__(self) -> OutputPlan:
        self._install_signals()
        self._warn_ctx = warnings.catch_warnings()
        self._warn_ctx.__enter__()
        warnings.showwarning = self._show_warning
        try:
            self.check()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.discard()
            if isinstance(exc[1], Terminated):
                print("halp-onnx: terminated, nothing written", file=sys.stderr)
        finally:
            if self._warn_ctx is not None:
                self._warn_ctx.__exit__(*exc)
                self._warn_ctx = None
            self._restore_signals()

    def warn(self, message: str) -> None:
        """A warning: one line on stderr (unless --quiet), and in the report's ``warnings``."""
        line = " ".join(str(message).split())
        if line not in self.warnings:
            self.warnings.append(line)
            if not self.quiet:
                print(f"halp-onnx: warning: {line}", file=sys.stderr)

    def _show_warning(self, message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                      line: Any = None) -> None:
        self.warn(str(message))

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._saved[sig] = signal.signal(sig, self._on_signal)
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter
                pass

    def _restore_signals(self) -> None:
        for sig, old in self._saved.items():
            try:
                signal.signal(sig, old)
            except (ValueError, OSError, TypeError):  # pragma: no cover
                pass
        self._saved.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._committing:  # finish the commit (or its rollback) first
            self._pending.append(signum)
            return
        if signum == signal.SIGTERM:
            raise Terminated()
        raise KeyboardInterrupt()


def _first_file(path: Path) -> Path:
    """The first component of ``path`` that exists and is not a folder."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return path.parent


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _replace(tmp: Path, dest: Path) -> _Done:
    existed = os.path.lexists(dest)
    backup = None
    if existed:
        backup = temp_path(dest)
        try:
            os.link(dest, backup)  # the old file stays reachable until the commit succeeds
        except OSError:
            backup = None
    try:
        os.replace(tmp, dest)
    except OSError:
        if backup is not None:
            _unlink(backup)
        raise
    return _Done(dest, backup, existed)


def _rollback(done: list[_Done]) -> bool:
    ok = True
    for d in reversed(done):
        try:
            if d.backup is not None:
                os.replace(d.backup, d.dest)
            elif not d.existed:
                os.unlink(d.dest)
            else:
                ok = False
        except OSError:
            ok = False
    return ok


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=1, allow_nan=False)
