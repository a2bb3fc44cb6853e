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


def _varying(full: np.ndarray) -> list[int]:
    """The axes along which the atom ids of ``full`` change."""
    shape = full.shape
    return [ax for ax in range(len(shape))
            if shape[ax] > 1 and not np.array_equal(full, np.broadcast_to(full.take([0], axis=ax), shape))]


def _on(full: np.ndarray, axes: list[int]) -> np.ndarray:
    """The atom ids of ``full`` over ``axes`` (the other axes, where they do not change, at position 0)."""
    return np.ascontiguousarray(full[tuple(slice(None) if ax in axes else 0 for ax in range(full.ndim))])


def _rows_disjoint(ids: np.ndarray, k: int) -> bool:
    """Does every atom of ``ids`` lie in one position of axis ``k`` only?"""
    rows = np.moveaxis(ids, k, 0).reshape(ids.shape[k], -1)
    return sum(len(np.unique(r)) for r in rows) == len(np.unique(rows))


def _whole_along(ctx, ids: np.ndarray, k: int) -> np.ndarray:
    """Couple every atom with the others at its position on axis ``k``; the ids along that axis."""
    rows = np.moveaxis(ids, k, 0).reshape(ids.shape[k], -1)
    if rows.shape[1] > 1:
        ctx.unify(rows[:, 1:], np.broadcast_to(rows[:, :1], rows[:, 1:].shape))
    return np.ascontiguousarray(rows[:, 0])


def _chunked(ctx, tensor: str, axis: int, depth: int = 6) -> bool:
    """Is axis ``axis`` of ``tensor`` picked apart (Gather of single positions, Split, Slice) before
    anything else reads it, through transposes and (un)squeezes (a fused q, k, v projection)?"""
    picked = False
    for reader, idx in ctx.readers.get(tensor, []) if depth else []:
        op, out = reader.op_type, reader.output[0] if reader.output else ""
        rank = len(ctx.shapes.get(tensor) or ())
        if op in ("Shape", "Size"):
            continue  # reads the shape only
        if idx != 0 or not out or not rank:
            return False
        if op in ("Split", "Gather"):
            if norm_axis(int(ctx.attr(reader, "axis", 0)), rank) != axis:
                return False
            if op == "Gather" and (ctx.const(reader.input[1]) is None or ctx.const(reader.input[1]).ndim > 1):
                return False
        elif op == "Slice":
            try:
                if axis not in _slice_params(reader, ctx)[2]:
                    return False
            except Exception:  # bounds computed at runtime, or malformed: not a chunk
                return False
        else:
            moved: int | None = None
            if op == "Transpose":
                perm = list(ctx.attr(reader, "perm", None) or reversed(range(rank)))
                moved = perm.index(axis)
            elif op in ("Squeeze", "Unsqueeze", "Identity") and ctx.shapes.get(out) is not None:
                moved = _moved_axis(ctx.shape(tensor), ctx.shape(out), axis)
            if moved is None or not _chunked(ctx, out, moved, depth - 1):
                return False
        picked = True
    return picked


def _moved_axis(in_shape, out_shape, axis: int) -> int | None:
    """Where axis ``axis`` lands through a squeeze / unsqueeze (axes of size 1 come and go)."""
    before = sum(1 for a in range(axis) if in_shape[a] != 1)
    big = [k for k, d in enumerate(out_shape) if d != 1]
    if in_shape[axis] == 1 or before >= len(big):
        return None
    return big[before]


