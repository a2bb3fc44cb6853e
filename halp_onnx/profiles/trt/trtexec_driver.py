"""Driving the ``trtexec`` executable.

* :func:`run_trtexec` runs one command: a timeout, a non-zero exit or a missing binary is a
  one-line :class:`~halp_onnx.errors.HalpError` naming the executable.
* :func:`profile_with_trtexec` times one ONNX model (a one-block model or a whole model) with
  ``--exportProfile`` and ``--exportLayerInfo`` JSON and ``--separateProfileRun``, parses both
  with the existing parsers and maps the per-layer times back to ONNX nodes (:func:`map_layers`).
* :func:`build_engine_with_trtexec` writes an engine with ``--saveEngine``.
* :func:`probe_trtexec` asks a binary which TensorRT it is and which GPU it runs on (cached).
* :class:`TrtexecDriver` is the ``trtexec`` half of
  :class:`~halp_onnx.profiles.trt.api_driver.TrtBackend`.

The flags are trtexec's own (``trtexec --help``; NVIDIA/TensorRT ``samples/common/sampleOptions.cpp``
and ``samples/trtexec/README.md``).
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import FALLBACK_HINT, ModelLike, Precision, _error, _lines, _resolve_shape, check_precision
from .options import active_settings, find_trtexec
from .parse_layers import parse_engine_info
from .parse_trtexec import parse_export_profile, parse_trtexec_log
from .records import EngineInfo, LayerInfo, LayerTiming, TrtexecResult, TrtexecSummary

if TYPE_CHECKING:
    import onnx

NOT_FOUND = ("trtexec was not found (install TensorRT on a machine with an NVIDIA GPU, give --trtexec PATH, "
             "put trtexec on PATH or set TRTEXEC)")


# --------------------------------------------------------------------------------------
# Running the binary
# --------------------------------------------------------------------------------------


def run_trtexec(binary: str, args: Sequence[str], *, timeout_s: float) -> str:
    """Run ``binary args`` and return its log (stdout, then stderr); one-line errors otherwise."""
    cmd = [binary, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise _error(f"trtexec {binary} did not finish within {timeout_s:g} s (raise --trtexec-timeout)") from exc
    except OSError as exc:
        raise _error(f"cannot run trtexec at {binary}: {exc.strerror or exc}") from exc
    log = proc.stdout + ("\n" + proc.stderr if proc.stderr else "")
    if proc.returncode != 0:
        first_error = next((ln.message for ln in _lines(log) if ln.level == "E" and ln.message), None)
        detail = first_error or (log.strip().splitlines() or ["no output"])[-1]
        raise _error(f"trtexec {binary} exited with status {proc.returncode}: {detail}")
    return log


def _onnx_input_shapes(path: Path, batch: int | None, input_shapes: Mapping[str, Sequence[int]]
                       ) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the model's *dynamic* inputs (trtexec refuses ``--shapes`` for a
    static model); static inputs are only checked against ``batch`` and ``input_shapes``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return _dynamic_input_shapes(model, batch, input_shapes)


def _dynamic_input_shapes(model: onnx.ModelProto, batch: int | None, input_shapes: Mapping[str, Sequence[int]]
                          ) -> dict[str, tuple[int, ...]]:
    initializers = {init.name for init in model.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        shape = _resolve_shape(value.name, dims, batch, input_shapes)
        if any(d < 0 for d in dims):
            shapes[value.name] = shape
        elif shape != tuple(dims):
            raise _error(f"input {value.name!r} is static with shape {tuple(dims)}; it cannot be run as {shape}")
    return shapes


def _shape_arg(shapes: Mapping[str, Sequence[int]]) -> str:
    parts = []
    for name, dims in shapes.items():
        quoted = f"'{name}'" if ":" in name else name
        parts.append(f"{quoted}:{'x'.join(str(d) for d in dims)}")
    return ",".join(parts)


def trtexec_args(model: str | os.PathLike[str], precision: Precision = "fp16", *,
                 shapes: Mapping[str, Sequence[int]] | None = None, warmup_ms: int = 200, iterations: int = 100,
                 duration_s: float = 3, export_profile: str | os.PathLike[str] | None = None,
                 export_layer_info: str | os.PathLike[str] | None = None,
                 save_engine: str | os.PathLike[str] | None = None, extra_args: Iterable[str] = ()) -> list[str]:
    """trtexec's arguments for one run (without the binary).

    ``int8`` adds ``--fp16`` too, so layers without INT8 kernels fall back to FP16; without
    calibration data trtexec uses placeholder scales (fine for timing).
    """
    check_precision(precision)
    args = [f"--onnx={os.fspath(model)}"]
    if precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args += ["--int8", "--fp16"]
    if shapes:
        args.append(f"--shapes={_shape_arg(shapes)}")
    # trtexec parses --duration as an integer number of seconds
    args += [f"--warmUp={int(warmup_ms)}", f"--iterations={int(iterations)}", f"--duration={math.ceil(duration_s)}"]
    if export_profile is not None:
        # --separateProfileRun keeps the performance summary free of profiler overhead
        args += [f"--exportProfile={os.fspath(export_profile)}", "--dumpProfile", "--separateProfileRun"]
    if export_layer_info is not None:  # detailed verbosity: layer types, tensors and the ONNX names (Metadata)
        args += [f"--exportLayerInfo={os.fspath(export_layer_info)}", "--profilingVerbosity=detailed"]
    if save_engine is not None:
        args.append(f"--saveEngine={os.fspath(save_engine)}")
    return args + list(extra_args)


def _require_binary(explicit: str | os.PathLike[str] | None = None) -> str:
    binary = find_trtexec(explicit)
    if binary is None:
        raise _error(f"{NOT_FOUND}; {FALLBACK_HINT}")
    return binary


def _write_model(model: ModelLike, folder: Path) -> tuple[Path, onnx.ModelProto | None]:
    """``model`` as a file trtexec can read, and the ModelProto when it is at hand."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        path = folder / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=model.ByteSize() > 1_800_000_000)
        return path, model
    if isinstance(model, (bytes, bytearray)):
        path = folder / "model.onnx"
        path.write_bytes(bytes(model))
        return path, None
    path = Path(os.fspath(model))
    if not path.is_file():
        raise _error(f"ONNX model not found: {path}")
    return path, None


