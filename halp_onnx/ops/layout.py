"""Ops that move channels around: reshapes, transposes, concat/split/slice, pad, gather."""
from __future__ import annotations

import numpy as np

from ..labels import Labels
from ._rule import ints_arg, norm_axis, who
from .elementwise import analyze_broadcast

_MAX_RESHAPE_ELEMENTS = 1 << 26


def _expand_to(lab: Labels, shape: tuple[int, ...]) -> np.ndarray:
    """The atom id at every element of a tensor of ``shape`` (broadcast over untracked axes)."""
    view = [1] * len(shape)
    for k, a in enumerate(lab.axes):
        view[a] = lab.ids.shape[k]
    return np.broadcast_to(lab.ids.reshape(view), shape)


def analyze_reshape(node, ctx) -> None:
    """Reshape, Flatten, Squeeze, Unsqueeze: follow every element, then find the axes channels land on."""
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if node.op_type == "Reshape" and ctx.const(node.input[1]) is None:
        ctx.freeze(lab, f"{who(node)} has a target shape computed at runtime")
        return
    if int(np.prod(in_shape)) > _MAX_RESHAPE_ELEMENTS:
        ctx.freeze(lab, f"{who(node)} reshapes a tensor too large to follow")
        return
    full = _expand_to(lab, in_shape).reshape(out_shape)
    varying = [ax for ax in range(len(out_shape))
               if out_shape[ax] > 1 and not np.array_equal(full, np.broadcast_to(full.take([0], axis=ax), out_shape))]
    if not varying or len(varying) > 2 or (len(varying) == 2 and varying[1] != varying[0] + 1):
        ctx.freeze(lab, f"{who(node)} reshapes the channels in a way halp-onnx cannot follow "
                        f"({'x'.join(map(str, in_shape))} -> {'x'.join(map(str, out_shape))})")
        return
    ids = full[tuple(slice(None) if ax in varying else 0 for ax in range(len(out_shape)))]
    if len(varying) == 2 and (ids.size != lab.ids.size or
                              not np.array_equal(np.sort(ids, axis=None), np.sort(lab.ids, axis=None))):
        ctx.freeze(lab, f"{who(node)} spreads the channels over two axes together with other data "
                        f"({'x'.join(map(str, in_shape))} -> {'x'.join(map(str, out_shape))})")
        return
    if len(varying) == 2 and lab.ids.ndim == 1:
        # one axis split in two (channel shuffle, attention heads): only the inner axis may shrink,
        # by the same positions in every row, so the result stays rectangular
        ctx.unify(ids[1:], np.broadcast_to(ids[:1], ids[1:].shape))
    ctx.set(node.output[0], Labels(tuple(varying), np.ascontiguousarray(ids)))


def rewrite_reshape(node, rw) -> None:
    new = rw.new_dims(node.output[0])
    if not new:
        return
    shape = np.array(rw.const(node.input[1]), dtype=np.int64).copy()
    for ax, size in new.items():
        if shape[ax] not in (0, -1):
            shape[ax] = size
    rw.set_input(node, 1, shape)


