"""Ops with weights that create new channels (producers) and reduce over input channels (consumers)."""
from __future__ import annotations

import numpy as np

from ..labels import Labels
from ._rule import who


def analyze_conv(node, ctx) -> None:
    x, w = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 else ""
    lab = ctx.labels(x)
    weight = ctx.const(w)
    out = node.output[0]
    if weight is None:
        if lab is not None:
            ctx.freeze(lab, f"{who(node)} has a weight computed at runtime")
        return
    if lab is not None and lab.axes != (1,):
        ctx.freeze(lab, f"{who(node)} reads channels that lie on axes {lab.axes}, not the channel axis")
        lab = None
    groups = int(ctx.attr(node, "group", 1))
    transposed = node.op_type == "ConvTranspose"
    c_in = weight.shape[0] if transposed else weight.shape[1] * groups
    c_out = weight.shape[1] * groups if transposed else weight.shape[0]
    w_in_axis, w_out_axis = (0, 1) if transposed else (1, 0)
    ids = ctx.new_source(node, out, (c_out,))
    if groups == 1:
        ctx.follow(w, Labels((w_out_axis,), ids), node)
        if lab is not None:
            ctx.follow(w, Labels((w_in_axis,), lab.ids), node)
            ctx.consumer(node, 0)
    else:
        # pruning removes whole convolution groups: a group's inputs and outputs go together
        rows_out = ids.reshape(groups, c_out // groups)
        if lab is None:
            ctx.freeze(ids, f"{who(node)} is a grouped convolution whose input channels cannot shrink")
        else:
            rows = np.concatenate([lab.ids.reshape(groups, c_in // groups), rows_out], axis=1)
            ctx.unify(rows[:, 1:], np.repeat(rows[:, :1], rows.shape[1] - 1, axis=1))
            ctx.touch(node, x)
        if transposed:
            ctx.follow(w, Labels((0,), lab.ids if lab is not None else np.repeat(rows_out[:, 0], c_in // groups)), node)
        else:
            ctx.follow(w, Labels((0,), ids), node)
    if bias:
        ctx.follow(bias, Labels((0,), ids), node)
    ctx.set(out, Labels((1,), ids))


def rewrite_conv(node, rw) -> None:
    groups = int(rw.attr(node, "group", 1))
    if groups == 1:
        return
    mask = rw.mask(node.output[0])
    if mask is None:
        return
    per_group = mask.size // groups
    kept = int(mask.sum())
    if kept % per_group:
        raise AssertionError(f"{node.name}: partial convolution group kept")
    rw.set_attr(node, "group", kept // per_group)


def analyze_gemm(node, ctx) -> None:
    a, b = node.input[0], node.input[1]
    c = node.input[2] if len(node.input) > 2 else ""
    lab = ctx.labels(a)
    if ctx.const(b) is None:
        if lab is not None:
            ctx.freeze(lab, f"{who(node)} multiplies two activations")
        return
    trans_a, trans_b = int(ctx.attr(node, "transA", 0)), int(ctx.attr(node, "transB", 0))
    out = node.output[0]
    n = ctx.shape(out)[1]
    ids = ctx.new_source(node, out, (n,))
    b_out_axis = 0 if trans_b else 1
    ctx.follow(b, Labels((b_out_axis,), ids), node)
    if c:
        c_shape = ctx.shape(c)
        if c_shape and c_shape[-1] == n and n > 1:
            if ctx.const(c) is None:
                ctx.freeze(ids, f"{who(node)} adds a bias computed at runtime")
            else:
                ctx.follow(c, Labels((len(c_shape) - 1,), ids), node)
    if lab is not None:
        if lab.axes == ((0,) if trans_a else (1,)):
            ctx.follow(b, Labels((1 - b_out_axis,), lab.ids), node)
            ctx.consumer(node, 0)
        else:
            ctx.freeze(lab, f"{who(node)} reads the channels on its row axis")
    ctx.set(out, Labels((1,), ids))


def analyze_matmul(node, ctx) -> None:
    """MatMul with a constant 2-d weight: a producer (and a consumer of its input's channels). Of two
    activations: see :func:`_analyze_activation_matmul`."""
    a, b = node.input[0], node.input[1]
    la, lb = ctx.labels(a), ctx.labels(b)
    wa, wb = ctx.const(a), ctx.const(b)
    out = node.output[0]
    ra, rb, ro = len(ctx.shape(a)), len(ctx.shape(b)), len(ctx.shape(out))
    if wb is not None and wb.ndim == 2 and ra >= 2:
        ids = ctx.new_source(node, out, (ctx.shape(out)[-1],))
        ctx.follow(b, Labels((1,), ids), node)
        if la is not None:
            if la.axes == (ra - 1,):
                ctx.follow(b, Labels((0,), la.ids), node)
                ctx.consumer(node, 0)
            else:
                ctx.freeze(la, f"{who(node)} keeps the channels on a row axis and creates new ones on the last")
        ctx.set(out, Labels((ro - 1,), ids))
        return
    if wa is None and wb is None and ra >= 2 and rb >= 2 and (la is not None or lb is not None):
        _analyze_activation_matmul(node, ctx, la, lb)
        return
    for lab in (la, lb):
        if lab is not None:
            ctx.freeze(lab, f"{who(node)} multiplies the channels in a way halp-onnx cannot split")


def _analyze_activation_matmul(node, ctx, la: Labels | None, lb: Labels | None) -> None:
    """``A [..., M, K] x B [..., K, N]``, both computed: channels on the batch axes (attention heads in
    ``Q K^T`` and ``attn V``) pair up position by position and carry on to the output; channels on the
    contracted axis pair up and are summed away (a consumer: the reference zeroes the removed ones);
    channels on M (of A) or N (of B) carry on to the output. The other operand must shrink with the
    channels unless it broadcasts there; channels on both M and N (an outer product) cannot be split."""
    a, b, out = node.input[0], node.input[1], node.output[0]
    sa, sb, so = ctx.shape(a), ctx.shape(b), ctx.shape(out)
    ra, rb, ro = len(sa), len(sb), len(so)
    k_axis = ro  # joint axes: the output's, then the contracted one
    dims = list(so) + [sa[-1]]

    def joint(ax: int, rank: int, is_a: bool) -> int:
        if ax < rank - 2:
            return ax + ro - rank
        if ax == rank - 2:
            return ro - 2 if is_a else k_axis
        return k_axis if is_a else ro - 1

    def extent(j: int, shape: tuple[int, ...], is_a: bool) -> int:
        """The operand's size along joint axis ``j`` (1 where it has no such axis)."""
        if j == k_axis:
            return shape[-1] if is_a else shape[-2]
        if j >= ro - 2:
            return shape[-2 if is_a else -1] if (j == ro - 2) == is_a else 1
        i = j - (ro - len(shape))
        return shape[i] if i >= 0 else 1

    operands = [(a, la, sa, ra, True), (b, lb, sb, rb, False)]
    axes_of = [[joint(ax, rank, is_a) for ax in lab.axes] if lab is not None else []
               for _, lab, _, rank, is_a in operands]
    union = sorted(set(axes_of[0]) | set(axes_of[1]))
    reason = ""
    if ro - 2 in union and ro - 1 in union:
        reason = f"{who(node)} multiplies the channels of its two inputs with each other (an outer product)"
    for (name, lab, shape, _, is_a), axes in zip(operands, axes_of):
        for j in union:
            if j not in axes and extent(j, shape, is_a) > 1:
                reason = reason or (f"{who(node)} combines the channels with tensor '{name}', "
                                    "whose channels cannot shrink with them")
    if reason:
        for _, lab, *_ in operands:
            if lab is not None:
                ctx.freeze(lab, reason)
        return
    spread = []  # each labelled operand's atoms over the union of the joint axes (broadcast elsewhere)
    for (_, lab, _, _, _), axes in zip(operands, axes_of):
        if lab is None:
            continue
        ordered = lab.ids.transpose(np.argsort(axes))
        view = [ordered.shape[sorted(axes).index(j)] if j in axes else 1 for j in union]
        spread.append(np.broadcast_to(ordered.reshape(view), [dims[j] for j in union]))
    if len(spread) == 2:
        ctx.unify(spread[0], spread[1])
    ids = spread[-1]
    if k_axis in union:
        k = union.index(k_axis)
        if len(union) == 1:
            ctx.consumer(node, 0 if la is not None else 1)  # summed away: the reference zeroes the removed terms
            return
        rest = np.take(ids, np.arange(1, ids.shape[k]), axis=k)
        ctx.unify(rest, np.broadcast_to(np.take(ids, [0], axis=k), rest.shape))
        ids = np.take(ids, 0, axis=k)
        union.remove(k_axis)
    ctx.set(out, Labels(tuple(union), np.ascontiguousarray(ids)))


def analyze_gather(node, ctx) -> None:
    """An embedding lookup (a constant 2-d table read at runtime indices along axis 0) creates channels
    on the output's last axis, the table's columns following them; any other Gather moves channels
    (:func:`halp_onnx.ops.layout.analyze_gather`)."""
    from .layout import analyze_gather as move

    table = ctx.const(node.input[0])
    if table is None or table.ndim != 2 or int(ctx.attr(node, "axis", 0)) not in (0, -2) \
            or ctx.const(node.input[1]) is not None or ctx.labels(node.input[1]) is not None:
        move(node, ctx)
        return
    out = node.output[0]
    ids = ctx.new_source(node, out, (table.shape[1],))
    ctx.follow(node.input[0], Labels((1,), ids), node)
    ctx.set(out, Labels((len(ctx.shape(out)) - 1,), ids))
