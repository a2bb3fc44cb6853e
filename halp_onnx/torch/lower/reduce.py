"""Torch lowerings of reductions: Reduce* (axes as attribute, then as input), ArgMax / ArgMin, TopK."""
from __future__ import annotations

import torch

from ._common import Builder, _axis, _scalar, ints


def _reduce_builder(fn, axes_as_input: bool) -> Builder:
    def builder(node, attrs, version):
        keepdims = bool(attrs.get("keepdims", 1))
        noop = bool(attrs.get("noop_with_empty_axes", 0))
        attr_axes = attrs.get("axes")

        def run(ctx, x, axes=None):
            ax = ints(axes) if axes_as_input else (list(attr_axes) if attr_axes is not None else None)
            if not ax:
                if noop and axes_as_input:
                    return x
                ax = list(range(x.dim()))
            ax = sorted(_axis(a, x.dim()) for a in ax)
            return fn(x, ax, keepdims)

        return run

    return builder


def _rsum(x, ax, k):
    return torch.sum(x, dim=ax, keepdim=k) if ax else x


_REDUCE = {
    "ReduceSum": (_rsum, 13),
    "ReduceMean": (lambda x, ax, k: torch.mean(x, dim=ax, keepdim=k), 18),
    "ReduceMax": (lambda x, ax, k: torch.amax(x, dim=ax, keepdim=k), 18),
    "ReduceMin": (lambda x, ax, k: torch.amin(x, dim=ax, keepdim=k), 18),
    "ReduceProd": (lambda x, ax, k: _reduce_prod(x, ax, k), 18),
    "ReduceL1": (lambda x, ax, k: torch.sum(x.abs(), dim=ax, keepdim=k), 18),
    "ReduceL2": (lambda x, ax, k: torch.sqrt(torch.sum(x * x, dim=ax, keepdim=k)), 18),
    "ReduceSumSquare": (lambda x, ax, k: torch.sum(x * x, dim=ax, keepdim=k), 18),
    "ReduceLogSum": (lambda x, ax, k: torch.log(torch.sum(x, dim=ax, keepdim=k)), 18),
    "ReduceLogSumExp": (lambda x, ax, k: torch.logsumexp(x, dim=ax, keepdim=k), 18),
}


def _reduce_prod(x, ax, keep):
    for a in sorted(ax, reverse=True):
        x = torch.prod(x, dim=a, keepdim=keep)
    return x


def _arg_builder(fn) -> Builder:
    def builder(node, attrs, version):
        axis = attrs.get("axis", 0)
        keepdims = bool(attrs.get("keepdims", 1))
        last = bool(attrs.get("select_last_index", 0))

        def run(ctx, x):
            if last:
                a = _axis(axis, x.dim())
                flipped = fn(torch.flip(x, [a]), dim=a, keepdim=keepdims)
                return x.shape[a] - 1 - flipped
            return fn(x, dim=axis, keepdim=keepdims)

        return run

    return builder


def _topk(node, attrs, version):
    axis = attrs.get("axis", -1)
    largest = bool(attrs.get("largest", 1))
    sorted_ = bool(attrs.get("sorted", 1))

    def run(ctx, x, k):
        v, i = torch.topk(x, int(_scalar(k)), dim=axis, largest=largest, sorted=sorted_)
        return v, i

    return run


LOWERINGS: dict[str, Builder] = {
    "ArgMax": _arg_builder(torch.argmax),
    "ArgMin": _arg_builder(torch.argmin),
    "TopK": _topk,
}
for _op, (_fn, _since) in _REDUCE.items():
    LOWERINGS[f"{_op}@1"] = _reduce_builder(_fn, False)
    LOWERINGS[f"{_op}@{_since}"] = _reduce_builder(_fn, True)
