"""Torch lowerings of shape and layout ops: Shape, Size, Flatten, Reshape, Transpose, Concat, Split,
Slice, Squeeze, Unsqueeze, Expand, Tile, Pad, ConstantOfShape, Range."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ._common import Builder, UnsupportedOp, _axis, _scalar, ints
from .conv import _torch_pad_arg


def _shape(node, attrs, version):
    start = attrs.get("start", 0)
    end = attrs.get("end")

    def run(ctx, x):
        dims = list(x.shape)
        dims = dims[start:end] if end is not None else dims[start:]
        return torch.tensor(dims, dtype=torch.int64, device=x.device)

    return run


def _size(node, attrs, version):
    return lambda ctx, x: torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def _flatten(node, attrs, version):
    axis = attrs.get("axis", 1)

    def run(ctx, x):
        a = _axis(axis, x.dim())
        return x.reshape(int(math.prod(x.shape[:a])), int(math.prod(x.shape[a:])))

    return run


def _reshape(node, attrs, version):
    allowzero = bool(attrs.get("allowzero", 0))

    def run(ctx, x, shape):
        dims = ints(shape)
        if not allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    return run


def _reshape_v1(node, attrs, version):
    dims0 = list(attrs["shape"])
    return lambda ctx, x: x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims0)])


def _transpose(node, attrs, version):
    perm = attrs.get("perm")

    def run(ctx, x):
        return x.permute(perm if perm is not None else list(reversed(range(x.dim()))))

    return run


def _concat(node, attrs, version):
    axis = attrs.get("axis", 1 if version < 4 else None)
    if axis is None:
        raise UnsupportedOp("Concat without axis")
    return lambda ctx, *xs: torch.cat([x for x in xs if x is not None], dim=axis)


def _split(node, attrs, version):
    axis = attrs.get("axis", 0)
    attr_split = attrs.get("split")
    num_outputs = attrs.get("num_outputs")
    n_out = len(node.output)

    def run(ctx, x, split=None):
        a = _axis(axis, x.dim())
        sizes = ints(split) if version >= 13 else (list(attr_split) if attr_split else None)
        if not sizes:
            dim = x.shape[a]
            if num_outputs is not None:
                chunk = -(-dim // num_outputs)
                sizes = [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
            else:
                sizes = [dim // n_out] * n_out
        return tuple(torch.split(x, sizes, dim=a))

    return run


def _slice_tensor(x, starts, ends, axes, steps):
    rank = x.dim()
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    index: list[Any] = [slice(None)] * rank
    negative = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, rank)
        dim = x.shape[a]
        if st == 0:
            raise RuntimeError("Slice step 0")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s = min(max(s, 0), dim)
            e = min(max(e, 0), dim)
            index[a] = slice(s, e, st)
        else:
            s = min(max(s, 0), dim - 1)
            e = min(max(e, -1), dim - 1)
            negative.append((a, s, e, st))
    y = x[tuple(index)]
    for a, s, e, st in negative:
        idx = torch.arange(s, e, st, device=x.device, dtype=torch.int64)
        y = torch.index_select(y, a, idx)
    return y


def _slice_v1(node, attrs, version):
    starts, ends, axes = list(attrs["starts"]), list(attrs["ends"]), attrs.get("axes")
    return lambda ctx, x: _slice_tensor(x, starts, ends, list(axes) if axes is not None else None, None)


def _slice(node, attrs, version):
    def run(ctx, x, starts, ends, axes=None, steps=None):
        return _slice_tensor(x, ints(starts), ints(ends), ints(axes), ints(steps))

    return run


def _squeeze_v1(node, attrs, version):
    axes = attrs.get("axes")
    return lambda ctx, x: _squeeze(x, list(axes) if axes is not None else None)


def _squeeze_v13(node, attrs, version):
    return lambda ctx, x, axes=None: _squeeze(x, ints(axes))


def _squeeze(x, axes):
    if not axes:
        return torch.squeeze(x)
    return torch.squeeze(x, tuple(_axis(a, x.dim()) for a in axes))


def _unsqueeze(x, axes):
    out_rank = x.dim() + len(axes)
    for a in sorted(_axis(a, out_rank) for a in axes):
        x = torch.unsqueeze(x, a)
    return x


def _unsqueeze_v1(node, attrs, version):
    axes = list(attrs["axes"])
    return lambda ctx, x: _unsqueeze(x, axes)


def _unsqueeze_v13(node, attrs, version):
    return lambda ctx, x, axes: _unsqueeze(x, ints(axes))


def _constant_of_shape(node, attrs, version):
    value = attrs.get("value")
    if value is None:
        fill, dtype = 0.0, torch.float32
    else:
        fill, dtype = value.reshape(-1)[0].item(), value.dtype

    def run(ctx, shape):
        return torch.full(ints(shape), fill, dtype=dtype, device=shape.device)

    return run


def _expand(node, attrs, version):
    def run(ctx, x, shape):
        out = torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape)))
        return x.expand(out)

    return run


def _tile(node, attrs, version):
    return lambda ctx, x, repeats: x.repeat(ints(repeats))


def _range(node, attrs, version):
    def run(ctx, start, limit, delta):
        return torch.arange(_scalar(start), _scalar(limit), _scalar(delta), dtype=start.dtype, device=start.device)

    return run


def _pad_v2(node, attrs, version):
    pads = list(attrs.get("pads", attrs.get("paddings", [])))
    mode = attrs.get("mode", "constant")
    value = float(attrs.get("value", 0.0))
    _check_pad_mode(mode)
    return lambda ctx, x: _pad(x, pads, mode, value, None)


def _pad_v11(node, attrs, version):
    mode = attrs.get("mode", "constant")
    _check_pad_mode(mode)

    def run(ctx, x, pads, value=None, axes=None):
        v = _scalar(value) if value is not None and value.numel() else 0
        return _pad(x, ints(pads), mode, v, ints(axes))

    return run


def _check_pad_mode(mode: str) -> None:
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise UnsupportedOp(f"mode={mode!r}")


def _pad(x, pads, mode, value, axes):
    rank = x.dim()
    if axes is None:
        axes = list(range(rank))
    axes = [_axis(a, rank) for a in axes]
    n = len(axes)
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a] = pads[i]
        full[a + rank] = pads[i + n]
    if mode == "constant":
        first = next((i for i in range(rank) if full[i] or full[i + rank]), rank)
        sub = full[first:rank] + full[rank + first:]
        if not any(sub):
            return x
        return F.pad(x, _torch_pad_arg(sub), value=value)
    for a in range(rank):
        b, e = full[a], full[a + rank]
        if b == 0 and e == 0:
            continue
        dim = x.shape[a]
        idx = torch.arange(-b, dim + e, device=x.device)
        if mode == "edge":
            idx = idx.clamp(0, dim - 1)
        elif mode == "wrap":
            idx = torch.remainder(idx, dim)
        else:  # reflect
            period = 2 * (dim - 1)
            idx = torch.remainder(idx, period) if period > 0 else torch.zeros_like(idx)
            idx = torch.where(idx >= dim, period - idx, idx)
        x = torch.index_select(x, a, idx)
    return x


LOWERINGS: dict[str, Builder] = {
    "Shape": _shape,
    "Size": _size,
    "Flatten": _flatten,
    "Reshape@1": _reshape_v1,
    "Reshape@5": _reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "Split": _split,
    "Slice@1": _slice_v1,
    "Slice@10": _slice,
    "Squeeze@1": _squeeze_v1,
    "Squeeze@13": _squeeze_v13,
    "Unsqueeze@1": _unsqueeze_v1,
    "Unsqueeze@13": _unsqueeze_v13,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Tile": _tile,
    "Range": _range,
    "Pad@1": _pad_v2,
    "Pad@11": _pad_v11,
}
