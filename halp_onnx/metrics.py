"""Parameter and multiply-accumulate counts of ONNX nodes (static shapes)."""
from __future__ import annotations

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
            return int(np.prod(out)) * int(np.prod(w[1:]))
        x = shapes.get(node.input[0])
        return int(np.prod(x)) * int(np.prod(w[1:])) if x else 0
    if node.op_type == "Gemm":
        a = shapes.get(node.input[0])
        if a is None:
            return 0
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return int(np.prod(out)) * int(k)
    if node.op_type == "MatMul":
        a = shapes.get(node.input[0])
        return int(np.prod(out)) * int(a[-1]) if a else 0
    return 0


def model_params(model: onnx.ModelProto) -> int:
    """Number of float parameters (initializer elements)."""
    return int(sum(int(np.prod(i.dims)) for i in model.graph.initializer
                   if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                      onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)))
