"""Timed blocks of a model: what a latency table is looked up with.

A *block* is what a runtime runs as one kernel: a Conv / ConvTranspose / Gemm / MatMul with the
element-wise ops it fuses (activation, and the residual Add), or one memory-bound op (pooling,
element-wise, concat...) whose cost grows with the channels it carries. Each block has a static
:class:`~halp_onnx.profiles.signature.BlockSignature` and channel counts ``(c_in, c_out)`` that follow
the channel groups: :func:`block_widths` gives them for any choice of kept channels, which is how the
knapsack prices a group's width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from ..passes.channel_groups import ChannelAnalysis
from ..passes.load import LoadedModel
from ..ops.table import (ANCHOR_OPS, MATRIX_ANCHOR_OPS, SPATIAL_ANCHOR_OPS, GpuFusion, Latency, gpu_fusion,
                         latency_role, ops_with)
from .fusion import STYLES, epilogue as trt_epilogue, regions as trt_regions
from .signature import BlockSignature

# the op table's latency facet: activations a runtime folds into the epilogue of the preceding GEMM-like
# kernel, pooling, and ops without a kernel of their own
FUSABLE_ACTIVATIONS = ops_with(Latency.ACTIVATION)
_POOL_OPS = ops_with(Latency.POOL)
_FREE_OPS = ops_with(Latency.FREE)


@dataclass(frozen=True)
class Block:
    """One timed unit: its anchor node, the fused nodes, the tensors whose widths give (c_in, c_out)."""

    node: str
    fused: tuple[str, ...]
    signature: BlockSignature
    in_tensor: str
    out_tensor: str
    c_in: int  # dense widths
    c_out: int


def _attr(node: onnx.NodeProto, key: str, default=None):
    for a in node.attribute:
        if a.name == key:
            return onnx.helper.get_attribute_value(a)
    return default


def _dtype(precision: str) -> str:
    return {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}[precision]


def model_blocks(loaded: LoadedModel, analysis: ChannelAnalysis, *, precision: str = "fp32",
                 fusion: str = "ort") -> list[Block]:
    """Every block of the model, GEMM-like ones with their fused epilogues, in graph order.

    ``fusion``: how the runtime groups ops into kernels. ``"ort"`` (onnxruntime): an anchor fuses a
    chain of single-reader ops (BatchNormalization, one activation, the residual Add) and every other
    op is a kernel of its own. ``"tensorrt"`` (:mod:`.fusion`): an anchor fuses the point-wise region
    after it (SiLU, erf-GELU, scales, the residual Add), the remaining point-wise / reduction / layout
    ops form one kernel per connected region (attention's products included), and concatenations are
    free."""
    if fusion not in STYLES:
        raise ValueError(f"model_blocks: fusion must be one of {', '.join(STYLES)}, got {fusion!r}")
    trt = fusion == "tensorrt"
    graph = loaded.model.graph
    shapes = loaded.shapes
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    fused_into: set[str] = set()
    blocks: list[Block] = []
    for node in graph.node:
        if node.name in fused_into or node.op_type in _FREE_OPS or not node.output:
            continue
        out = node.output[0]
        out_shape = shapes.get(out)
        in_shape = shapes.get(node.input[0]) if node.input else None
        if out_shape is None or in_shape is None:
            continue
        batch = int(in_shape[0]) if in_shape else 1
        if trt and (gpu_fusion(node.op_type) is not GpuFusion.KERNEL or (
                node.op_type in MATRIX_ANCHOR_OPS and node.input[1] not in loaded.constants)):
            continue  # priced with its region below (concatenations: written in place, free)
        if node.op_type in SPATIAL_ANCHOR_OPS and len(in_shape) >= 3:
            epilogue, fused, last = _anchor_epilogue(node, readers, outputs, loaded, trt)
            fused_into.update(fused)
            weight = shapes[node.input[1]]
            if weight is None:  # same exception type as indexing the unknown shape would raise
                raise TypeError(f"{node.op_type} {node.name}: weight {node.input[1]!r} has no static shape")
            k = tuple(int(d) for d in weight[2:])
            groups = int(_attr(node, "group", 1))
            if groups == 1:
                rule = "dense"
            elif groups == in_shape[1] and weight[1] == 1:
                rule = "depthwise"
            else:
                rule = f"grouped:{int(weight[0 if node.op_type == 'ConvTranspose' else 1])}"
            sig = BlockSignature(op=node.op_type, kernel=k, stride=tuple(_attr(node, "strides", [1] * len(k))),
                                 pads=tuple(_attr(node, "pads", [0] * 2 * len(k))),
                                 dilation=tuple(_attr(node, "dilations", [1] * len(k))), groups=rule,
                                 in_hw=tuple(int(d) for d in in_shape[2:]), batch=batch, dtype=_dtype(precision),
                                 epilogue=_kernel_ops(epilogue))
            blocks.append(Block(node.name, fused, sig, node.input[0], last, int(in_shape[1]), int(out_shape[1])))
        elif node.op_type in MATRIX_ANCHOR_OPS and node.input[1] in loaded.constants:
            epilogue, fused, last = _anchor_epilogue(node, readers, outputs, loaded, trt)
            fused_into.update(fused)
            rows = int(np.prod(in_shape[:-1])) // max(batch, 1) if node.op_type == "MatMul" else int(in_shape[0])
            sig = BlockSignature(op=node.op_type, kernel=(), stride=(), pads=(), dilation=(), groups="dense",
                                 in_hw=(max(rows, 1),), batch=batch if node.op_type == "MatMul" else 1,
                                 dtype=_dtype(precision), epilogue=_kernel_ops(epilogue))
            blocks.append(Block(node.name, fused, sig, node.input[0], last, int(in_shape[-1]), int(out_shape[-1])))
        elif analysis.labels.get(out) is not None and len(out_shape) >= 2:
            per_channel = int(np.prod(out_shape)) // max(int(np.prod(analysis.labels[out].ids.shape)), 1)
            per_channel = max(per_channel // max(batch, 1), 1)
            kind = "Pool" if node.op_type in _POOL_OPS else "Elementwise"
            kernel = tuple(_attr(node, "kernel_shape", [])) if kind == "Pool" else ()
            sig = BlockSignature(op=kind, kernel=kernel, stride=tuple(_attr(node, "strides", [1] * len(kernel))),
                                 pads=tuple(_attr(node, "pads", [0] * 2 * len(kernel))),
                                 dilation=(1,) * len(kernel), groups="depthwise",
                                 in_hw=tuple(int(d) for d in in_shape[2:]) if kind == "Pool" else (per_channel,),
                                 batch=batch, dtype=_dtype(precision), epilogue=(node.op_type,))
            width = int(analysis.labels[out].ids.size)
            blocks.append(Block(node.name, (), sig, out, out, width, width))
    if trt:
        blocks.extend(_region_blocks(loaded, analysis, fused_into, outputs, precision))
        order = {n.name: i for i, n in enumerate(graph.node)}
        blocks.sort(key=lambda b: order.get(b.node, len(order)))
    return blocks


def _anchor_epilogue(node, readers, outputs, loaded: LoadedModel, trt: bool):
    if trt:
        return trt_epilogue(node, readers, outputs, loaded.constants)
    return _epilogue(node, readers, outputs)


def _region_blocks(loaded: LoadedModel, analysis: ChannelAnalysis, fused_into: set[str], outputs: set[str],
                   precision: str) -> list[Block]:
    """One memory-bound block per generated kernel (:func:`.fusion.regions`): one launch plus the bytes
    of the tensors it reads from and writes to memory, priced as an element-wise op over the widest
    labelled of them (the ``Fused`` signature; its element count per channel carries the traffic)."""
    shapes = loaded.shapes
    blocks: list[Block] = []
    for reg in trt_regions(loaded.model.graph, fused_into, loaded.constants, outputs):
        sizes = {t: s for t in (*reg.inputs, *reg.outputs) if (s := shapes.get(t))}
        labelled = [t for t, s in sizes.items() if analysis.labels.get(t) is not None and len(s) >= 2]
        if not labelled or not reg.outputs:
            continue  # frozen: a constant of the model, as unlabelled memory-bound ops are
        rep = max(labelled, key=lambda t: math.prod(sizes[t]))
        batch = max(int(sizes[rep][0]), 1)
        width = int(analysis.labels[rep].ids.size)
        traffic = sum(math.prod(s) for s in sizes.values())
        per_channel = max(int(round(traffic / (2 * batch * max(width, 1)))), 1)
        kinds = tuple(sorted(set(reg.ops))) if reg.computes else ("Copy",)
        sig = BlockSignature(op="Elementwise", kernel=(), stride=(), pads=(), dilation=(), groups="depthwise",
                             in_hw=(per_channel,), batch=batch, dtype=_dtype(precision), epilogue=("Fused", *kinds))
        blocks.append(Block(reg.nodes[0], reg.nodes[1:], sig, rep, rep, width, width))
    return blocks


def orphan_signatures(sig: BlockSignature, fusion: str = "ort") -> tuple[BlockSignature, ...]:
    """What is left of a GEMM-like block whose input channels are all removed (its branch folded to a
    constant): its epilogue ops (the residual Add, the activation) run as element-wise ops over the
    output. Under TensorRT (``fusion="tensorrt"``) nothing: it folds the constant branch when it builds
    the engine and fuses the add of the constant into a neighbouring point-wise kernel. Empty for memory-bound blocks and blocks without
    an epilogue."""
    if sig.op not in ANCHOR_OPS or not sig.epilogue:
        return ()
    if fusion == "tensorrt":  # the add of a constant fuses into the kernel next to it
        return ()
    elems = 1
    for d in sig.out_hw():
        elems *= d
    return tuple(BlockSignature(op="Elementwise", kernel=(), stride=(), pads=(), dilation=(), groups="depthwise",
                                in_hw=(max(elems, 1),), batch=sig.batch, dtype=sig.dtype, epilogue=(op,))
                 for op in sig.epilogue)


def _kernel_ops(epilogue: tuple[str, ...]) -> tuple[str, ...]:
    """The epilogue as the kernel runs it: BatchNormalization is folded into the weights, so a model
    with BN nodes shares its tables with the same model exported with BN folded."""
    return tuple(op for op in epilogue if latency_role(op) is not Latency.NORM)


def _epilogue(node: onnx.NodeProto, readers, outputs) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """Follow single-reader chains of a residual Add and activations fused after a GEMM-like node."""
    ops: list[str] = []
    fused: list[str] = []
    tensor = node.output[0]
    while tensor not in outputs and len(readers.get(tensor, [])) == 1:
        nxt = readers[tensor][0]
        folded_norm = latency_role(nxt.op_type) is Latency.NORM and not ops  # runtimes fold it into the weights
        residual = (latency_role(nxt.op_type) is Latency.RESIDUAL
                    and all(latency_role(o) is Latency.NORM for o in ops))  # bias or residual
        activation = nxt.op_type in FUSABLE_ACTIVATIONS and not any(o in FUSABLE_ACTIVATIONS for o in ops)
        if not (folded_norm or residual or activation):
            break
        ops.append(nxt.op_type)
        fused.append(nxt.name)
        tensor = nxt.output[0]
    return tuple(ops), tuple(fused), tensor


def block_widths(analysis: ChannelAnalysis, kept: np.ndarray, block: Block) -> tuple[int, int]:
    """(c_in, c_out) of a block when ``kept`` (bool per channel) channels stay."""
    return _width(analysis, kept, block.in_tensor, block.c_in), _width(analysis, kept, block.out_tensor, block.c_out)


def _removed(analysis: ChannelAnalysis, kept: np.ndarray) -> list:
    """The removable groups ``kept`` keeps no channel of."""
    n = len(analysis.groups)
    alive = np.bincount(analysis.channel_group, weights=np.asarray(kept, dtype=np.float64), minlength=n) \
        if len(analysis.channel_group) else np.zeros(n)
    return [g for g in analysis.groups if g.removable and alive[g.id] == 0]


def vanished_nodes(analysis: ChannelAnalysis, kept: np.ndarray) -> set[str]:
    """The nodes that go with the groups ``kept`` removes entirely (a dropped Concat input's producers)."""
    return {n for g in _removed(analysis, kept) for n in g.vanishes}


def constant_nodes(analysis: ChannelAnalysis, kept: np.ndarray, blocks: Sequence[Block] = ()) -> set[str]:
    """:func:`vanished_nodes`, the producers of the groups that go with a removal (they compute
    constants, which a runtime folds away), and the ``blocks`` that read only such groups."""
    removed = _removed(analysis, kept)
    gone = {n for g in removed for n in g.vanishes}
    dead = {w for g in removed for w in g.shadow}
    for w in dead:
        gone.update(analysis.groups[w].producers)
    for b in blocks:
        lab = analysis.labels.get(b.in_tensor)
        ids = lab.flat[lab.flat >= 0] if lab is not None else np.zeros(0, dtype=np.int64)
        if dead and ids.size and set(np.unique(analysis.channel_group[ids]).tolist()) <= dead:
            gone.add(b.node)
    return gone


def _width(analysis: ChannelAnalysis, kept: np.ndarray, tensor: str, dense: int) -> int:
    lab = analysis.labels.get(tensor)
    if lab is None:
        return dense
    ids = lab.ids.reshape(lab.ids.shape[0], -1)[:, 0] if lab.ids.ndim > 1 else lab.ids
    if ids.size != dense:  # channels spread over other positions (flattened maps): count channels
        mask = np.where(lab.ids >= 0, kept[np.maximum(lab.ids, 0)], True)
        return int(round(dense * mask.mean()))
    return int(np.where(ids >= 0, kept[np.maximum(ids, 0)], True).sum())