def analyze_reshape(node, ctx) -> None:
    """Reshape, Flatten, Squeeze, Unsqueeze: follow every element, then find the axes channels land on.

    Channels landing on one axis (a merge, a flatten, a squeeze) keep their atoms there, repeated where
    they merge with other data (heads x head_dim -> width: each head's atom head_dim times). Channels
    landing on several axes must keep rectangles, so one of those axes is the one that shrinks and
    the atoms at each of its positions are coupled; the output's labels are on that axis only:

    * attention heads, channels on the last axis split into trailing axes (``B x T x C ->
      B x T x heads x head_dim``, fused ``B x T x 3 x heads x head_dim``): whole heads, the axis
      before the last; q, k and v of a head and its head_dim channels go together;
    * a channel shuffle (``C -> groups x C/groups`` elsewhere): the inner axis, the same positions
      in every group;
    * channels split together with other data into rows that share no channel (``B x C x H x W ->
      B x groups x C/groups*H*W``, a GroupNorm written with InstanceNormalization): whole rows.
    """
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
    out = node.output[0]
    full = _expand_to(lab, in_shape).reshape(out_shape)
    varying = _varying(full)
    if len(varying) > 1:  # atoms already coupled may vary along fewer axes
        full = ctx.uf.classes(full)
        varying = _varying(full) or varying
    if len(varying) == 1:
        ctx.set(out, Labels(tuple(varying), _on(full, varying)))
        return
    how = f"({'x'.join(map(str, in_shape))} -> {'x'.join(map(str, out_shape))})"
    if not varying:
        ctx.freeze(lab, f"{who(node)} reshapes the channels in a way halp-onnx cannot follow {how}")
        return
    ids = _on(full, varying)
    in_ids = ctx.uf.classes(lab.ids)
    if ids.shape == in_ids.shape and np.array_equal(ids, in_ids):
        ctx.set(out, Labels(tuple(varying), ids))  # axis for axis (a squeeze, an unsqueeze)
        return
    pure = ids.size == in_ids.size and np.array_equal(np.sort(ids, axis=None), np.sort(in_ids, axis=None))
    shrinking = None
    if pure and lab.ids.ndim == 1:
        if lab.axes[0] == len(in_shape) - 1 and varying[-1] == len(out_shape) - 1:
            # heads x head_dim: whole heads; an axis picked apart later (q, k, v) shrinks in lockstep
            free = [k for k, ax in enumerate(varying[:-1]) if not _chunked(ctx, out, ax)] + [len(varying) - 1]
            shrinking = free[-2] if len(free) > 1 else free[-1]
        elif len(varying) == 2:
            shrinking = 1  # channel shuffle: the same positions in every group
    elif not pure and _rows_disjoint(ids, 0):
        shrinking = 0  # groups of channels with their spatial data: whole groups
    if shrinking is None:
        ctx.freeze(lab, f"{who(node)} reshapes the channels in a way halp-onnx cannot follow {how}" if pure else
                   f"{who(node)} spreads the channels over several axes together with other data {how}")
        return
    ctx.set(out, Labels((varying[shrinking],), _whole_along(ctx, ids, shrinking)))


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


def _along(ids: np.ndarray, k: int, start: int, stop: int) -> np.ndarray:
    """``ids`` restricted to positions ``start:stop`` of its ``k``-th axis."""
    return np.ascontiguousarray(np.take(ids, np.arange(start, stop), axis=k))


def _kept_along(mask: np.ndarray, k: int) -> np.ndarray:
    """Per position of the ``k``-th label axis: is anything kept there (the kept positions form a box)."""
    other = tuple(i for i in range(mask.ndim) if i != k)
    return np.asarray(mask.any(axis=other)) if other else mask


def analyze_split(node, ctx) -> None:
    """Split along a channel axis hands each output its part of the channels; along another axis every
    output carries them all. Channels spread over several axes (attention heads x channels per head)
    are split along the one axis the Split names."""
    lab = ctx.labels(node.input[0])
    if lab is None:
        return
    rank = len(ctx.shape(node.input[0]))
    axis = norm_axis(int(ctx.attr(node, "axis", 0)), rank)
    if axis not in lab.axes:
        for out in node.output:
            ctx.set(out, lab)
        return
    k = lab.axes.index(axis)
    offset = 0
    for out in node.output:
        size = ctx.shape(out)[axis]
        ctx.set(out, Labels(lab.axes, _along(lab.ids, k, offset, offset + size)))
        offset += size


def rewrite_split(node, rw) -> None:
    lab = rw.labels(node.input[0])
    rank = len(rw.shape(node.input[0]))
    axis = norm_axis(int(rw.attr(node, "axis", 0)), rank)
    if lab is None or axis not in lab.axes:
        return
    k = lab.axes.index(axis)
    old, new = [], []
    for out in node.output:
        mask = rw.mask(out)
        old.append(int(rw.shape(out)[axis]))
        new.append(old[-1] if mask is None else int(_kept_along(mask, k).sum()))
    if new == old:
        return  # nothing of the split axis is removed: the node stays as it is
    sizes = np.array(new, dtype=np.int64)
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
    ids = lab.ids
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if axis not in lab.axes:
            continue
        if step != 1:
            ctx.freeze(lab, f"{who(node)} slices the channel axis with step {step}")
            return
        idx = range(*slice(start, end, step).indices(shape[axis]))
        ids = _along(ids, lab.axes.index(axis), idx.start, max(idx.stop, idx.start))
    ctx.set(node.output[0], Labels(lab.axes, ids))


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
        kept = _kept_along(mask_in, lab.axes.index(axis))
        if kept.all():
            continue  # nothing removed along this axis: its bounds stand
        idx = range(*slice(start, end, step).indices(shape[axis]))
        starts[k] = int(kept[:idx.start].sum())
        ends[k] = starts[k] + int(kept[idx.start:max(idx.stop, idx.start)].sum())
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
    if out_mask is None:  # the channels were frozen here: the pads stand
        return
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
