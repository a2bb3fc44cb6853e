"""Helpers the hand-built graph tests share (test_graphs_cnn, test_graphs_transformer, test_patterns,
test_gpu_fusion): node names from the builder's tensor names, the group a tensor's channels belong to,
small constants, SiLU, a classifier head, and prune-rewrite-verify."""
from __future__ import annotations

import numpy as np
import onnx

from halp_onnx import inspect
from halp_onnx.builder import GraphBuilder
from halp_onnx.passes.rewrite import rewrite
from halp_onnx.passes.verify import compare, verify


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


def finish(b: GraphBuilder, x: str, c: int) -> onnx.ModelProto:
    """The model with a classifier head on ``x`` (``c`` channels): global average pool, flatten, a Gemm
    to 5 classes, graph output ``y``."""
    y = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [y, b.weight((5, c)), b.const(np.zeros(5, np.float32))], ["y"],
                                         name="head", transB=1))
    b.output("y")
    return b.model()


def prune_and_check(model: onnx.ModelProto, drop: dict[int, list[int]] | None = None, seed: int = 0, *,
                    at_least_one: bool = False, input_sensitive: bool = False):
    """Remove the given channels (default: a random third of every prunable group; ``at_least_one``: one
    channel even from small groups), rewrite, check, and verify against the masked reference, which must
    differ from the dense model (so the check is not vacuous); ``input_sensitive``: the outputs must change
    with the inputs too."""
    loaded, analysis = inspect(model)
    rng = np.random.default_rng(seed)
    keep = {}
    for g in analysis.prunable:
        if drop is not None:
            removed = set(drop.get(g.id, []))
        else:
            n = max(1, g.size // 3) if at_least_one else g.size // 3
            removed = set(rng.choice(g.size, size=n, replace=False).tolist()) if g.size > 1 else set()
        keep[g.id] = [i for i in range(g.size) if i not in removed]
    result = rewrite(loaded, analysis, keep)
    onnx.checker.check_model(result.model, full_check=True)
    check = verify(loaded, analysis, result.kept, result.model)
    assert check.passed and check.max_rel_error < 1e-4 and (check.input_sensitive or not input_sensitive)
    if not result.kept.all():
        assert not compare(loaded.model, result.model, rtol=1e-4).passed
    return loaded, analysis, result