# --------------------------------------------------------------------------------------
# Per-layer times -> ONNX nodes
# --------------------------------------------------------------------------------------

_REFORMAT_RE = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to ")
_FOREIGN_RE = re.compile(r"^\{ForeignNode\[(?P<first>.+?)\.\.\.(?P<last>.+)\]\}$")
_MYELIN_SUFFIX_RE = re.compile(r"_myl\d+_\d+$")


@dataclass(frozen=True)
class LayerMap:
    """Per-iteration engine-layer times (ms) charged to ONNX nodes.

    A fused layer (``conv + bn + relu``, a Myelin kernel whose ``Metadata`` lists several ONNX
    layers) is charged to its anchor node (the first GEMM-like node it covers, else the first);
    ``fused`` lists every node an anchor's layers cover. Reformat layers (``Reformatting
    CopyNode for ...``) are kept apart, and so are layers naming no node of the model (Myelin
    shape calls, ``(Unnamed Layer* N)``).
    """

    node_ms: dict[str, float]
    fused: dict[str, tuple[str, ...]]
    layer_anchor: dict[str, str]
    reformat_ms: dict[str, float]
    unmatched_ms: dict[str, float]

    @property
    def kernel_ms(self) -> float:
        """Everything but the reformats: what the model's own layers cost."""
        return sum(self.node_ms.values()) + sum(self.unmatched_ms.values())

    @property
    def reformat_total_ms(self) -> float:
        return sum(self.reformat_ms.values())

    @property
    def total_ms(self) -> float:
        return self.kernel_ms + self.reformat_total_ms

    def to_dict(self) -> dict[str, Any]:
        return {"node_ms": dict(self.node_ms), "fused": {k: list(v) for k, v in self.fused.items()},
                "reformat_ms": dict(self.reformat_ms), "unmatched_ms": dict(self.unmatched_ms),
                "kernel_ms": self.kernel_ms, "reformat_total_ms": self.reformat_total_ms}


