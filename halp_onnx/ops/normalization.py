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


def analyze_layer_norm(node, ctx) -> None:
    """LayerNormalization over axes ``axis..rank-1``. Channels on the other axes pass through. Channels
    among the normalised axes (a transformer's residual stream, ConvNeXt's LayerNorm over C) are
    prunable: scale and bias follow them, and the pruned model normalises over the kept channels only
    - its mean and variance are those of the kept channels, a change of function that the
    verifier's reference (:func:`halp_onnx.passes.verify.masked_reference`) makes too."""
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    rank = len(ctx.shape(node.input[0]))
    normalised = set(range(norm_axis(int(ctx.attr(node, "axis", -1)), rank), rank))
    inside = set(lab.axes) & normalised
    if inside and inside != set(lab.axes):
        ctx.freeze(lab, f"{who(node)} normalises over some of the axes carrying the channels")
        return
    if inside and any(ctx.readers.get(o) for o in node.output[1:] if o):
        ctx.freeze(lab, f"{who(node)} outputs statistics over the channels")
        return
    for name in node.input[1:3] if inside else ():
        if not name:
            continue
        value = ctx.const(name)
        if value is None:
            ctx.freeze(lab, f"{who(node)} takes parameter '{name}' computed at runtime")
            return
        off = rank - value.ndim
        axes = tuple(a - off for a in lab.axes)
        if any(p < 0 or value.shape[p] == 1 for p in axes):
            if all(p < 0 or value.shape[p] == 1 for p in axes):
                continue  # the same for every channel: nothing to slice
            ctx.freeze(lab, f"{who(node)} takes parameter '{name}' that broadcasts over some channel axes")
            return
        ctx.follow(name, Labels(axes, lab.ids), node)
    ctx.set(node.output[0], lab)


def analyze_group_norm(node, ctx) -> None:
    """GroupNormalization (opset 21; the deprecated 18 is refused at load): channels (axis 1) are removed
    by whole groups of ``C / num_groups``, so the kept groups' statistics do not change; scale and
    bias (one value per channel) follow."""
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    groups = int(ctx.attr(node, "num_groups", 1))
    channels = ctx.shape(node.input[0])[1]
    if lab.axes != (1,) or groups < 1 or channels % groups:
        ctx.freeze(lab, f"{who(node)} normalises groups that mix the channels' axis {lab.axes}")
        return
    rows = lab.ids.reshape(groups, channels // groups)
    ctx.unify(rows[:, 1:], np.broadcast_to(rows[:, :1], rows[:, 1:].shape))
    for name in node.input[1:3]:
        value = ctx.const(name) if name else None
        if value is None:
            ctx.freeze(lab, f"{who(node)} takes parameter '{name}' computed at runtime")
            return
        if value.size != channels:
            ctx.freeze(lab, f"{who(node)} takes parameter '{name}' that is not one value per channel")
            return
        ctx.follow(name, Labels((value.ndim - 1,), lab.ids), node)
    ctx.set(node.output[0], lab)


def rewrite_group_norm(node, rw) -> None:
    """``num_groups`` counts the kept groups."""
    mask = rw.mask(node.input[0])
    if mask is None or mask.all():
        return
    groups = int(rw.attr(node, "num_groups", 1))
    rw.set_attr(node, "num_groups", int(mask.sum()) // (mask.size // groups))


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
    reduced = [k for k, a in enumerate(lab.axes) if a in axes]
    ids = lab.ids
    if reduced:
        if node.op_type in ("ArgMax", "ArgMin") or not _is_statistic(node, ctx):
            ctx.freeze(lab, f"{who(node)} reduces over the channel axis, mixing channels")
            return
        # a normalisation's statistic: pruned, it runs over the kept channels (the reference does too)
        if len(reduced) == len(lab.axes):
            return
        for k in reduced:  # channels left on other axes: what is reduced goes with them
            rest = np.take(ids, np.arange(1, ids.shape[k]), axis=k)
            ctx.unify(rest, np.broadcast_to(np.take(ids, [0], axis=k), rest.shape))
        ids = ids[tuple(0 if k in reduced else slice(None) for k in range(ids.ndim))]
    kept_axes = [a for a in lab.axes if a not in axes]
    if ctx.attr(node, "keepdims", 1):
        out_axes = tuple(kept_axes)
    else:
        out_axes = tuple(a - sum(1 for r in axes if r < a) for a in kept_axes)
    ctx.set(node.output[0], Labels(out_axes, np.ascontiguousarray(ids)))


_STATISTIC_PATH = ("Add", "Sqrt", "Pow", "Cast", "Identity", "Reciprocal", "Mul")


def _is_statistic(node, ctx) -> bool:
    """Is the reduction a normalisation's statistic: every use of its result, through ``+ eps``,
    ``sqrt``, ``pow``, ``1/x`` or a constant factor, is subtracted from something or divides it
    (``x - mean(x)``, ``d / sqrt(mean(d^2) + eps)``, ConvNeXt-V2's ``g / mean(g)``, RMSNorm), or
    multiplies something after ``1/x``."""
    seen: set[str] = set()
    todo = [(node.output[0], False)]
    while todo:
        name, inverted = todo.pop()
        readers = ctx.readers.get(name, [])
        if not readers or name in (o.name for o in ctx.model.graph.output):
            return False
        for reader, idx in readers:
            op = reader.op_type
            others = [i for j, i in enumerate(reader.input) if j != idx and i]
            if op in ("Sub", "Div") and idx == 1:
                continue
            if op == "Mul" and inverted:
                continue
            if op not in _STATISTIC_PATH or (op in ("Add", "Mul", "Pow") and
                                             any(ctx.const(i) is None or ctx.const(i).size != 1 for i in others)):
                return False
            if reader.output[0] not in seen:
                seen.add(reader.output[0])
                todo.append((reader.output[0], inverted or op == "Reciprocal"))
    return True


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
