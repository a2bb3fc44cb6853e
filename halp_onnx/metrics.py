"""Parameter and multiply-accumulate counts of ONNX nodes (static shapes)."""
from __future__ import annotations

import math

import numpy as np
import onnx


def node_macs(node: onnx.NodeProto, shapes: dict) -> int:
    """MACs of one node at the model's static shapes; 0 for ops that do no multiply-accumulate."""
    out = shapes.get(node.output[0]) if node.output else None
    if out is None:
        return 0
    if node.op_type in ("Conv", "ConvTranspose"):
        w = shapes.get(node.input[1])
        if w is None:
            return 0
        if node.op_type == "Conv":
            # every output element reads (c_in / group) * kernel inputs
            return math.prod(out) * math.prod(w[1:])
        x = shapes.get(node.input[0])
        return math.prod(x) * math.prod(w[1:]) if x else 0
    if node.op_type == "Gemm":
        a = shapes.get(node.input[0])
        if a is None:
            return 0
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return math.prod(out) * int(k)
    if node.op_type == "MatMul":
        a = shapes.get(node.input[0])
        return math.prod(out) * int(a[-1]) if a else 0
    return 0


FLOAT_TYPES = frozenset(getattr(onnx.TensorProto, name) for name in (
    "FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
    "FLOAT4E2M1", "FLOAT8E8M0") if hasattr(onnx.TensorProto, name))
# numpy names of the float types numpy itself lacks (ml_dtypes arrays, as onnx's to_array returns them)
_EXTRA_FLOAT_NAMES = frozenset({"bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
                                "float4_e2m1fn", "float8_e8m0fnu"})


def is_parameter(value: np.ndarray) -> bool:
    """A constant counts as parameters when its elements are floats (any width: bfloat16, float16,
    float32, float64, float8); integer constants are shapes, indices or quantized codes."""
    dtype = np.asarray(value).dtype
    return dtype.kind == "f" or dtype.name in _EXTRA_FLOAT_NAMES


def param_count(value: np.ndarray) -> int:
    """Parameters in a constant: its number of elements (never bytes) if float, else 0."""
    return int(np.asarray(value).size) if is_parameter(value) else 0


def model_params(model: onnx.ModelProto) -> int:
    """Number of float parameters (initializer elements, whatever the float width)."""
    return int(sum(math.prod(int(d) for d in i.dims) for i in model.graph.initializer if i.data_type in FLOAT_TYPES))
