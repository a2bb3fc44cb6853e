"""Torch lowerings of linear algebra: MatMul, Gemm, Einsum, Trilu."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import Builder, _scalar


def _matmul(node, attrs, version):
    return lambda ctx, a, b: torch.matmul(a, b)


def _gemm(node, attrs, version):
    alpha = float(attrs.get("alpha", 1.0))
    beta = float(attrs.get("beta", 1.0))
    trans_a = bool(attrs.get("transA", 0))
    trans_b = bool(attrs.get("transB", 0))

    def run(ctx, a, b, c=None):
        if trans_a:
            a = a.transpose(0, 1)
        if trans_b and alpha == 1.0 and (c is None or beta == 1.0) and (c is None or c.dim() <= 1):
            return F.linear(a, b, c)
        if trans_b:
            b = b.transpose(0, 1)
        y = torch.matmul(a, b)
        if alpha != 1.0:
            y = y * alpha
        if c is not None and beta != 0.0:
            y = y + (c if beta == 1.0 else c * beta)
        return y

    return run


def _einsum(node, attrs, version):
    equation = attrs["equation"].replace(" ", "")
    return lambda ctx, *xs: torch.einsum(equation, *xs)


def _trilu(node, attrs, version):
    upper = bool(attrs.get("upper", 1))

    def run(ctx, x, k=None):
        kk = int(_scalar(k)) if k is not None else 0
        return torch.triu(x, kk) if upper else torch.tril(x, kk)

    return run


LOWERINGS: dict[str, Builder] = {
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Einsum": _einsum,
    "Trilu": _trilu,
}
