"""Torch lowerings of ops that compute nothing of their own: Identity, Constant, Dropout."""
from __future__ import annotations

import torch

from ._common import Builder, UnsupportedOp, _scalar


def _identity(node, attrs, version):
    return lambda ctx, x: x


def constant_value(attrs: dict) -> torch.Tensor:
    """The value of a Constant node from its attributes."""
    if "value" in attrs:
        return attrs["value"]
    if "value_float" in attrs:
        return torch.tensor(attrs["value_float"], dtype=torch.float32)
    if "value_floats" in attrs:
        return torch.tensor(list(attrs["value_floats"]), dtype=torch.float32)
    if "value_int" in attrs:
        return torch.tensor(attrs["value_int"], dtype=torch.int64)
    if "value_ints" in attrs:
        return torch.tensor(list(attrs["value_ints"]), dtype=torch.int64)
    raise UnsupportedOp(f"Constant with attribute(s) {sorted(attrs)}")


def _constant(node, attrs, version):
    value = constant_value(attrs)
    return lambda ctx: value


def _dropout(node, attrs, version):
    attr_ratio = attrs.get("ratio", 0.5)
    n_out = len(node.output)

    def run(ctx, x, ratio=None, training_mode=None):
        p = float(_scalar(ratio)) if ratio is not None else attr_ratio
        if ctx.training and p > 0.0:
            mask = (torch.rand_like(x) >= p)
            y = x * mask / (1.0 - p)
        else:
            mask = torch.ones_like(x, dtype=torch.bool)
            y = x
        return (y, mask) if n_out > 1 else y

    return run


LOWERINGS: dict[str, Builder] = {
    "Identity": _identity,
    "Constant": _constant,
    "Dropout": _dropout,
}
