"""The op table: everything halp-onnx knows about an ONNX op, one entry per (domain, op type, opset range).

Each :class:`OpEntry` carries the facets the stages need:

* ``channels``: how channels flow through the op (propagate and couple channel labels, say which
  constants follow the channels, or freeze them with a reason) - read by the channel-group pass;
* ``rewrite``: how the rewrite pass updates the op's channel-dependent attributes or constant inputs
  (None: nothing to update beyond the sliced initializers);
* ``latency``: what the latency model makes of it (:class:`Latency`);
* ``torch``: its lowering in the torch bridge, ``"family:key"`` naming ``LOWERINGS[key]`` in
  ``halp_onnx.torch.lower.<family>`` (resolved lazily: the core never imports torch).

An entry covers the op's schema versions ``since`` .. ``until`` (inclusive; None: open). A node is
resolved through ``onnx.defs``: its schema version at the model's opset picks the entry. Adding an op
is one entry here (plus, for the torch facet, its lowering function in the family module).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import onnx
import onnx.defs

from . import elementwise, layout, linear, normalization


class Latency(str, enum.Enum):
    """What the latency model makes of an op."""

    ANCHOR = "anchor"  # GEMM-like kernel (Conv, Gemm, MatMul with constant weight): a block of its own
    ACTIVATION = "activation"  # fusable into the epilogue of the anchor before it, else memory-bound
    NORM = "norm"  # folded into the weights right after an anchor (BatchNormalization), else memory-bound
    RESIDUAL = "residual"  # fusable as the anchor's bias / residual add, else memory-bound
    POOL = "pool"  # memory-bound pooling over spatial windows
    MEMORY = "memory"  # memory-bound element-wise / data movement
    FREE = "free"  # no kernel of its own (views, shape reads, identity)


class GpuFusion(str, enum.Enum):
    """What a GPU graph compiler (TensorRT's layer fusions and the kernels Myelin generates) makes of an
    op: which neighbours it shares one kernel with."""

    POINTWISE = "pointwise"  # one generated kernel with its pointwise neighbours; also a GEMM-like kernel's epilogue
    REDUCTION = "reduction"  # one generated kernel with its neighbours (softmax, normalisation), not an epilogue
    SHUFFLE = "shuffle"  # a layout change folded into the kernels around it
    ELIMINATED = "eliminated"  # no kernel: its producers write into its output in place (concatenation)
    KERNEL = "kernel"  # a kernel of its own


# the GPU facet of an entry that does not name one, from its latency facet
_GPU_BY_ROLE = {Latency.ANCHOR: GpuFusion.KERNEL, Latency.ACTIVATION: GpuFusion.POINTWISE,
                Latency.NORM: GpuFusion.POINTWISE, Latency.RESIDUAL: GpuFusion.POINTWISE,
                Latency.POOL: GpuFusion.KERNEL, Latency.MEMORY: GpuFusion.KERNEL, Latency.FREE: GpuFusion.SHUFFLE}


@dataclass(frozen=True)
class OpEntry:
    op_type: str
    domain: str = ""
    since: int = 1
    until: int | None = None
    channels: Callable | None = None  # (node, AnalysisContext) -> None
    rewrite: Callable | None = None  # (node, RewriteContext) -> None
    latency: Latency = Latency.MEMORY
    torch: str | None = None  # "family:key" in halp_onnx.torch.lower
    gpu: GpuFusion | None = None  # None: from the latency facet (_GPU_BY_ROLE)

    def covers(self, version: int) -> bool:
        return self.since <= version and (self.until is None or version <= self.until)

    @property
    def key(self) -> str:
        dom = f"{self.domain}::" if self.domain else ""
        return f"{dom}{self.op_type}@{self.since}" + (f"-{self.until}" if self.until is not None else "+")


def _ops(names: Iterable[str], **facets) -> list[OpEntry]:
    return [OpEntry(name, **facets) for name in names]


_BROADCAST = elementwise.analyze_broadcast

# ops the table knows (channels, latency) that the torch bridge does not lower (torch=None)
_NO_TORCH = frozenset({
    "Shrink", "Asin", "Acos", "Sinh", "Cosh", "IsInf", "QuantizeLinear", "DequantizeLinear", "BitShift",
    "GlobalLpPool", "MaxRoiPool", "Hardmax", "MeanVarianceNormalization", "LRN"})


def _torch(family: str, op: str) -> str | None:
    return None if op in _NO_TORCH else f"{family}:{op}"


def _versions(name: str, family: str, splits: tuple[int, ...], **facets) -> list[OpEntry]:
    """One entry per torch-lowering version range of ``name``: [1, s0), [s0, s1), ..., [sN, inf),
    each with the same channel / rewrite / latency facets and torch ``family:name@since``."""
    bounds = (1, *splits)
    return [OpEntry(name, since=lo, until=(hi - 1 if hi is not None else None), torch=f"{family}:{name}@{lo}",
                    **facets)
            for lo, hi in zip(bounds, (*splits, None))]


# Reduce ops: axes move from an attribute to an input at this schema version
_REDUCE_AXES_INPUT = {"ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18, "ReduceSum": 13, "ReduceProd": 18,
                      "ReduceL1": 18, "ReduceL2": 18, "ReduceLogSum": 18, "ReduceLogSumExp": 18, "ReduceSumSquare": 18}

ENTRIES: tuple[OpEntry, ...] = tuple([
    # ---- GEMM-like anchors: create channels (producers) and reduce over input channels (consumers)
    OpEntry("Conv", channels=linear.analyze_conv, rewrite=linear.rewrite_conv, latency=Latency.ANCHOR,
            torch="conv:Conv"),
    OpEntry("ConvTranspose", channels=linear.analyze_conv, rewrite=linear.rewrite_conv, latency=Latency.ANCHOR,
            torch="conv:ConvTranspose"),
    OpEntry("Gemm", channels=linear.analyze_gemm, latency=Latency.ANCHOR, torch="linear:Gemm"),
    OpEntry("MatMul", channels=linear.analyze_matmul, latency=Latency.ANCHOR, torch="linear:MatMul"),
    # ---- element-wise with numpy broadcasting: channels pass through, coupled inputs merge
    OpEntry("Relu", channels=_BROADCAST, latency=Latency.ACTIVATION, torch="elementwise:Relu"),
    OpEntry("Clip", until=10, channels=_BROADCAST, latency=Latency.ACTIVATION, torch="elementwise:Clip@1"),
    OpEntry("Clip", since=11, channels=_BROADCAST, latency=Latency.ACTIVATION, torch="elementwise:Clip@11"),
    *[OpEntry(op, channels=_BROADCAST, latency=Latency.ACTIVATION, torch=f"elementwise:{op}")
      for op in ("LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh")],
    OpEntry("Gelu", channels=_BROADCAST, latency=Latency.ACTIVATION, torch="elementwise:Gelu"),
    OpEntry("Gelu", domain="com.microsoft", channels=None, latency=Latency.ACTIVATION, torch="elementwise:Gelu@ms"),
    *[OpEntry(op, channels=_BROADCAST, torch=_torch("elementwise", op), gpu=GpuFusion.POINTWISE) for op in (
        "Elu", "Selu", "Celu", "Erf", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Shrink",
        "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
        "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Sign", "Not", "IsNaN", "IsInf",
        "QuantizeLinear", "DequantizeLinear",
        "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "PRelu", "Where", "Equal", "Less",
        "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift")],
    OpEntry("Add", channels=_BROADCAST, latency=Latency.RESIDUAL, torch="elementwise:Add"),
    *[OpEntry(op, channels=_BROADCAST, latency=Latency.FREE, torch=f"{family}:{op}") for op, family in (
        ("Dropout", "misc"), ("Identity", "misc"), ("Cast", "elementwise"), ("CastLike", "elementwise"))],
    # ---- normalisation, pooling, reductions, channel mixers
    OpEntry("BatchNormalization", channels=normalization.analyze_batch_norm, latency=Latency.NORM,
            torch="norm:BatchNormalization"),
    OpEntry("InstanceNormalization", channels=normalization.analyze_instance_norm,
            torch="norm:InstanceNormalization", gpu=GpuFusion.REDUCTION),
    *[OpEntry(op, channels=normalization.analyze_spatial, latency=Latency.POOL, torch=_torch("pool", op)) for op in (
        "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool")],
    OpEntry("Resize", until=10, channels=normalization.analyze_spatial, rewrite=normalization.rewrite_resize,
            torch="pool:Resize@10"),
    OpEntry("Resize", since=11, channels=normalization.analyze_spatial, rewrite=normalization.rewrite_resize,
            torch="pool:Resize@11"),
    OpEntry("Upsample", channels=normalization.analyze_spatial, torch="pool:Upsample"),
    *[e for op, since in _REDUCE_AXES_INPUT.items()
      for e in _versions(op, "reduce", (since,), channels=normalization.analyze_reduce, gpu=GpuFusion.REDUCTION)],
    *[OpEntry(op, channels=normalization.analyze_reduce, torch=f"reduce:{op}") for op in ("ArgMax", "ArgMin")],
    *[e for op in ("Softmax", "LogSoftmax")
      for e in _versions(op, "norm", (13,), channels=normalization.analyze_axis_mixer, gpu=GpuFusion.REDUCTION)],
    *[OpEntry(op, channels=normalization.analyze_axis_mixer, torch=_torch("norm", op)) for op in (
        "Hardmax", "MeanVarianceNormalization", "LpNormalization", "LRN", "DepthToSpace", "SpaceToDepth",
        "CumSum")],
    OpEntry("LayerNormalization", channels=normalization.analyze_layer_norm, torch="norm:LayerNormalization",
            gpu=GpuFusion.REDUCTION),
    OpEntry("GroupNormalization", channels=normalization.analyze_group_norm,
            rewrite=normalization.rewrite_group_norm, torch="norm:GroupNormalization", gpu=GpuFusion.REDUCTION),
    # ---- layout: reshapes, concatenation, slicing, gathering
    *_versions("Reshape", "shape", (5,), channels=layout.analyze_reshape, rewrite=layout.rewrite_reshape,
               latency=Latency.FREE),
    OpEntry("Flatten", channels=layout.analyze_reshape, latency=Latency.FREE, torch="shape:Flatten"),
    *[e for op in ("Squeeze", "Unsqueeze")
      for e in _versions(op, "shape", (13,), channels=layout.analyze_reshape, latency=Latency.FREE)],
    OpEntry("Transpose", channels=layout.analyze_transpose, torch="shape:Transpose", gpu=GpuFusion.SHUFFLE),
    OpEntry("Concat", channels=layout.analyze_concat, torch="shape:Concat", gpu=GpuFusion.ELIMINATED),
    OpEntry("Split", channels=layout.analyze_split, rewrite=layout.rewrite_split, torch="shape:Split",
            gpu=GpuFusion.SHUFFLE),
    *_versions("Slice", "shape", (10,), channels=layout.analyze_slice, rewrite=layout.rewrite_slice,
               gpu=GpuFusion.SHUFFLE),
    *_versions("Pad", "shape", (11,), channels=layout.analyze_pad, rewrite=layout.rewrite_pad),
    OpEntry("Gather", channels=linear.analyze_gather, rewrite=layout.rewrite_gather, torch="index:Gather",
            gpu=GpuFusion.SHUFFLE),
    OpEntry("Expand", channels=layout.analyze_expand_tile, rewrite=layout.rewrite_expand, torch="shape:Expand",
            gpu=GpuFusion.SHUFFLE),
    OpEntry("Tile", channels=layout.analyze_expand_tile, torch="shape:Tile"),
    *[OpEntry(op, channels=layout.analyze_shape_only, latency=Latency.FREE, torch=f"shape:{op}")
      for op in ("Shape", "Size")],
    # ---- torch lowering only (no channel rule: their channels are frozen)
    *[OpEntry(op, torch=f"elementwise:{op}") for op in ("BitwiseAnd", "BitwiseOr")],
    *[OpEntry(op, torch=f"linear:{op}") for op in ("Einsum", "Trilu")],
    OpEntry("TopK", since=10, torch="reduce:TopK"),
    *[OpEntry(op, torch=f"shape:{op}") for op in ("ConstantOfShape", "Range")],
    *[OpEntry(op, torch=f"index:{op}") for op in ("GatherElements", "GatherND", "ScatterND", "ScatterElements")],
    OpEntry("Constant", torch="misc:Constant"),
])


# ---------------------------------------------------------------------------------------- lookup
def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


_BY_OP: dict[tuple[str, str], list[OpEntry]] = {}
for _e in ENTRIES:
    _BY_OP.setdefault((_norm_domain(_e.domain), _e.op_type), []).append(_e)
for _key, _entries in _BY_OP.items():
    _entries.sort(key=lambda e: e.since)
    for _a, _b in zip(_entries, _entries[1:]):
        if _a.until is None or _a.until >= _b.since:
            raise RuntimeError(f"op table: {_a.key} overlaps {_b.key}")


@lru_cache(maxsize=None)
def schema_version(domain: str, op_type: str, opset: int) -> int:
    """The version of ``op_type``'s schema in force at ``opset`` (onnx.defs); ``opset`` itself for ops
    onnx does not define (custom domains)."""
    try:
        return int(onnx.defs.get_schema(op_type, opset, _norm_domain(domain)).since_version)
    except Exception:  # onnx.defs.SchemaError: unknown op or domain
        return opset


def entry_for(domain: str, op_type: str, opset: int | None) -> OpEntry | None:
    """The entry for ``domain::op_type`` at the model's ``opset`` for that domain (None: the newest)."""
    entries = _BY_OP.get((_norm_domain(domain), op_type))
    if not entries:
        return None
    if opset is None:
        return entries[-1]
    version = schema_version(_norm_domain(domain), op_type, int(opset))
    for e in entries:
        if e.covers(version):
            return e
    return None


def rule_for(node: onnx.NodeProto, opset: int) -> OpEntry | None:
    """The entry of a node whose channel flow halp-onnx knows, or None (its channels are then frozen)."""
    if _norm_domain(node.domain) != "":
        return None
    entry = entry_for("", node.op_type, opset)
    return entry if entry is not None and entry.channels is not None else None


def ops_with(latency: Latency) -> tuple[str, ...]:
    """Op types (default domain) whose latency facet is ``latency``, in table order."""
    seen: dict[str, None] = {}
    for e in ENTRIES:
        if e.latency is latency and not e.domain:
            seen.setdefault(e.op_type)
    return tuple(seen)


def latency_role(op_type: str) -> Latency:
    """The latency facet of a default-domain op (MEMORY for ops the table does not list)."""
    entries = _BY_OP.get(("", op_type))
    return entries[-1].latency if entries else Latency.MEMORY


def gpu_fusion(op_type: str) -> GpuFusion:
    """The GPU facet of a default-domain op (a kernel of its own for ops the table does not list)."""
    entries = _BY_OP.get(("", op_type))
    if not entries:
        return GpuFusion.KERNEL
    e = entries[-1]
    return e.gpu if e.gpu is not None else _GPU_BY_ROLE[e.latency]


ANCHOR_OPS: tuple[str, ...] = ops_with(Latency.ANCHOR)  # ("Conv", "ConvTranspose", "Gemm", "MatMul")
SPATIAL_ANCHOR_OPS: tuple[str, ...] = ("Conv", "ConvTranspose")  # anchors with kernels over spatial axes
MATRIX_ANCHOR_OPS: tuple[str, ...] = tuple(op for op in ANCHOR_OPS if op not in SPATIAL_ANCHOR_OPS)
FUSABLE_ACTIVATIONS: tuple[str, ...] = ops_with(Latency.ACTIVATION)
