"""Parsers for engine layer information: ``trtexec --exportLayerInfo`` JSON (names-only or
detailed, as the engine inspector writes it) and the ``--dumpLayerInfo`` log text
(:func:`parse_engine_info`, :func:`parse_layer_info`)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .common import JsonLike, _error, _load_json, _split_lines, _to_text
from .records import EngineInfo, LayerInfo, TensorInfo

_META_RE = re.compile(r"\[ONNX Layer:\s*(?P<name>[^\]]*)\]")


def _onnx_layers(metadata: Any) -> tuple[str, ...]:
    if not isinstance(metadata, str):
        return ()
    return tuple(m["name"].strip() for m in _META_RE.finditer(metadata))


def _dims(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, (list, tuple)):
        return None
    dims: list[int] = []
    for d in value:
        if isinstance(d, bool):
            return None
        if isinstance(d, int):
            dims.append(d)
        elif isinstance(d, str) and re.fullmatch(r"-?\d+", d.strip()):
            dims.append(int(d))
        else:
            return None
    return tuple(dims)


def _tensor_from_json(entry: Any) -> TensorInfo | None:
    if not isinstance(entry, Mapping) or "Name" not in entry:
        return None
    fmt = entry.get("Format/Datatype")
    loc = entry.get("Location")
    return TensorInfo(
        name=str(entry["Name"]),
        dims=_dims(entry.get("Dimensions")),
        format=str(fmt) if fmt is not None else None,
        location=str(loc) if loc is not None else None,
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _layer_from_json(entry: Any, what: str) -> LayerInfo:
    if isinstance(entry, str):
        return LayerInfo(name=entry)
    if not isinstance(entry, Mapping) or "Name" not in entry:
        raise _error(f"{what}: a layer entry has no 'Name'")
    tensors_in = tuple(t for t in map(_tensor_from_json, entry.get("Inputs") or ()) if t)
    tensors_out = tuple(t for t in map(_tensor_from_json, entry.get("Outputs") or ()) if t)
    return LayerInfo(
        name=str(entry["Name"]),
        layer_type=_opt_str(entry.get("LayerType")),
        inputs=tensors_in,
        outputs=tensors_out,
        parameter_type=_opt_str(entry.get("ParameterType")),
        origin=_opt_str(entry.get("Origin")),
        tactic_name=_opt_str(entry.get("TacticName")),
        tactic_value=_opt_str(entry.get("TacticValue")),
        onnx_layers=_onnx_layers(entry.get("Metadata")),
    )


# The text form printed by ``--dumpLayerInfo --profilingVerbosity=detailed``:
# "Name: n, LayerType: t, Inputs: [ { Name: x, Location: Device, Dimensions: [1,3], Format/Datatype: Float }], ..."
_DUMP_NAME_RE = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*)")
_DUMP_TENSORS_RE = r"{key}: \[(?P<body>(?:[^\[\]]|\[[^\[\]]*\])*)\]"
_DUMP_TENSOR_RE = re.compile(r"\{(?P<body>[^{}]*)\}")
_DUMP_TENSOR_FIELDS_RE = re.compile(
    r"^Name: (?P<name>.*?), (?:Location: (?P<loc>[^,]*), )?Dimensions: \[(?P<dims>[^\]]*)\]"
    r"(?:, Format/Datatype: (?P<fmt>.*))?$"
)


def _dump_field(line: str, key: str) -> str | None:
    m = re.search(rf"(?:^|, ){re.escape(key)}: (?P<v>[^,]*)", line)
    return m["v"].strip() if m else None


def _dump_tensors(line: str, key: str) -> tuple[TensorInfo, ...]:
    block = re.search(_DUMP_TENSORS_RE.format(key=key), line)
    if block is None:
        return ()
    tensors: list[TensorInfo] = []
    for t in _DUMP_TENSOR_RE.finditer(block["body"]):
        f = _DUMP_TENSOR_FIELDS_RE.match(t["body"].strip())
        if f is None:
            continue
        dims_text = f["dims"].strip()
        dims = _dims(dims_text.split(",")) if dims_text else ()
        tensors.append(
            TensorInfo(name=f["name"], dims=dims, format=(f["fmt"] or "").strip() or None,
                       location=f["loc"])
        )
    return tuple(tensors)


def _parse_layer_dump(text: str) -> EngineInfo | None:
    layers: list[LayerInfo] = []
    bindings: list[str] = []
    in_bindings = False
    for raw in _split_lines(text):
        line = raw.strip()
        if line == "Bindings:":
            in_bindings = True
            continue
        if in_bindings:
            if not line or line.startswith(("[", "&&&&")):
                in_bindings = False
            else:
                bindings.append(line)
            continue
        m = _DUMP_NAME_RE.match(line)
        if m is None:
            continue
        meta = re.search(r"(?:^|, )Metadata: (?P<v>.*)$", line)
        layers.append(
            LayerInfo(
                name=m["name"],
                layer_type=m["type"].strip() or None,
                inputs=_dump_tensors(line, "Inputs"),
                outputs=_dump_tensors(line, "Outputs"),
                parameter_type=_dump_field(line, "ParameterType"),
                origin=_dump_field(line, "Origin"),
                tactic_name=_dump_field(line, "TacticName"),
                tactic_value=_dump_field(line, "TacticValue"),
                onnx_layers=_onnx_layers(meta["v"] if meta else None),
            )
        )
    return EngineInfo(tuple(layers), tuple(bindings)) if layers else None


def parse_engine_info(data: JsonLike) -> EngineInfo:
    """Parse ``--exportLayerInfo`` JSON (names-only or detailed) or ``--dumpLayerInfo`` log text."""
    what = "trtexec --exportLayerInfo JSON"
    if isinstance(data, (str, bytes)):
        text = _to_text(data)
        if not text.lstrip().startswith(("{", "[")):
            dumped = _parse_layer_dump(text)
            if dumped is None:
                raise _error("no TensorRT layer information found (expected --exportLayerInfo "
                             "JSON or a detailed --dumpLayerInfo 'Layers:' block)")
            return dumped
        data = text
    doc = _load_json(data, what)
    if isinstance(doc, Mapping):
        raw_layers = doc.get("Layers")
        raw_bindings = doc.get("Bindings") or ()
    elif isinstance(doc, list):
        raw_layers, raw_bindings = doc, ()
    else:
        raise _error(f"{what} must be an object with 'Layers', got {type(doc).__name__}")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise _error(f"{what} has no 'Layers' list")
    layers = tuple(_layer_from_json(entry, what) for entry in raw_layers)
    bindings = tuple(
        str(b["Name"]) if isinstance(b, Mapping) and "Name" in b else str(b) for b in raw_bindings
    )
    return EngineInfo(layers, bindings)


def parse_layer_info(data: JsonLike) -> list[LayerInfo]:
    """Layers of ``--exportLayerInfo`` JSON or ``--dumpLayerInfo`` text (see :func:`parse_engine_info`)."""
    return list(parse_engine_info(data).layers)