def _nodes_of(model: onnx.ModelProto) -> list[tuple[str, str]]:
    return [(n.name, n.op_type) for n in model.graph.node if n.name]


def _members(name: str, info: LayerInfo | None, order: Sequence[str], index: Mapping[str, int],
             alias: Mapping[str, str]) -> list[str]:
    """The ONNX nodes one engine layer covers: its Metadata when it has some, else its name."""
    def known(token: str) -> str | None:
        token = token.strip()
        for cand in (token, _MYELIN_SUFFIX_RE.sub("", token)):
            if cand in index:
                return cand
            if cand in alias:
                return alias[cand]
        return None

    found: list[str] = []
    if info is not None and info.onnx_layers:
        found = [n for n in (known(t) for t in info.onnx_layers) if n]
    if not found:
        for token in name.split(" + "):
            m = _FOREIGN_RE.match(token.strip())
            first, last = (known(m["first"]), known(m["last"])) if m else (None, None)
            if first and last:
                lo, hi = sorted((index[first], index[last]))
                found += order[lo:hi + 1]
            elif (n := known(token)) is not None:
                found.append(n)
    return list(dict.fromkeys(found))


def map_layers(timings: Sequence[LayerTiming], engine: EngineInfo | None, model: onnx.ModelProto) -> LayerMap:
    """Charge each engine layer's time to the ONNX node it came from (see :class:`LayerMap`)."""
    from ...ops.table import ANCHOR_OPS

    nodes = _nodes_of(model)
    order = [n for n, _ in nodes]
    index = {n: i for i, n in enumerate(order)}
    ops = dict(nodes)
    alias = {n.replace(".", "_"): n for n in order}  # Myelin writes "a.1/Gemm" as "a_1/Gemm"
    infos = {layer.name: layer for layer in engine.layers} if engine is not None else {}
    node_ms: dict[str, float] = {}
    fused: dict[str, list[str]] = {}
    anchors: dict[str, str] = {}
    reformat: dict[str, float] = {}
    unmatched: dict[str, float] = {}
    for t in timings:
        info = infos.get(t.name)
        if _REFORMAT_RE.match(t.name) or (info is not None and (info.layer_type == "Reformat"
                                                                 or info.origin == "REFORMAT")):
            reformat[t.name] = reformat.get(t.name, 0.0) + t.avg_ms
            continue
        members = _members(t.name, info, order, index, alias)
        if not members:
            unmatched[t.name] = unmatched.get(t.name, 0.0) + t.avg_ms
            continue
        anchor = next((m for m in members if ops[m] in ANCHOR_OPS), members[0])
        node_ms[anchor] = node_ms.get(anchor, 0.0) + t.avg_ms
        fused.setdefault(anchor, [])
        fused[anchor] += [m for m in members if m not in fused[anchor]]
        anchors[t.name] = anchor
    ordered = sorted(node_ms, key=index.__getitem__)
    return LayerMap({a: node_ms[a] for a in ordered}, {a: tuple(fused[a]) for a in ordered}, anchors,
                    reformat, unmatched)


# --------------------------------------------------------------------------------------
# Profiling, engines, the probe
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrtexecProfile:
    """One trtexec run of one ONNX model: summary, per-layer times, engine layers and the node map."""

    result: TrtexecResult
    engine: EngineInfo | None
    layer_map: LayerMap | None

    @property
    def summary(self) -> TrtexecSummary:
        return self.result.summary

    @property
    def layers(self) -> tuple[LayerTiming, ...]:
        return self.result.layers


