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
    if wa is None and wb is None and la is not None and lb is not None \
            and la.axes == (ra - 1,) and lb.axes == (rb - 2,) and ra >= 2 and rb >= 2:
        ctx.unify(la.ids, lb.ids)  # contraction over the channels: removing one removes its term
        ctx.consumer(node, 0)
        return
    for lab in (la, lb):
        if lab is not None:
            ctx.freeze(lab, f"{who(node)} multiplies the channels in a way halp-onnx cannot split")
