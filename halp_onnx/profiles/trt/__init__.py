"""TensorRT backend for hardware profiles: output parsers and engine timing.

Two halves:

* **Parsers** for what TensorRT tools print or write, TensorRT 7.2 to 10.x:
  ``trtexec`` logs (:func:`parse_trtexec_log`), ``--exportProfile`` JSON
  (:func:`parse_export_profile`), ``--exportLayerInfo`` JSON or the ``--dumpLayerInfo``
  text (:func:`parse_layer_info`), ``--dumpProfile`` tables (:func:`parse_dump_profile`)
  and ``polygraphy run`` logs (:func:`parse_polygraphy_log`).  They accept CRLF line
  ends, missing trailing spaces, scientific notation, and lines re-emitted by wrapper
  tools with extra ``[...]`` prefixes.  Text without recognisable timing raises
  :class:`~halp_onnx.errors.HalpError` with ``stage="tensorrt"``.

* **Measurement** (:class:`TrtBackend`): builds an engine with the TensorRT Python API
  and times ``execute_async_v3`` with CUDA events (per-layer times through ``IProfiler``),
  or runs the ``trtexec`` binary and parses its output.  Neither can run without TensorRT
  and an NVIDIA GPU; they then raise a one-line :class:`HalpError` that says so.  The
  Python-API path supports TensorRT :data:`SUPPORTED` (8.6 to 11.x) and refuses any other
  release; every TensorRT name it uses is checked against the real bindings of 8.6.1,
  10.4.0, 10.16.1.11 and 11.4.0.106 (``tests/test_trt_surface.py``).  An int8 engine
  written for the user is calibrated (``calib_batches``) or comes from a Q/DQ model.

All times are milliseconds unless a name says otherwise (``*_s``: seconds).

Modules: :mod:`.common` (constants, type aliases, shared text helpers), :mod:`.records`
(the frozen result types), :mod:`.parse_trtexec` (trtexec logs, ``--dumpProfile``,
``--exportProfile``), :mod:`.parse_layers` (``--exportLayerInfo`` / ``--dumpLayerInfo``),
:mod:`.parse_polygraphy`, :mod:`.cuda` (device buffers and event timing),
:mod:`.api_driver` (:class:`TrtBackend`, the Python-API driver) and :mod:`.trtexec_driver`
(the ``trtexec`` executable).
"""
from __future__ import annotations

from .api_driver import TrtBackend
from .common import (FALLBACK_HINT, NOT_INSTALLED, PRECISIONS, STAGE, SUPPORTED, JsonLike, ModelLike, Precision,
                     TextLike, check_precision, trt_version)
from .parse_layers import parse_engine_info, parse_layer_info
from .parse_polygraphy import parse_polygraphy_log
from .parse_trtexec import (parse_dump_profile, parse_dump_profile_table, parse_export_profile,
                            parse_export_profile_table, parse_trtexec_log)
from .records import (EngineInfo, LayerInfo, LayerProfile, LayerTiming, PolygraphyResult, PolygraphyRun, TensorInfo,
                      TimingStats, TrtexecResult, TrtexecSummary, TrtMeasurement)
from .trtexec_driver import TrtexecDriver

__all__ = [
    "EngineInfo",
    "FALLBACK_HINT",
    "JsonLike",
    "LayerInfo",
    "LayerProfile",
    "LayerTiming",
    "ModelLike",
    "NOT_INSTALLED",
    "PRECISIONS",
    "PolygraphyResult",
    "PolygraphyRun",
    "Precision",
    "STAGE",
    "SUPPORTED",
    "TensorInfo",
    "TextLike",
    "TimingStats",
    "TrtBackend",
    "TrtMeasurement",
    "TrtexecDriver",
    "TrtexecResult",
    "TrtexecSummary",
    "check_precision",
    "parse_dump_profile",
    "parse_dump_profile_table",
    "parse_engine_info",
    "parse_export_profile",
    "parse_export_profile_table",
    "parse_layer_info",
    "parse_polygraphy_log",
    "parse_trtexec_log",
    "trt_version",
]
