"""Helpers the hand-built graph tests share (test_graphs_cnn, test_graphs_transformer, test_patterns,
test_gpu_fusion): node names from the builder's tensor names, the group a tensor's channels belong to,
small constants, SiLU."""
from __future__ import annotations

import numpy as np

from halp_onnx.builder import GraphBuilder


def node_of(tensor: str) -> str:
    """The builder names a node's output '<node>_out' (or '<node>_out<i>')."""
    return tensor.rsplit("_out", 1)[0]


def group_of(analysis, tensor: str):
    """The one channel group whose channels a tensor carries."""
    ids = analysis.channels_of(tensor)
    assert ids is not None, f"{tensor} is not tracked"
    groups = set(ids[:, 0].tolist())
    assert len(groups) == 1, f"{tensor} carries channels of groups {groups}"
    return analysis.groups[groups.pop()]


def i64(b: GraphBuilder, values, base: str = "c") -> str:
    return b.const(np.array(values, np.int64), base)


def small(b: GraphBuilder, shape, scale: float = 0.1, offset: float = 0.0) -> str:
    return b.const((offset + scale * b.rng.standard_normal(shape)).astype(np.float32))


def silu(b: GraphBuilder, x: str) -> str:
    return b.op("Mul", [x, b.op("Sigmoid", [x])])
