"""The rule record and small helpers shared by the op table's modules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx


@dataclass(frozen=True)
class OpRule:
    analyze: Callable  # (node, AnalysisContext) -> None
    rewrite: Callable | None = None  # (node, RewriteContext) -> None
    since: int = 1  # first opset the rule understands


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
