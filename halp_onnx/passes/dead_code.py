"""Nodes that die with a removed branch: every node whose outputs are read only by removed nodes (the
statistic ConvNeXt-V2's GRN takes over the channels of a branch, the constants feeding it). Shared by the
channel analysis (whether a group may go to zero) and the rewrite (what it drops). Also the graph's reader
maps and its residual junctions (for the refit and the block-wise descent)."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import onnx


def reader_names(graph: onnx.GraphProto) -> dict[str, list[str]]:
    """tensor -> names of the nodes that read it."""
    return {t: [n.name for n in nodes] for t, nodes in reader_nodes(graph).items()}


def reader_nodes(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """tensor -> the nodes that read it, in graph order."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    return readers


def dead_with(graph: onnx.GraphProto, removed: Iterable[str], *, keep: Iterable[str] = (),
              readers: Mapping[str, Sequence[str]] | None = None) -> set[str]:
    """``removed`` and every node (not in ``keep``) all of whose outputs are read, and read only, by nodes
    of that set; graph outputs are never dead. Walks back from the removed nodes' inputs."""
    readers = reader_names(graph) if readers is None else readers
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output if o}
    dead, kept = set(removed), set(keep)

    def dies(node: onnx.NodeProto) -> bool:
        outs = [o for o in node.output if o]
        return bool(outs) and all(o not in outputs and readers.get(o) and all(r in dead for r in readers[o])
                                  for o in outs)

    stack = [n for n in graph.node if n.name in dead]
    while stack:
        for i in stack.pop().input:
            p = producer.get(i)
            if p is not None and p.name not in dead and p.name not in kept and dies(p):
                dead.add(p.name)
                stack.append(p)
    return dead


def residual_junctions(model: onnx.ModelProto, shapes: dict | None) -> dict[str, tuple[str, str]]:
    """Output tensor -> (Add output, the Add's other input) for tensors read only by a two-input Add of
    two computed tensors of the same shape (a residual junction: the layer's output plus a skip)."""
    consts = {t.name for t in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                          for o in n.output}
    outputs = {o.name for o in model.graph.output}
    out: dict[str, tuple[str, str]] = {}
    for name, rs in reader_nodes(model.graph).items():
        if len(rs) != 1 or name in outputs:
            continue
        add = rs[0]
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
            continue
        a, b = add.input
        other = b if a == name else a
        if a == b or other in consts or other == "":
            continue
        if shapes is not None and (shapes.get(name) is None or shapes.get(name) != shapes.get(add.output[0])
                                   or shapes.get(other) != shapes.get(name)):
            continue
        out[name] = (add.output[0], other)
    return out
