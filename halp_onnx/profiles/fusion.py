"""Which ops share a kernel on a GPU graph compiler (TensorRT): the blocks a ``trt-*`` target prices.

TensorRT fuses a convolution or matrix product with the chain of point-wise ops after it (bias,
activation, SiLU's ``x * sigmoid(x)``, erf-GELU, a layer scale, the residual add) into one kernel, and
its Myelin backend generates one kernel for each connected region of point-wise, reduction (softmax,
layer normalisation) and layout ops, attention's activation x activation products included (the
fused multi-head attention). Concatenations are eliminated: their producers write in place. Which op
does what is the op table's ``gpu`` facet (:func:`halp_onnx.ops.table.gpu_fusion`); this module only
walks the graph.

A fused region reads its external inputs and writes its escaping outputs once, so it costs one launch
plus those bytes; the tensors inside it never reach memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import onnx

from ..ops.table import MATRIX_ANCHOR_OPS, GpuFusion, Latency, gpu_fusion, latency_role

STYLES = ("ort", "tensorrt")
_RESIDUAL_OPS = ("Add", "Sum")
_AFFINE_OPS = ("Add", "Sub", "Mul", "Div")
# ops of a region that run inside the generated kernel (SHUFFLE-only regions are a copy kernel)
_COMPUTE = (GpuFusion.POINTWISE, GpuFusion.REDUCTION)


def _pointwise(node: onnx.NodeProto) -> bool:
    return not node.domain and gpu_fusion(node.op_type) is GpuFusion.POINTWISE


def epilogue(node: onnx.NodeProto, readers: Mapping[str, Sequence[onnx.NodeProto]], outputs: set[str],
             constants: Mapping[str, object] | set[str]) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """The point-wise ops TensorRT fuses into the kernel of ``node`` (a Conv / Gemm / MatMul).

    The region grows over readers whose every non-constant input is already in it (one residual
    ``Add`` may bring in an outside tensor), then shrinks from its end until exactly one of its
    tensors is read outside (the block's output). Returns (the ops as the kernel runs them, the fused
    node names in order, the output tensor). Ops with only constant operands besides the region (bias,
    scale, BatchNormalization) fold into the weights or the epilogue's constants and are not listed;
    a binary op between two region tensors (``x * sigmoid(x)``) is listed as itself, an outside input
    as ``Add`` (the residual)."""
    start = node.output[0]
    tensors = {start}
    added: list[onnx.NodeProto] = []
    taken: set[int] = set()
    residual_used = False
    changed = True
    while changed:
        changed = False
        for t in list(tensors):
            if t in outputs:
                continue
            for r in readers.get(t, ()):
                if id(r) in taken or not _pointwise(r) or not r.output:
                    continue
                ext = [i for i in r.input if i and i not in tensors and i not in constants]
                residual = (not residual_used and r.op_type in _RESIDUAL_OPS and len(ext) == 1)
                if ext and not residual:
                    continue
                residual_used = residual_used or residual
                added.append(r)
                taken.add(id(r))
                tensors.update(o for o in r.output if o)
                changed = True
    # shrink until one tensor escapes and it is the last one produced
    while True:
        inside = {id(n) for n in added}
        produced = [start] + [o for n in added for o in n.output if o]
        escaping = [t for t in produced
                    if t in outputs or any(id(r) not in inside for r in readers.get(t, ()))]
        if len(escaping) <= 1 and (not escaping or escaping[0] == produced[-1]):
            break
        added.pop()
    if not added:
        return (), (), start
    region = {start} | {o for n in added for o in n.output}
    ops: list[str] = []
    for n in added:
        others = [i for i in n.input if i and i not in constants]
        if latency_role(n.op_type) is Latency.NORM:
            continue  # folded into the weights
        if n.op_type in _AFFINE_OPS and len(others) <= 1:
            continue  # bias / scale by a constant: part of the epilogue's constants
        if n.op_type in _RESIDUAL_OPS and any(i not in region for i in others):
            ops.append("Add")
        else:
            ops.append(n.op_type)
    return tuple(ops), tuple(n.name for n in added), added[-1].output[0]


@dataclass(frozen=True)
class Region:
    """One generated kernel: its nodes (graph order), the outside tensors it reads and those it writes."""

    nodes: tuple[str, ...]
    ops: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    computes: bool  # runs point-wise / reduction maths (else a layout copy)


def _fusable(node: onnx.NodeProto, constants) -> bool:
    if node.domain or not node.output:
        return False
    if node.op_type in MATRIX_ANCHOR_OPS:  # activation x activation (attention): the fused MHA kernel
        return len(node.input) > 1 and node.input[1] not in constants
    return gpu_fusion(node.op_type) in (*_COMPUTE, GpuFusion.SHUFFLE)


def regions(graph: onnx.GraphProto, skip: set[str], constants, outputs: set[str]) -> list[Region]:
    """The connected regions of fusable ops not in ``skip`` (already fused into a GEMM-like kernel)."""
    nodes = [n for n in graph.node if n.name not in skip and _fusable(n, constants)]
    parent = list(range(len(nodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    for i, n in enumerate(nodes):
        for t in n.input:
            j = producer.get(t)
            if j is not None:
                parent[find(i)] = find(j)
    members: dict[int, list[int]] = {}
    for i in range(len(nodes)):
        members.setdefault(find(i), []).append(i)
    readers: dict[str, list[int]] = {}
    for n_i, n in enumerate(graph.node):
        for t in n.input:
            readers.setdefault(t, []).append(n_i)
    index = {id(n): k for k, n in enumerate(graph.node)}
    out: list[Region] = []
    for idx in sorted(members.values(), key=lambda m: index[id(nodes[m[0]])]):
        group = [nodes[i] for i in idx]
        inside = {index[id(n)] for n in group}
        produced = [o for n in group for o in n.output if o]
        made = set(produced)
        ins: list[str] = []
        for n in group:
            for t in n.input:
                if t and t not in made and t not in constants and t not in ins:
                    ins.append(t)
        escaping = [t for t in produced if t in outputs or any(r not in inside for r in readers.get(t, ()))]
        computes = any(n.op_type in MATRIX_ANCHOR_OPS or gpu_fusion(n.op_type) in _COMPUTE for n in group)
        if not computes and all(latency_role(n.op_type) is Latency.FREE for n in group):
            continue  # views only (Reshape, Squeeze, ...): no kernel
        out.append(Region(tuple(n.name for n in group), tuple(n.op_type for n in group), tuple(ins),
                          tuple(escaping), computes))
    return out
