"""Per-channel normalisation, pooling, reductions and the ops that mix channels."""
from __future__ import annotations

import numpy as np

from ..labels import Labels
from ._rule import ints_arg, norm_axis, who


def _per_channel(first_param: int, last_param: int):
    """BatchNormalization / InstanceNormalization: channel axis 1, parameters [C] follow it."""

    def analyze(node, ctx) -> None:
        lab = ctx.labels(node.input[0])
        if lab is None:
            return
        if lab.axes != (1,):
            ctx.freeze(lab, f"{who(node)} normalises over the channels' axis {lab.axes}")
            return
        for idx in range(first_param, min(last_param, len(node.input) - 1) + 1):
            name = node.input[idx]
            if not name:
                continue
            if ctx.const(name) is None:
                ctx.freeze(lab, f"{who(node)} takes parameter '{name}' computed at runtime")
                return
            ctx.follow(name, Labels((0,), lab.ids), node)
        ctx.set(node.output[0], lab)

    return analyze


analyze_batch_norm = _per_channel(1, 4)
analyze_instance_norm = _per_channel(1, 2)


def analyze_spatial(node, ctx) -> None:
    """Pooling and resizing act on axes >= 2 only: channels on axes 0 and 1 pass through."""
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    if any(a >= 2 for a in lab.axes):
        ctx.freeze(lab, f"{who(node)} pools over the axes carrying the channels")
        return
    if node.op_type in ("Resize", "Upsample"):
        if not _resize_keeps_channels(node, ctx, lab):
            ctx.freeze(lab, f"{who(node)} resizes the channel axis")
            return
    if len(node.output) > 1 and node.output[1] and ctx.readers.get(node.output[1]):
        ctx.freeze(lab, f"{who(node)} outputs indices that depend on the channel count")
        return
    ctx.set(node.output[0], lab)


def _resize_keeps_channels(node, ctx, lab) -> bool:
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    return all(in_shape[a] == out_shape[a] for a in lab.axes)


def rewrite_resize(node, rw) -> None:
    """A Resize given by ``sizes`` names the channel count: update it."""
    if len(node.input) < 4 or not node.input[3]:
        return
    new = rw.new_dims(node.output[0])
    if not new:
        return
    sizes = np.array(rw.const(node.input[3]), dtype=np.int64).copy()
    axes = rw.attr(node, "axes")
    rank = len(rw.shape(node.output[0]))
    positions = [norm_axis(a, rank) for a in axes] if axes else list(range(rank))
    for i, ax in enumerate(positions):
        if ax in new:
            sizes[i] = new[ax]
    rw.set_input(node, 3, sizes)


def _reduce_axes(node, ctx, rank: int):
    input_since = 13 if node.op_type == "ReduceSum" else 18
    axes = ints_arg(node, ctx, 1, "axes", input_since)
    if not axes:
        if ctx.attr(node, "noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return [norm_axis(a, rank) for a in axes]


def analyze_reduce(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    rank = len(ctx.shape(node.input[0]))
    try:
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = [norm_axis(ctx.attr(node, "axis", 0), rank)]
        else:
            axes = _reduce_axes(node, ctx, rank)
    except LookupError as err:
        ctx.freeze(lab, f"{who(node)} reduces over axes '{err.args[0]}' computed at runtime")
        return
    if set(axes) & set(lab.axes):
        ctx.freeze(lab, f"{who(node)} reduces over the channel axis, mixing channels")
        return
    if ctx.attr(node, "keepdims", 1):
        out_axes = lab.axes
    else:
        out_axes = tuple(a - sum(1 for r in axes if r < a) for a in lab.axes)
    ctx.set(node.output[0], Labels(out_axes, lab.ids))


def _mixed_axes(node, ctx, rank: int) -> set[int]:
    op = node.op_type
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        if ctx.opset < 13:
            return set(range(norm_axis(ctx.attr(node, "axis", 1), rank), rank))
        return {norm_axis(ctx.attr(node, "axis", -1), rank)}
    if op == "LayerNormalization":
        return set(range(norm_axis(ctx.attr(node, "axis", -1), rank), rank))
    if op == "MeanVarianceNormalization":
        return {norm_axis(a, rank) for a in ctx.attr(node, "axes", [0, 2, 3])}
    if op == "LpNormalization":
        return {norm_axis(ctx.attr(node, "axis", -1), rank)}
    if op == "CumSum":
        value = ctx.const(node.input[1])
        return {norm_axis(int(value), rank)} if value is not None else set(range(rank))
    return set(range(rank))  # GroupNormalization, LRN, DepthToSpace, SpaceToDepth...


def analyze_axis_mixer(node, ctx) -> None:
    """Ops that combine values along some axes: fine unless those axes carry the channels."""
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    rank = len(ctx.shape(node.input[0]))
    if _mixed_axes(node, ctx, rank) & set(lab.axes):
        ctx.freeze(lab, f"{who(node)} mixes values across the channel axis")
        if ctx.shapes.get(node.output[0]) != ctx.shape(node.input[0]):
            return
    # same channels out as in (frozen ones stay frozen, so the reason reaches the layers downstream)
    ctx.set(node.output[0], lab)
