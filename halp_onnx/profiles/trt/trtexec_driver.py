"""Driving the ``trtexec`` executable: :class:`TrtexecDriver` finds the binary, builds its
command line, runs it and parses the log and ``--exportProfile`` JSON (mixed into
:class:`~halp_onnx.profiles.trt.api_driver.TrtBackend`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .common import FALLBACK_HINT, Precision, _error, _lines, _resolve_shape, check_precision
from .parse_trtexec import parse_export_profile, parse_trtexec_log
from .records import LayerTiming, TrtexecResult


def _onnx_input_shapes(
    path: Path, batch: int | None, input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the model's *dynamic* inputs (trtexec refuses ``--shapes`` for a
    static model); static inputs are only checked against ``batch`` and ``input_shapes``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else -1
            for d in value.type.tensor_type.shape.dim
        ]
        shape = _resolve_shape(value.name, dims, batch, input_shapes)
        if any(d < 0 for d in dims):
            shapes[value.name] = shape
        elif shape != tuple(dims):
            raise _error(f"input {value.name!r} is static with shape {tuple(dims)}; "
                         f"it cannot be run as {shape}")
    return shapes


def _shape_arg(shapes: Mapping[str, Sequence[int]]) -> str:
    parts = []
    for name, dims in shapes.items():
        quoted = f"'{name}'" if ":" in name else name
        parts.append(f"{quoted}:{'x'.join(str(d) for d in dims)}")
    return ",".join(parts)


class TrtexecDriver:
    """The ``trtexec`` half of :class:`~halp_onnx.profiles.trt.api_driver.TrtBackend`: finds the
    binary (the constructor's ``trtexec=``, ``$TRTEXEC``, ``PATH``), builds and runs its command."""

    _trtexec: str | None  # set by TrtBackend.__init__

    _check_precision = staticmethod(check_precision)  # shared with the Python-API driver

    def trtexec_path(self) -> str | None:
        """The trtexec binary: the constructor argument, ``$TRTEXEC``, ``PATH``, or the usual install dir."""
        candidates = [self._trtexec, os.environ.get("TRTEXEC"), shutil.which("trtexec"),
                      "/usr/src/tensorrt/bin/trtexec"]
        for candidate in candidates:
            if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        return None

    # -- timing through trtexec --------------------------------------------------------

    def trtexec_command(
        self,
        model: str | os.PathLike[str],
        precision: Precision = "fp16",
        *,
        shapes: Mapping[str, Sequence[int]] | None = None,
        warmup_ms: int = 200,
        iterations: int = 100,
        duration_s: int = 3,
        export_profile: str | os.PathLike[str] | None = None,
        extra_args: Iterable[str] = (),
        trtexec: str = "trtexec",
    ) -> list[str]:
        """The trtexec command line :meth:`time_with_trtexec` runs.

        ``int8`` adds ``--fp16`` too, so layers without INT8 kernels fall back to FP16;
        without calibration data trtexec uses placeholder scales (fine for timing).
        """
        self._check_precision(precision)
        cmd = [trtexec, f"--onnx={os.fspath(model)}"]
        if precision == "fp16":
            cmd.append("--fp16")
        elif precision == "int8":
            cmd += ["--int8", "--fp16"]
        if shapes:
            cmd.append(f"--shapes={_shape_arg(shapes)}")
        cmd += [f"--warmUp={int(warmup_ms)}", f"--iterations={int(iterations)}",
                f"--duration={int(duration_s)}"]
        if export_profile is not None:
            # --separateProfileRun keeps the performance summary free of profiler overhead.
            cmd += [f"--exportProfile={os.fspath(export_profile)}", "--dumpProfile",
                    "--separateProfileRun"]
        cmd += list(extra_args)
        return cmd

    def time_with_trtexec(
        self,
        model: str | os.PathLike[str],
        precision: Precision = "fp16",
        batch: int | None = None,
        *,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        warmup_ms: int = 200,
        iterations: int = 100,
        duration_s: int = 3,
        profile_layers: bool = True,
        extra_args: Iterable[str] = (),
        timeout_s: float = 1800.0,
    ) -> TrtexecResult:
        """Run ``trtexec`` on an ONNX file and parse its summary (and per-layer profile)."""
        self._check_precision(precision)
        binary = self.trtexec_path()
        if binary is None:
            raise _error("trtexec was not found (install TensorRT on a machine with an NVIDIA GPU, "
                         f"put trtexec on PATH or set TRTEXEC); {FALLBACK_HINT}")
        path = Path(model)
        if not path.is_file():
            raise _error(f"ONNX model not found: {path}")
        shapes: dict[str, tuple[int, ...]] | None = None
        if batch is not None or input_shapes:
            shapes = _onnx_input_shapes(path, batch, input_shapes or {}) or None

        with tempfile.TemporaryDirectory(prefix="halp-trtexec-") as tmp:
            profile_path = Path(tmp) / "profile.json" if profile_layers else None
            cmd = self.trtexec_command(
                path, precision, shapes=shapes, warmup_ms=warmup_ms, iterations=iterations,
                duration_s=duration_s, export_profile=profile_path, extra_args=extra_args,
                trtexec=binary,
            )
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                                      timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired as exc:
                raise _error(f"trtexec did not finish within {timeout_s:g} s") from exc
            except OSError as exc:
                raise _error(f"cannot run trtexec at {binary}: {exc.strerror or exc}") from exc
            log = proc.stdout + ("\n" + proc.stderr if proc.stderr else "")
            if proc.returncode != 0:
                first_error = next(
                    (ln.message for ln in _lines(log) if ln.level == "E" and ln.message), None
                )
                detail = first_error or (log.strip().splitlines() or ["no output"])[-1]
                raise _error(f"trtexec exited with status {proc.returncode}: {detail}")
            summary = parse_trtexec_log(log)
            layers: tuple[LayerTiming, ...] = ()
            if profile_path is not None and profile_path.is_file():
                layers = tuple(parse_export_profile(profile_path))
        return TrtexecResult(summary=summary, layers=layers, command=tuple(cmd), log=log)
