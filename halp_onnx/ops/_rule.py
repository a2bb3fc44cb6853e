"""Small helpers shared by the channel rules of the op table's modules."""
from __future__ import annotations

import numpy as np
import onnx


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def ints_arg(node: onnx.NodeProto, ctx, input_index: int, attr: str, input_since: int):
    """An int list given as attribute (older opsets) or constant input (newer); None if absent.

    Raises LookupError when the input exists but is computed at runtime.
    """
    if ctx.opset >= input_since:
        if len(node.input) > input_index and node.input[input_index]:
            value = ctx.const(node.input[input_index])
            if value is None:
                raise LookupError(node.input[input_index])
            return [int(v) for v in np.asarray(value).reshape(-1)]
        return None
    value = ctx.attr(node, attr)
    return None if value is None else [int(v) for v in value]


def who(node: onnx.NodeProto) -> str:
    return f"node '{node.name}' ({node.op_type})"
