"""Torch lowerings of normalisations and axis mixers: BatchNormalization, InstanceNormalization,
LayerNormalization, GroupNormalization, LpNormalization, Softmax / LogSoftmax, CumSum,
DepthToSpace / SpaceToDepth."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import Builder, UnsupportedOp, _axis, _scalar


def _batch_norm(node, attrs, version):
    if version < 9 and attrs.get("spatial", 1) == 0:
        raise UnsupportedOp("spatial=0")
    eps = float(attrs.get("epsilon", 1e-5))
    momentum = float(attrs.get("momentum", 0.9))
    training_mode = bool(attrs.get("training_mode", 0)) if version >= 14 else len(node.output) > 1
    n_out = len(node.output)

    def run(ctx, x, scale, bias, mean, var):
        if training_mode or (ctx.training and ctx.train_bn):
            # torch semantics: running <- (1 - m) * running + m * batch, with m = 1 - ONNX momentum;
            # F.batch_norm updates ``mean``/``var`` (the module's buffers) in place.
            if not ctx.training or mean.requires_grad or var.requires_grad:
                # no running-stat update: module in eval mode (graph asks for batch statistics), or
                # the statistics are not buffers (computed / trainable tensors)
                mean, var = mean.detach().clone(), var.detach().clone()
            y = F.batch_norm(x, mean, var, scale, bias, True, 1.0 - momentum, eps)
            if n_out > 1:
                return (y, mean, var)[:n_out]
            return y
        y = F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
        if n_out > 1:
            return (y, mean, var)[:n_out]
        return y

    return run


def _instance_norm(node, attrs, version):
    eps = float(attrs.get("epsilon", 1e-5))
    return lambda ctx, x, scale, bias: F.instance_norm(x, weight=scale, bias=bias, eps=eps)


def _layer_norm(node, attrs, version):
    axis = attrs.get("axis", -1)
    eps = float(attrs.get("epsilon", 1e-5))
    n_out = len(node.output)

    def run(ctx, x, scale, bias=None):
        a = _axis(axis, x.dim())
        shape = tuple(x.shape[a:])
        if n_out == 1 and tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
            return F.layer_norm(x, shape, scale, bias, eps)
        dims = tuple(range(a, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        inv_std = torch.rsqrt(var + eps)
        y = (x - mean) * inv_std * scale
        if bias is not None:
            y = y + bias
        return (y, mean, inv_std)[:n_out] if n_out > 1 else y

    return run


def _group_norm(node, attrs, version):
    eps = float(attrs.get("epsilon", 1e-5))
    groups = int(attrs["num_groups"])

    def run(ctx, x, scale, bias):
        c = x.shape[1]
        if version >= 21 or scale.numel() == c and c != groups:
            return F.group_norm(x, groups, scale, bias, eps)
        # opset 18: scale/bias are per group
        rep = c // groups
        return F.group_norm(x, groups, scale.repeat_interleave(rep), bias.repeat_interleave(rep), eps)

    return run


def _lp_norm(node, attrs, version):
    axis = attrs.get("axis", -1)
    p = attrs.get("p", 2)
    return lambda ctx, x: x / torch.linalg.vector_norm(x, p, dim=axis, keepdim=True)


def _depth_to_space(node, attrs, version):
    bs = attrs["blocksize"]
    mode = attrs.get("mode", "DCR")

    def run(ctx, x):
        n, c, h, w = x.shape
        if mode == "DCR":
            y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(n, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // (bs * bs), h * bs, w * bs)

    return run


def _space_to_depth(node, attrs, version):
    bs = attrs["blocksize"]

    def run(ctx, x):
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * bs * bs, h // bs, w // bs)

    return run


def _cumsum(node, attrs, version):
    exclusive = bool(attrs.get("exclusive", 0))
    reverse = bool(attrs.get("reverse", 0))

    def run(ctx, x, axis):
        a = _axis(int(_scalar(axis)), x.dim())
        if reverse:
            x = torch.flip(x, [a])
        y = torch.cumsum(x, dim=a)
        if exclusive:
            y = y - x
        if reverse:
            y = torch.flip(y, [a])
        return y

    return run


def _softmax_builder(fn) -> Builder:
    def builder(node, attrs, version):
        if version >= 13:
            axis = attrs.get("axis", -1)
            return lambda ctx, x: fn(x, dim=axis)
        axis = attrs.get("axis", 1)

        def run(ctx, x):  # opset < 13: coerce to 2-D at ``axis``
            a = _axis(axis, x.dim())
            shape = x.shape
            return fn(x.reshape(int(math.prod(shape[:a])), -1), dim=1).reshape(shape)

        return run

    return builder


LOWERINGS: dict[str, Builder] = {
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
    "GroupNormalization": _group_norm,
    "LpNormalization": _lp_norm,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "CumSum": _cumsum,
}
for _op, _fn in (("Softmax", torch.softmax), ("LogSoftmax", torch.log_softmax)):
    LOWERINGS[f"{_op}@1"] = _softmax_builder(_fn)
    LOWERINGS[f"{_op}@13"] = _softmax_builder(_fn)