def profile_with_trtexec(model: ModelLike, precision: Precision = "fp16", *, binary: str | None = None,
                         batch: int | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
                         warmup_ms: int = 200, iterations: int = 100, duration_s: float = 3,
                         layers: bool = True, timeout_s: float | None = None,
                         extra_args: Iterable[str] = ()) -> TrtexecProfile:
    """Time ``model`` with trtexec; with ``layers``, also its per-layer profile and engine layers,
    mapped back to the model's nodes (the node map needs the ONNX graph: a ModelProto or a file)."""
    import onnx

    check_precision(precision)
    exe = _require_binary(binary)
    limit = active_settings().timeout_s if timeout_s is None else timeout_s
    with tempfile.TemporaryDirectory(prefix="halp-trtexec-") as tmp:
        folder = Path(tmp)
        path, proto = _write_model(model, folder)
        if proto is None and layers:
            proto = onnx.load(str(path), load_external_data=False)
        shapes = (_dynamic_input_shapes(proto, batch, input_shapes or {}) if proto is not None
                  else _onnx_input_shapes(path, batch, input_shapes or {}))
        profile_path = folder / "profile.json" if layers else None
        info_path = folder / "layers.json" if layers else None
        args = trtexec_args(path, precision, shapes=shapes or None, warmup_ms=warmup_ms, iterations=iterations,
                            duration_s=duration_s, export_profile=profile_path, export_layer_info=info_path,
                            extra_args=extra_args)
        log = run_trtexec(exe, args, timeout_s=limit)
        summary = parse_trtexec_log(log)
        timings: tuple[LayerTiming, ...] = ()
        engine: EngineInfo | None = None
        if profile_path is not None:
            if not profile_path.is_file():
                raise _error(f"trtexec {exe} wrote no --exportProfile JSON for {path.name}")
            timings = tuple(parse_export_profile(profile_path))
        if info_path is not None and info_path.is_file():
            engine = parse_engine_info(info_path)
    layer_map = map_layers(timings, engine, proto) if layers and proto is not None else None
    result = TrtexecResult(summary=summary, layers=timings, command=(exe, *args), log=log)
    return TrtexecProfile(result, engine, layer_map)


