"""The logic of ``tests/fakes/trtexec``: a test double of NVIDIA's ``trtexec`` that replays real output.

It accepts trtexec's real flags only (``--key=value`` or ``--key``, split on the first ``=`` as
``argsToArgumentsMap`` in NVIDIA/TensorRT ``samples/common/sampleOptions.cpp`` does). Each flag it
mimics, with where trtexec documents it (``trtexec --help``, whose text is ``*Options::help`` in
``sampleOptions.cpp``, and ``samples/trtexec/README.md``):

========================  =================================================================================
``--onnx=<file>``         Model Options: "ONNX model". Read with onnx's protobuf schema for node names/shapes.
``--loadEngine=<file>``   Build Options: "Load a serialized engine" (one this fake saved).
``--saveEngine=<file>``   Build Options: "Save the serialized engine". Writes a dummy engine file.
``--fp16`` / ``--int8``   Build Options: "Enable fp16 / int8 precision, in addition to fp32".
``--best`` ``--noTF32``   Build Options (accepted; ``--best`` counts as int8).
``--shapes=spec``         Inference Options: "Set input shapes for dynamic shapes inference inputs"
                          (``name:1x3x224x224``, comma-separated, names may be single-quoted).
``--minShapes`` ...       Build Options ``--minShapes/--optShapes/--maxShapes=spec`` (accepted).
``--iterations=N``        Inference Options: "Run at least N inference iterations" (the profile's count).
``--warmUp=N``            Inference Options: "Run for N milliseconds to warmup" (accepted).
``--duration=N``          Inference Options: "Run performance measurements for at least N seconds" (accepted).
``--separateProfileRun``  Inference Options: "Do not attach the profiler in the benchmark run".
``--skipInference``       README "Example 5" (``--buildOnly`` in older help): build only.
``--dumpProfile``         Reporting Options: "Print profile information per layer".
``--exportProfile=<f>``   Reporting Options: "Write the profile information per layer in a json file".
``--exportLayerInfo=<f>`` Reporting Options: "Write the layer information of the engine in a json file".
``--profilingVerbosity``  Build Options: "mode ::= layer_names_only|detailed|none".
``--dumpLayerInfo`` ``--verbose`` ``--useCudaGraph`` ``--noDataTransfers`` ``--useSpinWait`` ``--avgRuns=N``
``--percentile=P`` ``--device=N`` ``--workspace=N``: accepted, no effect on what is replayed.
========================  =================================================================================

Real flags whose output it cannot replay (``--exportTimes``, ``--exportOutput``, ``--dumpOutput``,
``--loadInputs``, ``--timingCacheFile``, ``--calib``, ``--useDLACore``, ``--streams``, ``--plugins``) fail
with a line saying so; any other flag fails as trtexec does (``Unknown option``).

**Which real log it prints** (``$HALP_FAKE_TRTEXEC_DEVICE``, default ``h100``), unchanged, from the
fixtures folder (``$HALP_FAKE_TRTEXEC_FIXTURES``, default ``<repo>/../shared/fixtures/tensorrt``):

=================  ==========================================  ====================================
device             ``--onnx`` run (fp32, ``--fp16``, ``--int8``)  ``--loadEngine`` / ``--skipInference``
=================  ==========================================  ====================================
``h100``           trtexec_10.16.1_h100pcie_1.log               ..._h100pcie_2.log / ..._4_exportLayerInfo_run.log
``rtx6000ada``     trtexec_10.14.1_rtx6000ada_1.log             the same
``rtx3090``        trtexec_8.6.0_rtx3090_1.log                  the same
``gtx1070``        trtexec_8.2.3_gtx1070_1.log                  trtexec_8.4.1_gtx1070_1.log / the 8.2.3 one
``rtx3070laptop``  trtexec_7.2_rtx3070laptop_1.log (no version) the same
=================  ==========================================  ====================================

Every fixture log is an FP32 build (its ``Precision:`` line says ``FP32``): there is no real
``--fp16`` or ``--int8`` log, so one log per (device, mode) serves all three precisions and the
precision only changes the exported per-layer times (x2 fp32, x1 fp16, x0.6 int8) and the
reformat layers (fp16/int8 only).

**Exported JSON**, derived deterministically from the real fixture JSON but named after the
given model's layers: TensorRT-like layers are formed from the model's nodes (a Conv/Gemm/MatMul
absorbs a following BatchNormalization, activations and one residual Add; a Flatten/Reshape
feeding a Gemm joins it), named ``a + b + c`` (``plus``, TensorRT 8.x / 10.4 style) or as Myelin
kernels ``a_myl<g>_<i>`` with shape-call layers (``myelin``, the names the 10.16.1 H100 profile
shows); ``$HALP_FAKE_TRTEXEC_NAMES`` overrides (default ``myelin`` for ``h100``, else ``plus``).
A layer takes an entry of its kind from the real resnet18 ``--exportProfile`` JSON (10.4.0,
fp16), chosen by a CRC-32 of its width-independent geometry (op, kernel, strides, spatial size:
a one-block model and the same layer in the whole model get the same entry), and scales its
``averageMs`` by
``0.25 + 0.75 * work / reference``: work is MACs for convolutions and GEMMs (channels rounded up to
8 for fp16, 16 for int8, 4 for fp32, so widths make a staircase), tensor elements otherwise.
``--exportLayerInfo`` entries copy the real 10.4.0 alexnet detailed entries of the same
``LayerType``, with this model's names, shapes and ``Metadata`` (``[ONNX Layer: name]``).
The only generated log lines are the ``--dumpProfile`` table (10.16 layout) and error lines.

Test knobs: ``$HALP_FAKE_TRTEXEC_EXIT`` (exit with this status after an ``[E]`` line),
``$HALP_FAKE_TRTEXEC_SLEEP_S`` (sleep first), ``$HALP_FAKE_TRTEXEC_CALLS`` (append each argv as a
JSON line to this file).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

FAMILIES: dict[str, dict[str, str]] = {
    "h100": {"onnx": "trtexec_10.16.1_h100pcie_1.log", "load": "trtexec_10.16.1_h100pcie_2.log",
             "build": "trtexec_10.16.1_h100pcie_4_exportLayerInfo_run.log", "names": "myelin"},
    "rtx6000ada": {"onnx": "trtexec_10.14.1_rtx6000ada_1.log", "names": "plus"},
    "rtx3090": {"onnx": "trtexec_8.6.0_rtx3090_1.log", "names": "plus"},
    "gtx1070": {"onnx": "trtexec_8.2.3_gtx1070_1.log", "load": "trtexec_8.4.1_gtx1070_1.log", "names": "plus"},
    "rtx3070laptop": {"onnx": "trtexec_7.2_rtx3070laptop_1.log", "names": "plus"},
}
PROFILE_TEMPLATE = "trtexec_10.4.0_rtx3060laptop_exportProfile_resnet18.json"
LAYER_TEMPLATE = "trtexec_10.4.0_rtx3060laptop_exportLayerInfo_alexnet.json"

VALUE_FLAGS = {"--onnx", "--loadEngine", "--saveEngine", "--shapes", "--minShapes", "--optShapes", "--maxShapes",
               "--iterations", "--warmUp", "--duration", "--exportProfile", "--exportLayerInfo",
               "--profilingVerbosity", "--avgRuns", "--percentile", "--device", "--workspace"}
BOOL_FLAGS = {"--fp16", "--int8", "--best", "--noTF32", "--separateProfileRun", "--skipInference", "--buildOnly",
              "--dumpProfile", "--dumpLayerInfo", "--verbose", "--useCudaGraph", "--noDataTransfers",
              "--useSpinWait"}
NOT_REPLAYED = {"--exportTimes", "--exportOutput", "--dumpOutput", "--loadInputs", "--timingCacheFile", "--calib",
                "--useDLACore", "--streams", "--plugins"}

ANCHORS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "LeakyRelu", "HardSwish", "HardSigmoid", "Tanh", "Elu", "Selu"}
SHUFFLES = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
SKIPPED = {"Constant", "Identity"}
BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Greater", "Less",
                "And", "Or", "PRelu"}
REFERENCE = {"conv": 115_605_504, "gemm": 512_000, "pool": 1_003_520, "other": 1_003_520, "reformat": 301_056}
TEMPLATE_KIND = {"conv": "conv", "gemm": "gemm", "pool": "pool", "other": "pool", "reformat": "reformat",
                 "shape": "shape"}
PRECISION_SCALE = {"fp32": 2.0, "fp16": 1.0, "int8": 0.6}
CHANNEL_MULTIPLE = {"fp32": 4, "fp16": 8, "int8": 16}
LAYER_TYPES = {"conv": "CaskConvolution", "pool": "CaskPooling", "gemm": "gemm", "reformat": "Reformat",
               "other": "kgen", "shape": "shape_call"}
FLOOR = 0.25


class FakeError(Exception):
    """A failure the fake reports as trtexec would: an ``[E]`` line and a non-zero exit."""


# ---------------------------------------------------------------------------------------- onnx reading
def _model_proto_class() -> Any:
    """onnx's ``ModelProto``: from its generated protobuf module alone (onnx's own import takes
    0.2 s, and profiling runs trtexec hundreds of times), or from onnx when already imported."""
    if "onnx" not in sys.modules:
        spec = importlib.util.find_spec("onnx")
        if spec is not None and spec.origin:
            path = Path(spec.origin).parent / "onnx_ml_pb2.py"
            pb_spec = importlib.util.spec_from_file_location("_fake_trtexec_onnx_pb2", path)
            if pb_spec is not None and pb_spec.loader is not None and path.is_file():
                module = importlib.util.module_from_spec(pb_spec)
                pb_spec.loader.exec_module(module)
                return module.ModelProto
    try:
        import onnx
    except ImportError as exc:
        raise FakeError(f"the fake trtexec needs onnx ({exc}); run it with the virtual environment's python3 "
                        "first on PATH") from None
    return onnx.ModelProto


def _attr(node: Any, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            if a.ints:
                return list(a.ints)
            if a.type == 1:
                return a.f
            if a.type == 3:
                return a.s.decode()
            return a.i
    return default


def _ints(tensor: Any) -> list[int]:
    if tensor.raw_data:
        n = len(tensor.raw_data) // (8 if tensor.data_type == 7 else 4)
        fmt = "q" if tensor.data_type == 7 else "i"
        return list(struct.unpack(f"<{n}{fmt}", tensor.raw_data))
    return list(tensor.int64_data) or list(tensor.int32_data)


def _shapes(model: Any, given: dict[str, list[int]]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Static shapes of every tensor (a small propagation over the ops block models and the
    examples use) and the integer constants."""
    shapes: dict[str, list[int]] = {}
    consts: dict[str, list[int]] = {}
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
        if init.data_type in (6, 7):
            consts[init.name] = _ints(init)
    for vi in model.graph.input:
        if vi.name not in shapes:
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
            shapes[vi.name] = given.get(vi.name, dims)
    for node in model.graph.node:
        ins = [shapes.get(i, []) for i in node.input]
        x = ins[0] if ins else []
        op = node.op_type
        out = list(x)
        if op == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            out = list(value.dims) if value is not None else []
            if value is not None and value.data_type in (6, 7):
                consts[node.output[0]] = _ints(value)
        elif op in ("Conv", "MaxPool", "AveragePool") and len(x) >= 3:
            k = list(ins[1][2:]) if op == "Conv" else _attr(node, "kernel_shape", [1] * (len(x) - 2))
            s = _attr(node, "strides", [1] * len(k))
            p = _attr(node, "pads", [0] * (2 * len(k)))
            d = _attr(node, "dilations", [1] * len(k))
            hw = [(x[2 + i] + p[i] + p[i + len(k)] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(len(k))]
            out = [x[0], ins[1][0] if op == "Conv" else x[1], *hw]
        elif op in ("GlobalAveragePool", "GlobalMaxPool"):
            out = x[:2] + [1] * (len(x) - 2)
        elif op == "Gemm" and len(ins) > 1 and x:
            w = ins[1]
            n = w[0] if _attr(node, "transB", 0) else w[-1]
            out = [x[1] if _attr(node, "transA", 0) else x[0], n]
        elif op == "MatMul" and len(ins) > 1 and x:
            out = x[:-1] + ins[1][-1:]
        elif op == "Flatten" and x:
            axis = _attr(node, "axis", 1) % max(len(x), 1)
            out = [math.prod(x[:axis]), math.prod(x[axis:])]
        elif op == "Reshape" and len(node.input) > 1 and node.input[1] in consts:
            target = [x[i] if v == 0 else v for i, v in enumerate(consts[node.input[1]])]
            if -1 in target:
                known = math.prod(v for v in target if v != -1)
                target[target.index(-1)] = math.prod(x) // max(known, 1)
            out = target
        elif op == "Slice" and len(node.input) >= 3 and all(i in consts for i in node.input[1:3]):
            starts, ends = consts[node.input[1]], consts[node.input[2]]
            axes = consts.get(node.input[3], list(range(len(starts)))) if len(node.input) > 3 else list(
                range(len(starts)))
            steps = consts.get(node.input[4], [1] * len(starts)) if len(node.input) > 4 else [1] * len(starts)
            for a, st, en, sp in zip(axes, starts, ends, steps):
                dim = out[a]
                st, en = max(min(st if st >= 0 else st + dim, dim), 0), max(min(en if en >= 0 else en + dim, dim), 0)
                out[a] = max(0, -(-(en - st) // sp))
        elif op == "Pad" and len(node.input) > 1 and node.input[1] in consts:
            pads = consts[node.input[1]]
            out = [v + pads[i] + pads[i + len(x)] for i, v in enumerate(x)]
        elif op == "Concat" and ins:
            axis = _attr(node, "axis", 0) % max(len(x), 1)
            out[axis] = sum(s[axis] for s in ins if len(s) > axis)
        elif op == "Transpose" and x:
            out = [x[p] for p in _attr(node, "perm", list(reversed(range(len(x)))))]
        elif op in BROADCASTING and len(ins) > 1 and all(ins):  # numpy broadcasting
            rank = max(len(s) for s in ins)
            padded = [[1] * (rank - len(s)) + s for s in ins]
            out = [max(col) for col in zip(*padded)]
        for name in node.output:
            shapes.setdefault(name, out)
    return shapes, consts


# ---------------------------------------------------------------------------------------- layers
def _pad(c: int, m: int) -> int:
    return -(-int(c) // m) * m


def _work(kind: str, node: Any, shapes: dict[str, list[int]], precision: str) -> float:
    m = CHANNEL_MULTIPLE[precision]
    x = shapes.get(node.input[0], []) if node.input else []
    y = shapes.get(node.output[0], [])
    if kind == "conv" and len(x) >= 3 and len(y) >= 3:
        w = shapes.get(node.input[1], [1, 1])
        group = _attr(node, "group", 1)
        per_group_in = 1 if group == x[1] and group > 1 else _pad(w[1], m)
        return y[0] * math.prod(y[2:]) * _pad(y[1], m) * per_group_in * math.prod(w[2:])
    if kind == "gemm" and x and y:
        return math.prod(y[:-1]) * _pad(y[-1], m) * _pad(x[-1], m)
    return float(math.prod(x) + math.prod(y)) if x or y else 0.0


def _geometry(kind: str, node: Any, shapes: dict[str, list[int]]) -> str:
    """What identifies a layer apart from its channel counts (the template choice)."""
    if node is None:
        return kind
    x = shapes.get(node.input[0], []) if node.input else []
    spatial = x[2:] if kind in ("conv", "pool") else x[:1]
    if kind == "conv" and len(node.input) > 1:
        kernel = shapes.get(node.input[1], [])[2:]
    else:
        kernel = _attr(node, "kernel_shape", [])
    rank = len(kernel)
    attrs = [_attr(node, "strides", [1] * rank), _attr(node, "pads", [0] * 2 * rank),
             _attr(node, "dilations", [1] * rank), _attr(node, "group", 1)]
    return f"{kind}:{node.op_type}:{kernel}:{attrs}:{spatial}"


def _chains(model: Any) -> list[dict[str, Any]]:
    """The model's nodes grouped as TensorRT fuses them, in execution order."""
    nodes = [n for n in model.graph.node if n.op_type not in SKIPPED]
    outputs = {o.name for o in model.graph.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    done: set[int] = set()
    prefix: dict[int, int] = {}
    groups: list[dict[str, Any]] = []
    for i, n in enumerate(nodes):
        if i in done:
            continue
        single = consumers.get(n.output[0], []) if n.output else []
        if n.op_type in SHUFFLES and len(single) == 1 and nodes[single[0]].op_type in ("Gemm", "MatMul") \
                and n.output[0] not in outputs:
            prefix[single[0]] = i
            continue
        if n.op_type in ANCHORS:
            chain, cur, adds = [i], n.output[0], 0
            while cur not in outputs and len(consumers.get(cur, [])) == 1:
                j = consumers[cur][0]
                op = nodes[j].op_type
                if op == "BatchNormalization" and len(chain) == 1:
                    pass
                elif op == "Add" and adds == 0:
                    adds += 1
                elif op not in ACTIVATIONS:
                    break
                chain.append(j)
                cur = nodes[j].output[0]
            done.update(chain)
            kind = "conv" if n.op_type in ("Conv", "ConvTranspose") else "gemm"
            groups.append({"kind": kind, "nodes": chain, "prefix": prefix.get(i)})
        else:
            done.add(i)
            groups.append({"kind": "pool" if n.op_type in POOLS else "other", "nodes": [i], "prefix": None})
    groups.sort(key=lambda g: max(g["nodes"]))
    for g in groups:
        g["nodes"] = [nodes[k] for k in g["nodes"]]
        g["prefix"] = nodes[g["prefix"]] if g["prefix"] is not None else None
    return groups


def build_layers(model: Any, precision: str, style: str, given: dict[str, list[int]]) -> list[dict[str, Any]]:
    """The engine layers of ``model``: name, kind, ONNX nodes, work, input and output tensors."""
    shapes, _ = _shapes(model, given)
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [v.name for v in model.graph.input if v.name not in inits]
    graph_outputs = [v.name for v in model.graph.output]
    reformat = precision != "fp32"
    layers: list[dict[str, Any]] = []

    def tensors(names: Any) -> list[tuple[str, list[int]]]:
        return [(t, shapes.get(t, [])) for t in names if t and t not in inits]

    for g_id, g in enumerate(_chains(model)):
        nodes = g["nodes"]
        names = [n.name or f"(Unnamed Layer* {g_id}) [{n.op_type}]" for n in nodes]
        ins = tensors(t for n in nodes for t in n.input if t not in {o for m in nodes for o in m.output})
        outs = tensors([nodes[-1].output[0]])
        if style == "myelin" and g["kind"] in ("conv", "gemm"):
            main = f"{names[0].replace('.', '_')}_myl{g_id}_{2 if g['prefix'] is not None else 1}"
            target = f"{{ForeignNode[{names[0]}...{names[-1]}]}}" if len(names) > 1 else main
        else:
            main = " + ".join(names)
            target = main
        here: list[dict[str, Any]] = []
        if style == "myelin" and g["kind"] in ("conv", "gemm"):
            here.append({"name": f"__mye{100 + 7 * g_id}_0_myl{g_id}_0", "kind": "shape", "onnx": [], "work": 0.0,
                         "geometry": "shape",
                         "inputs": [], "outputs": []})
        if g["prefix"] is not None:
            p = g["prefix"]
            pname = f"__myl_Res_myl{g_id}_1" if style == "myelin" else p.name
            here.append({"name": pname, "kind": "other", "onnx": [p.name], "work": _work("other", p, shapes, precision),
                         "geometry": _geometry("other", p, shapes),
                         "inputs": tensors(p.input), "outputs": tensors(p.output)})
        here.append({"name": main, "kind": g["kind"], "onnx": names, "node": nodes[0],
                     "work": _work(g["kind"], nodes[0], shapes, precision),
                     "geometry": _geometry(g["kind"], nodes[0], shapes), "inputs": ins, "outputs": outs})
        if reformat:
            for k, (t, dims) in enumerate(t for t in ins if t[0] in graph_inputs):
                here.insert(0, {"name": f"Reformatting CopyNode for Input Tensor {k} to {target}",
                                "kind": "reformat", "onnx": [], "work": 2.0 * math.prod(dims),
                                "geometry": f"reformat:in:{dims[2:]}", "inputs": [(t, dims)],
                                "outputs": [(f"Reformatted Input Tensor {k} to {target}", dims)]})
            for t, dims in outs:
                if t in graph_outputs:
                    here.append({"name": f"Reformatting CopyNode for Output Tensor 0 to {target}", "kind": "reformat",
                                 "onnx": [], "work": 2.0 * math.prod(dims), "geometry": f"reformat:out:{dims[2:]}",
                                 "inputs": [(t, dims)], "outputs": [(t, dims)]})
        layers += here
    return layers


def _templates(fixtures: Path) -> dict[str, list[dict[str, Any]]]:
    entries = json.loads((fixtures / PROFILE_TEMPLATE).read_text())[1:]
    kinds: dict[str, list[dict[str, Any]]] = {"conv": [], "pool": [], "gemm": [], "reformat": [], "shape": []}
    for e in entries:
        name = e["name"]
        if name.startswith("Reformatting"):
            if e["averageMs"] > 0:
                kinds["reformat"].append(e)
        elif name.startswith("dummy_shape_call"):
            kinds["shape"].append(e)
        elif name.startswith("__myl_"):
            kinds["gemm"].append(e)
        elif "Pool" in name:
            kinds["pool"].append(e)
        elif "Conv" in name:
            kinds["conv"].append(e)
    return kinds


def time_layers(layers: list[dict[str, Any]], fixtures: Path, precision: str) -> None:
    """Give each layer ``avg`` and ``median`` ms from its template entry, scaled by its work."""
    templates = _templates(fixtures)
    for layer in layers:
        kind = TEMPLATE_KIND[layer["kind"]]
        t = templates[kind][zlib.crc32(layer["geometry"].encode()) % len(templates[kind])]
        scale = 1.0 if kind == "shape" else FLOOR + (1 - FLOOR) * layer["work"] / REFERENCE[layer["kind"]]
        layer["avg"] = t["averageMs"] * scale * PRECISION_SCALE[precision]
        ratio = t.get("medianMs", t["averageMs"]) / t["averageMs"] if t["averageMs"] else 1.0
        layer["median"] = layer["avg"] * ratio


# ---------------------------------------------------------------------------------------- outputs
def _num(x: float) -> str:
    return f"{x:.6g}"


def export_profile(layers: list[dict[str, Any]], count: int) -> str:
    """``--exportProfile`` JSON in trtexec's leading-comma layout (10.x fields)."""
    total = sum(layer["avg"] for layer in layers) or 1.0
    rows = [f'  {{ "count" : {count} }}']
    for layer in layers:
        rows.append(f'{{ "name" : {json.dumps(layer["name"])}, "timeMs" : {_num(layer["avg"] * count)}, '
                    f'"averageMs" : {_num(layer["avg"])}, "medianMs" : {_num(layer["median"])}, '
                    f'"percentage" : {_num(100 * layer["avg"] / total)} }}')
    return "[\n" + "\n, ".join(rows) + "\n]\n"


def export_layer_info(layers: list[dict[str, Any]], fixtures: Path, detailed: bool, bindings: list[str],
                      precision: str, style: str) -> str:
    """``--exportLayerInfo`` JSON: names only, or the real detailed entries renamed."""
    if not detailed:
        return json.dumps({"Layers": [layer["name"] for layer in layers], "Bindings": bindings}, indent=0) + "\n"
    real = json.loads((fixtures / LAYER_TEMPLATE).read_text())["Layers"]
    by_type = {entry["LayerType"]: entry for entry in real}
    dtype = {"fp32": "Float", "fp16": "Half", "int8": "Int8"}[precision]
    sep = "\x1f" if style == "myelin" else "\x1e"
    out = []
    for layer in layers:
        entry = json.loads(json.dumps(by_type[LAYER_TYPES[layer["kind"]]]))
        entry["Name"] = layer["name"]
        entry["Inputs"] = [{"Name": n, "Dimensions": d, "Format/Datatype": dtype} for n, d in layer["inputs"]]
        entry["Outputs"] = [{"Name": n, "Dimensions": d, "Format/Datatype": dtype} for n, d in layer["outputs"]]
        entry["Metadata"] = sep.join(f"[ONNX Layer: {n}]" for n in layer["onnx"])
        node = layer.get("node")
        if layer["kind"] == "conv" and node is not None and layer["outputs"]:
            entry["OutMaps"] = layer["outputs"][0][1][1] if len(layer["outputs"][0][1]) > 1 else 0
            entry["Groups"] = _attr(node, "group", 1)
            for key, attr in (("Stride", "strides"), ("Dilation", "dilations")):
                if _attr(node, attr) is not None:
                    entry[key] = _attr(node, attr)
        out.append(entry)
    return json.dumps({"Layers": out, "Bindings": bindings}, indent=1) + "\n"


def dump_profile_table(layers: list[dict[str, Any]], count: int, prefix: str) -> str:
    """A ``--dumpProfile`` table in the 10.16 layout (generated: no real log profiles this model)."""
    total = sum(layer["avg"] for layer in layers) or 1.0
    lines = [f"{prefix}=== Profile ({count} iterations ) ===",
             f"{prefix}   Time(ms)     Avg.(ms)   Median(ms)   Time(%)   Layer"]
    for layer in layers:
        lines.append(f"{prefix}{layer['avg'] * count:11.2f}  {layer['avg']:11.4f}  {layer['median']:11.4f}  "
                     f"{100 * layer['avg'] / total:8.1f}   {layer['name']}")
    tot_med = sum(layer["median"] for layer in layers)
    lines.append(f"{prefix}{total * count:11.2f}  {total:11.4f}  {tot_med:11.4f}  {100.0:8.1f}   Total")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for raw in argv:
        key, eq, value = raw.partition("=")
        if key in NOT_REPLAYED:
            raise FakeError(f"{key} is a real trtexec flag this fake cannot replay")
        if key in VALUE_FLAGS and eq:
            args[key] = value
        elif key in BOOL_FLAGS and not eq:
            args[key] = ""
        else:
            raise FakeError(f"Unknown option: {key} {value}".rstrip())
    return args


def parse_shapes(spec: str) -> dict[str, list[int]]:
    shapes = {}
    for item in filter(None, spec.split(",")):
        name, _, dims = item.strip().rpartition(":")
        shapes[name.strip("'")] = [int(d) for d in dims.split("x")]
    return shapes


def fixtures_dir() -> Path:
    env = os.environ.get("HALP_FAKE_TRTEXEC_FIXTURES")
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "tensorrt"
    if not (path / PROFILE_TEMPLATE).is_file():
        raise FakeError(f"no TensorRT fixtures at {path} (set HALP_FAKE_TRTEXEC_FIXTURES)")
    return path


def _header(log: str) -> tuple[str, str]:
    """The real log's ``[TensorRT vNNNN] [bNN]`` tag and the timestamp prefix of its last line."""
    m = re.search(r"&&&& RUNNING TensorRT\.trtexec((?: \[[^\]]+\])*) #", log)
    stamp = re.findall(r"^(\[[^\]]+\] \[I\] )", log, re.MULTILINE)
    return (m.group(1) if m else ""), (stamp[-1] if stamp else "[I] ")


def run(argv: list[str]) -> int:
    calls = os.environ.get("HALP_FAKE_TRTEXEC_CALLS")
    if calls:
        with open(calls, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(argv) + "\n")
    if os.environ.get("HALP_FAKE_TRTEXEC_SLEEP_S"):
        time.sleep(float(os.environ["HALP_FAKE_TRTEXEC_SLEEP_S"]))
    args = parse_args(argv)
    fixtures = fixtures_dir()
    device = os.environ.get("HALP_FAKE_TRTEXEC_DEVICE", "h100")
    if device not in FAMILIES:
        raise FakeError(f"HALP_FAKE_TRTEXEC_DEVICE={device}: expected one of {', '.join(FAMILIES)}")
    family = FAMILIES[device]
    style = os.environ.get("HALP_FAKE_TRTEXEC_NAMES", family["names"])
    precision = "int8" if "--int8" in args or "--best" in args else "fp16" if "--fp16" in args else "fp32"
    build_only = "--skipInference" in args or "--buildOnly" in args
    mode = "build" if build_only else "load" if "--loadEngine" in args else "onnx"
    log = (fixtures / family.get(mode, family["onnx"])).read_text(encoding="utf-8")
    tag, stamp = _header(log)
    if os.environ.get("HALP_FAKE_TRTEXEC_EXIT"):
        raise FakeError("Engine could not be created from network (HALP_FAKE_TRTEXEC_EXIT)",
                        int(os.environ["HALP_FAKE_TRTEXEC_EXIT"]), tag)
    given = parse_shapes(args.get("--shapes", ""))
    if "--onnx" in args:
        path = Path(args["--onnx"])
        if not path.is_file():
            raise FakeError(f"Failed to parse onnx file {path}", 1, tag)
        data = path.read_bytes()
        model = _model_proto_class()()
        model.ParseFromString(data)
        layers = build_layers(model, precision, style, given)
        inits = {i.name for i in model.graph.initializer}
        bindings = [v.name for v in model.graph.input if v.name not in inits] + [v.name for v in model.graph.output]
        digest = hashlib.sha256(data).hexdigest()
    elif "--loadEngine" in args:
        engine = Path(args["--loadEngine"]).read_bytes().split(b"\n", 1)
        if engine[0] != b"halp-fake-trt-engine":
            raise FakeError(f"{args['--loadEngine']} is not an engine this fake saved", 1, tag)
        saved = json.loads(engine[1])
        layers, bindings, digest, precision = saved["layers"], saved["bindings"], saved["onnx_sha256"], saved[
            "precision"]
    else:
        raise FakeError("Model missing or format not recognized", 1, tag)
    time_layers(layers, fixtures, precision)
    count = int(args.get("--iterations", "0")) or 21071
    for key in ("--exportProfile", "--exportLayerInfo"):
        if key in args and not build_only:
            Path(args[key]).parent.mkdir(parents=True, exist_ok=True)
    if "--exportProfile" in args and not build_only:
        Path(args["--exportProfile"]).write_text(export_profile(layers, count), encoding="utf-8")
    if "--exportLayerInfo" in args:
        detailed = args.get("--profilingVerbosity") == "detailed"
        Path(args["--exportLayerInfo"]).write_text(
            export_layer_info(layers, fixtures, detailed, bindings, precision, style), encoding="utf-8")
    if "--saveEngine" in args:
        keep = [{k: v for k, v in layer.items() if k != "node"} for layer in layers]
        meta = {"onnx_sha256": digest, "precision": precision, "device": device, "log": family["onnx"],
                "layers": keep, "bindings": bindings}
        Path(args["--saveEngine"]).write_bytes(b"halp-fake-trt-engine\n" + json.dumps(meta).encode())
    if "--dumpProfile" in args and not build_only:
        table = dump_profile_table(layers, count, stamp)
        cut = log.rfind("&&&& PASSED")
        log = log[:cut] + table + log[cut:] if cut >= 0 else log + table
    sys.stdout.write(log)
    return 0


def main(argv: list[str]) -> int:
    try:
        return run(argv)
    except FakeError as exc:
        message, code, tag = (list(exc.args) + [1, ""])[:3]
        sys.stdout.write(f"[E] {message}\n&&&& FAILED TensorRT.trtexec{tag} # trtexec {' '.join(argv)}\n")
        return int(code)