def analyze_transpose(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    rank = len(ctx.shape(node.input[0]))
    perm = list(ctx.attr(node, "perm", None) or reversed(range(rank)))
    out_axes = tuple(j for j in range(rank) if perm[j] in lab.axes)
    order = [lab.axes.index(perm[j]) for j in out_axes]
    ctx.set(node.output[0], Labels(out_axes, np.ascontiguousarray(lab.ids.transpose(order))))


def analyze_concat(node, ctx) -> None:
    out = node.output[0]
    rank = len(ctx.shape(out))
    axis = norm_axis(int(ctx.attr(node, "axis", 1)), rank)
    labs = [ctx.labels(name) for name in node.input]
    if not any(lab is not None and axis in lab.axes for lab in labs):
        analyze_broadcast(node, ctx)  # concatenated along another axis: channels must line up
        return
    if any(lab is not None and lab.axes != (axis,) for lab in labs):
        for lab in labs:
            if lab is not None:
                ctx.freeze(lab, f"{who(node)} concatenates tensors whose channels lie on different axes")
        return
    parts = []
    for name, lab in zip(node.input, labs):
        if lab is None:
            fresh = ctx.new_source(node, name, (ctx.shape(name)[axis],))
            ctx.freeze(fresh, f"{who(node)} concatenates tensor '{name}', whose channels are not prunable")
            parts.append(fresh)
        else:
            parts.append(lab.ids)
    ctx.set(out, Labels((axis,), np.concatenate(parts)))


def analyze_split(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    rank = len(ctx.shape(node.input[0]))
    axis = norm_axis(int(ctx.attr(node, "axis", 0)), rank)
    if axis not in lab.axes:
        for out in node.output:
            ctx.set(out, lab)
        return
    if lab.axes != (axis,):
        ctx.freeze(lab, f"{who(node)} splits channels that span several axes")
        return
    offset = 0
    for out in node.output:
        size = ctx.shape(out)[axis]
        ctx.set(out, Labels((axis,), lab.ids[offset:offset + size]))
        offset += size


def rewrite_split(node, rw) -> None:
    lab = rw.labels(node.input[0])
    rank = len(rw.shape(node.input[0]))
    axis = norm_axis(int(rw.attr(node, "axis", 0)), rank)
    if lab is None or axis not in lab.axes:
        return
    sizes = np.array([int(rw.mask(out).sum()) for out in node.output], dtype=np.int64)
    if rw.opset >= 13:
        rw.del_attr(node, "num_outputs")
        rw.set_input(node, 1, sizes)
    else:
        rw.set_attr(node, "split", [int(s) for s in sizes])


def _slice_params(node, ctx):
    """(starts, ends, axes, steps) of a Slice, from inputs (opset >= 10) or attributes."""
    starts = ints_arg(node, ctx, 1, "starts", 10)
    ends = ints_arg(node, ctx, 2, "ends", 10)
    axes = ints_arg(node, ctx, 3, "axes", 10)
    steps = ints_arg(node, ctx, 4, "steps", 10) if ctx.opset >= 10 else None
    rank = len(ctx.shape(node.input[0]))
    axes = [norm_axis(a, rank) for a in axes] if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    return starts, ends, axes, steps


def analyze_slice(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    try:
        starts, ends, axes, steps = _slice_params(node, ctx)
    except LookupError as err:
        ctx.freeze(lab, f"{who(node)} slices with '{err.args[0]}' computed at runtime")
        return
    shape = ctx.shape(node.input[0])
    out_lab = lab
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if axis not in lab.axes:
            continue
        if lab.axes != (axis,) or step != 1:
            ctx.freeze(lab, f"{who(node)} slices the channel axis with step {step}" if step != 1
                       else f"{who(node)} slices channels that span several axes")
            return
        idx = range(*slice(start, end, step).indices(shape[axis]))
        out_lab = Labels((axis,), lab.ids[idx.start:idx.stop])
    ctx.set(node.output[0], out_lab)


def rewrite_slice(node, rw) -> None:
    lab = rw.labels(node.input[0])
    if lab is None:
        return
    starts, ends, axes, steps = _slice_params(node, rw)
    shape = rw.shape(node.input[0])
    mask_in = rw.mask(node.input[0])
    changed = False
    for k, (start, end, axis, step) in enumerate(zip(starts, ends, axes, steps)):
        if axis not in lab.axes:
            continue
        idx = range(*slice(start, end, step).indices(shape[axis]))
        starts[k] = int(mask_in[:idx.start].sum())
        ends[k] = starts[k] + int(mask_in[idx.start:idx.stop].sum())
        changed = True
    if not changed:
        return
    if rw.opset >= 10:
        rw.set_input(node, 1, np.array(starts, dtype=np.int64))
        rw.set_input(node, 2, np.array(ends, dtype=np.int64))
    else:
        rw.set_attr(node, "starts", starts)
        rw.set_attr(node, "ends", ends)


def _pad_params(node, ctx, rank: int):
    """Per-axis (before, after) pads of a Pad node."""
    pads = ints_arg(node, ctx, 1, "pads" if ctx.opset >= 2 else "paddings", 11)
    axes = ints_arg(node, ctx, 3, "axes", 18) if ctx.opset >= 18 else None
    axes = [norm_axis(a, rank) for a in axes] if axes else list(range(rank))
    before, after = [0] * rank, [0] * rank
    for k, ax in enumerate(axes):
        before[ax], after[ax] = pads[k], pads[k + len(axes)]
    return before, after, axes


def analyze_pad(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    rank = len(ctx.shape(node.input[0]))
    try:
        before, after, _ = _pad_params(node, ctx, rank)
    except LookupError as err:
        ctx.freeze(lab, f"{who(node)} pads by '{err.args[0]}' computed at runtime")
        return
    mode = ctx.attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    out_lab = lab
    for axis in lab.axes:
        b, e = before[axis], after[axis]
        if b == 0 and e == 0:
            continue
        if lab.axes != (axis,) or mode != "constant" or b < 0 or e < 0:
            ctx.freeze(lab, f"{who(node)} pads the channel axis in {mode} mode" if mode != "constant"
                       else f"{who(node)} crops or pads channels spanning several axes")
            return
        # padded channels are constants; they shrink with whatever they are added to downstream
        head = ctx.new_source(node, node.output[0], (b,), constant=True)
        tail = ctx.new_source(node, node.output[0], (e,), constant=True)
        out_lab = Labels((axis,), np.concatenate([head, lab.ids, tail]))
        ctx.touch(node, node.output[0])
    ctx.set(node.output[0], out_lab)


def rewrite_pad(node, rw) -> None:
    lab_in = rw.labels(node.input[0])
    if lab_in is None:
        return
    rank = len(rw.shape(node.input[0]))
    before, after, axes = _pad_params(node, rw, rank)
    out_mask = rw.mask(node.output[0])
    changed = False
    for axis in lab_in.axes:
        b, e = before[axis], after[axis]
        if b == 0 and e == 0:
            continue
        before[axis], after[axis] = int(out_mask[:b].sum()), int(out_mask[len(out_mask) - e:].sum())
        changed = True
    if not changed:
        return
    pads = [before[a] for a in axes] + [after[a] for a in axes]
    if rw.opset >= 11:
        rw.set_input(node, 1, np.array(pads, dtype=np.int64))
    else:
        rw.set_attr(node, "pads", pads)


def analyze_gather(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    rank = len(ctx.shape(node.input[0]))
    axis = norm_axis(int(ctx.attr(node, "axis", 0)), rank)
    indices = ctx.const(node.input[1])
    if axis not in lab.axes:
        q = len(ctx.shape(node.input[1]))
        ctx.set(node.output[0], Labels(tuple(a if a < axis else a - 1 + q for a in lab.axes), lab.ids))
        return
    if lab.axes != (axis,) or indices is None or indices.ndim != 1:
        ctx.freeze(lab, f"{who(node)} picks channels by indices it cannot follow")
        return
    idx = np.where(indices < 0, indices + lab.ids.shape[0], indices)
    ctx.set(node.output[0], Labels((axis,), lab.ids[idx]))


def rewrite_gather(node, rw) -> None:
    lab = rw.labels(node.input[0])
    out_mask = rw.mask(node.output[0])
    if lab is None or out_mask is None or rw.labels(node.output[0]).axes != lab.axes:
        return
    rank = len(rw.shape(node.input[0]))
    if norm_axis(int(rw.attr(node, "axis", 0)), rank) not in lab.axes:
        return
    mask_in = rw.mask(node.input[0])
    indices = np.asarray(rw.const(node.input[1])).astype(np.int64)
    indices = np.where(indices < 0, indices + len(mask_in), indices)
    new_position = np.cumsum(mask_in) - 1
    rw.set_input(node, 1, new_position[indices[out_mask]].astype(np.int64))


def analyze_expand_tile(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    off = len(out_shape) - len(in_shape)
    if any(in_shape[a] != out_shape[a + off] for a in lab.axes):
        ctx.freeze(lab, f"{who(node)} repeats the channels")
        return
    ctx.set(node.output[0], Labels(tuple(a + off for a in lab.axes), lab.ids))


def rewrite_expand(node, rw) -> None:
    new = rw.new_dims(node.output[0])
    if not new or node.op_type != "Expand":
        return
    shape = np.array(rw.const(node.input[1]), dtype=np.int64).copy()
    off = len(rw.shape(node.output[0])) - len(shape)
    for ax, size in new.items():
        if ax - off >= 0 and shape[ax - off] != 1:
            shape[ax - off] = size
    rw.set_input(node, 1, shape)


def analyze_shape_only(node, ctx) -> None:
    """Reads only the input's shape: nothing to couple (the value adapts at runtime)."""