def build_engine_with_trtexec(model: ModelLike, out_plan: str | os.PathLike[str], precision: Precision = "fp16",
                              *, binary: str | None = None, batch: int | None = None,
                              input_shapes: Mapping[str, Sequence[int]] | None = None,
                              timeout_s: float | None = None) -> tuple[Path, TrtexecSummary]:
    """Build an engine with ``--saveEngine`` (written to a temporary name, then renamed into place).

    The run times one iteration after the build instead of skipping inference, so every trtexec
    from 7.x on takes the same flags (``--skipInference`` is the newer spelling of ``--buildOnly``).
    """
    import onnx

    check_precision(precision)
    exe = _require_binary(binary)
    limit = active_settings().timeout_s if timeout_s is None else timeout_s
    out = Path(out_plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_plan = out.with_name(f".{out.name}.partial")
    with tempfile.TemporaryDirectory(prefix="halp-trtexec-") as tmp:
        path, proto = _write_model(model, Path(tmp))
        proto = proto or onnx.load(str(path), load_external_data=False)
        shapes = _dynamic_input_shapes(proto, batch, input_shapes or {})
        args = trtexec_args(path, precision, shapes=shapes or None, warmup_ms=0, iterations=1, duration_s=0,
                            save_engine=tmp_plan)
        try:
            log = run_trtexec(exe, args, timeout_s=limit)
            if not tmp_plan.is_file() or tmp_plan.stat().st_size == 0:
                raise _error(f"trtexec {exe} wrote no engine to {out}")
            os.replace(tmp_plan, out)
        finally:
            tmp_plan.unlink(missing_ok=True)
    return out, parse_trtexec_log(log)


@dataclass(frozen=True)
class TrtexecProbe:
    """What one short run of a trivial model says about a trtexec binary."""

    binary: str
    trt_version: str | None
    gpu_name: str | None
    compute_capability: str | None
    summary: TrtexecSummary = field(repr=False)


_PROBES: dict[tuple[str, int, int], TrtexecProbe] = {}


def probe_trtexec(binary: str, *, timeout_s: float | None = None) -> TrtexecProbe:
    """The TensorRT version and GPU of ``binary``, from one run of a one-node model (cached per
    binary file: path, size and modification time)."""
    from ..timing import _null_model

    st = os.stat(binary)
    key = (os.path.realpath(binary), st.st_size, st.st_mtime_ns)
    if key not in _PROBES:
        run = profile_with_trtexec(_null_model(), "fp32", binary=binary, warmup_ms=0, iterations=10, duration_s=0,
                                   layers=False, timeout_s=timeout_s)
        s = run.summary
        _PROBES[key] = TrtexecProbe(binary, s.trt_version, s.gpu_name, s.compute_capability, s)
    return _PROBES[key]


def clear_probe_cache() -> None:
    """Forget probed binaries (a binary replaced in place keeps its cache key only if its size
    and modification time are unchanged)."""
    _PROBES.clear()


# --------------------------------------------------------------------------------------
# The mixin of TrtBackend
# --------------------------------------------------------------------------------------


class TrtexecDriver:
    """The ``trtexec`` half of :class:`~halp_onnx.profiles.trt.api_driver.TrtBackend`: finds the
    binary (the constructor's ``trtexec=``, ``--trtexec``, ``$TRTEXEC``, ``PATH``) and runs it."""

    _trtexec: str | None  # set by TrtBackend.__init__

    _check_precision = staticmethod(check_precision)  # shared with the Python-API driver

    def trtexec_path(self) -> str | None:
        """The trtexec binary: the constructor argument, ``--trtexec``, ``$TRTEXEC``, ``PATH``, the system one."""
        return find_trtexec(self._trtexec)

    def trtexec_command(self, model: str | os.PathLike[str], precision: Precision = "fp16", *,
                        shapes: Mapping[str, Sequence[int]] | None = None, warmup_ms: int = 200,
                        iterations: int = 100, duration_s: int = 3,
                        export_profile: str | os.PathLike[str] | None = None,
                        extra_args: Iterable[str] = (), trtexec: str = "trtexec") -> list[str]:
        """The trtexec command line :meth:`time_with_trtexec` runs."""
        return [trtexec, *trtexec_args(model, precision, shapes=shapes, warmup_ms=warmup_ms, iterations=iterations,
                                       duration_s=duration_s, export_profile=export_profile,
                                       extra_args=extra_args)]

    def time_with_trtexec(self, model: str | os.PathLike[str], precision: Precision = "fp16",
                          batch: int | None = None, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
                          warmup_ms: int = 200, iterations: int = 100, duration_s: int = 3,
                          profile_layers: bool = True, extra_args: Iterable[str] = (),
                          timeout_s: float = 1800.0) -> TrtexecResult:
        """Run ``trtexec`` on an ONNX file and parse its summary (and per-layer profile)."""
        self._check_precision(precision)
        binary = _require_binary(self._trtexec)
        path = Path(model)
        if not path.is_file():
            raise _error(f"ONNX model not found: {path}")
        shapes: dict[str, tuple[int, ...]] | None = None
        if batch is not None or input_shapes:
            shapes = _onnx_input_shapes(path, batch, input_shapes or {}) or None
        with tempfile.TemporaryDirectory(prefix="halp-trtexec-") as tmp:
            profile_path = Path(tmp) / "profile.json" if profile_layers else None
            args = trtexec_args(path, precision, shapes=shapes, warmup_ms=warmup_ms, iterations=iterations,
                                duration_s=duration_s, export_profile=profile_path, extra_args=extra_args)
            log = run_trtexec(binary, args, timeout_s=timeout_s)
            summary = parse_trtexec_log(log)
            layers: tuple[LayerTiming, ...] = ()
            if profile_path is not None and profile_path.is_file():
                layers = tuple(parse_export_profile(profile_path))
        return TrtexecResult(summary=summary, layers=layers, command=(binary, *args), log=log)
