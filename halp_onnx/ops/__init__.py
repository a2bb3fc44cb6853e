"""The op table: what each ONNX op does to channels, in one place.

Each entry maps an op type to an :class:`OpRule` with an ``analyze`` function (propagate and couple
channel labels, say which constants follow the channels, block with a reason) and, where the op has
channel-dependent attributes or constant inputs, a ``rewrite`` function. Adding an op is one entry.
Rules that differ by opset read ``ctx.opset`` / ``rw.opset``.
"""
from __future__ import annotations

import onnx

from ._rule import OpRule
from . import elementwise, layout, linear, normalization

TABLE: dict[str, OpRule] = {}
for _module in (elementwise, linear, normalization, layout):
    for _op, _rule in _module.RULES.items():
        if _op in TABLE:
            raise RuntimeError(f"op {_op} registered twice")
        TABLE[_op] = _rule


def rule_for(node: onnx.NodeProto, opset: int) -> OpRule | None:
    """The rule for a node, or None when the op is unknown (its channels are then frozen)."""
    if node.domain not in ("", "ai.onnx"):
        return None
    rule = TABLE.get(node.op_type)
    if rule is None or opset < rule.since:
        return None
    return rule


__all__ = ["OpRule", "TABLE", "rule_for"]
