"""Torch lowerings of element-wise ops: unary math, activations, binary / variadic arithmetic and
comparisons, Clip, Where, Cast."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ._common import Builder, UnsupportedOp, torch_dtype

LOWERINGS: dict[str, Builder] = {}


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Builder:
    def builder(node, attrs, version):
        return lambda ctx, x: fn(x)

    return builder


_UNARY: dict[str, Callable[..., Any]] = {
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Exp": torch.exp,
    "Log": torch.log,
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,  # round-half-to-even in both
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Atan": torch.atan,
    "Softsign": F.softsign,
    "Softplus": F.softplus,
    "Not": torch.logical_not,
    "IsNaN": torch.isnan,
    "HardSwish": F.hardswish,
    "Mish": F.mish,
}
for _op, _fn in _UNARY.items():
    LOWERINGS[_op] = _unary(_fn)


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point() or a.is_complex():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.pow(a, b)
    return out if out.dtype == a.dtype else out.to(a.dtype)


_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Pow": _pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
}


def _binary(fn) -> Builder:
    def builder(node, attrs, version):
        if attrs.get("broadcast", 1) == 0 or "axis" in attrs:
            raise UnsupportedOp("legacy (opset < 7) broadcast/axis attributes")
        return lambda ctx, a, b: fn(a, b)

    return builder


for _op, _fn in _BINARY.items():
    LOWERINGS[_op] = _binary(_fn)


def _mod(node, attrs, version):
    if attrs.get("fmod", 0):
        return lambda ctx, a, b: torch.fmod(a, b)
    return lambda ctx, a, b: torch.remainder(a, b)


def _variadic(fn) -> Builder:
    def builder(node, attrs, version):
        def run(ctx, *xs):
            out = xs[0]
            for x in xs[1:]:
                out = fn(out, x)
            return out

        return run

    return builder


def _mean(node, attrs, version):
    def run(ctx, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out / len(xs)

    return run


def _where(node, attrs, version):
    return lambda ctx, c, a, b: torch.where(c.bool(), a, b)


def _clip_attr(node, attrs, version):
    lo = attrs.get("min", -math.inf)
    hi = attrs.get("max", math.inf)
    return lambda ctx, x: torch.clamp(x, lo, hi)


def _clip(node, attrs, version):
    def run(ctx, x, lo=None, hi=None):
        if lo is None and hi is None:
            return x
        if lo is not None and lo.dim() == 0 and hi is not None and hi.dim() == 0:
            return torch.clamp(x, lo.to(x.dtype), hi.to(x.dtype))
        if lo is not None:
            x = torch.maximum(x, lo.to(x.dtype))
        if hi is not None:
            x = torch.minimum(x, hi.to(x.dtype))
        return x

    return run


def _leaky_relu(node, attrs, version):
    alpha = attrs.get("alpha", 0.01)
    return lambda ctx, x: F.leaky_relu(x, alpha)


def _elu(node, attrs, version):
    alpha = attrs.get("alpha", 1.0)
    return lambda ctx, x: F.elu(x, alpha)


def _celu(node, attrs, version):
    alpha = attrs.get("alpha", 1.0)
    return lambda ctx, x: F.celu(x, alpha)


def _selu(node, attrs, version):
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    return lambda ctx, x: gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def _thresholded_relu(node, attrs, version):
    alpha = attrs.get("alpha", 1.0)
    return lambda ctx, x: torch.where(x > alpha, x, torch.zeros_like(x))


def _hard_sigmoid(node, attrs, version):
    alpha = attrs.get("alpha", 0.2)
    beta = attrs.get("beta", 0.5)
    if abs(alpha - 1.0 / 6.0) < 1e-7 and beta == 0.5:
        return lambda ctx, x: F.hardsigmoid(x)
    return lambda ctx, x: torch.clamp(x * alpha + beta, 0.0, 1.0)


def _gelu(node, attrs, version):
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise UnsupportedOp(f"approximate={approximate!r}")
    return lambda ctx, x: F.gelu(x, approximate=approximate)


def _gelu_ms(node, attrs, version):
    return lambda ctx, x: F.gelu(x)


def _prelu(node, attrs, version):
    return lambda ctx, x, slope: torch.where(x < 0, x * slope, x)


def _cast(node, attrs, version):
    dtype = torch_dtype(attrs["to"])
    return lambda ctx, x: x.to(dtype)


def _cast_like(node, attrs, version):
    return lambda ctx, x, like: x.to(like.dtype)


LOWERINGS.update({
    "Mod": _mod,
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Mean": _mean,
    "Where": _where,
    "Clip@1": _clip_attr,
    "Clip@11": _clip,
    "LeakyRelu": _leaky_relu,
    "Elu": _elu,
    "Celu": _celu,
    "Selu": _selu,
    "ThresholdedRelu": _thresholded_relu,
    "HardSigmoid": _hard_sigmoid,
    "Gelu": _gelu,
    "Gelu@ms": _gelu_ms,
    "PRelu": _prelu,
    "Cast": _cast,
    "CastLike": _cast_like,
})
