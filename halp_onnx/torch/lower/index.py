"""Torch lowerings of indexing ops: Gather, GatherElements, GatherND, ScatterND, ScatterElements."""
from __future__ import annotations

import torch

from ._common import Builder, UnsupportedOp, _axis


def _fix_index(idx: torch.Tensor, dim: int) -> torch.Tensor:
    idx = idx.long()
    return torch.where(idx < 0, idx + dim, idx)


def _gather(node, attrs, version):
    axis = attrs.get("axis", 0)

    def run(ctx, x, idx):
        a = _axis(axis, x.dim())
        idx = _fix_index(idx, x.shape[a])
        if idx.dim() == 0:
            return torch.select(x, a, int(idx))
        out = torch.index_select(x, a, idx.reshape(-1))
        return out.reshape(tuple(x.shape[:a]) + tuple(idx.shape) + tuple(x.shape[a + 1:]))

    return run


def _gather_elements(node, attrs, version):
    axis = attrs.get("axis", 0)

    def run(ctx, x, idx):
        a = _axis(axis, x.dim())
        return torch.gather(x, a, _fix_index(idx, x.shape[a]))

    return run


def _gather_nd(node, attrs, version):
    batch_dims = attrs.get("batch_dims", 0)
    if batch_dims:
        raise UnsupportedOp("batch_dims != 0")

    def run(ctx, x, idx):
        k = idx.shape[-1]
        idx = idx.long()
        flat = idx.reshape(-1, k)
        cols = [_fix_index(flat[:, i], x.shape[i]) for i in range(k)]
        out = x[tuple(cols)]
        return out.reshape(tuple(idx.shape[:-1]) + tuple(x.shape[k:]))

    return run


def _scatter_nd(node, attrs, version):
    reduction = attrs.get("reduction", "none")
    if reduction not in ("none", "add", "mul"):
        raise UnsupportedOp(f"reduction={reduction!r}")

    def run(ctx, x, idx, updates):
        k = idx.shape[-1]
        flat = idx.long().reshape(-1, k)
        cols = tuple(_fix_index(flat[:, i], x.shape[i]) for i in range(k))
        upd = updates.reshape((-1,) + tuple(x.shape[k:]))
        out = x.clone()
        if reduction == "none":
            out[cols] = upd
        elif reduction == "add":
            out = out.index_put(cols, upd, accumulate=True)
        else:
            out[cols] = out[cols] * upd
        return out

    return run


def _scatter_elements(node, attrs, version):
    axis = attrs.get("axis", 0)
    reduction = attrs.get("reduction", "none")
    reduce_map = {"none": None, "add": "sum", "mul": "prod", "max": "amax", "min": "amin"}
    if reduction not in reduce_map:
        raise UnsupportedOp(f"reduction={reduction!r}")

    def run(ctx, x, idx, updates):
        a = _axis(axis, x.dim())
        idx = _fix_index(idx, x.shape[a])
        if reduce_map[reduction] is None:
            return torch.scatter(x, a, idx, updates)
        return torch.scatter_reduce(x, a, idx, updates, reduce_map[reduction], include_self=True)

    return run


LOWERINGS: dict[str, Builder] = {
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "GatherND": _gather_nd,
    "ScatterND": _scatter_nd,
    "ScatterElements": _scatter_elements,
}
