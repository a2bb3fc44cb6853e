"""Op table of the torch bridge: one converter per ONNX op, keyed by ``(domain, op_type)``.

A converter is registered with :func:`register` for the opset version it was introduced in
(``since``); :func:`lookup` picks the newest converter whose ``since`` is not above the model's
opset for that domain, like onnx2torch's converter registry.

A converter is called once per node while the :class:`~halp_onnx.torch.executor.OnnxModule` is
built, as ``builder(node, attrs, version)``. It parses and checks the attributes (raising
:class:`UnsupportedOp` for anything it cannot execute, so errors surface at construction) and
returns the runtime function ``run(ctx, *inputs)``. ``ctx`` is the executing module (read for
``training`` / ``train_bn``); ``inputs`` are torch tensors, ``None`` for absent optional inputs.
``run`` returns one tensor, or a tuple with one entry per node output.

Integer shape computations (Shape, Gather on shapes, Concat of dims...) run in torch too; values
that must be Python ints (Reshape targets, Slice bounds, pads, axes) are read with ``tolist()``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, numpy_helper

Runner = Callable[..., Any]
Builder = Callable[[onnx.NodeProto, dict, int], Runner]

_REGISTRY: dict[tuple[str, str], list[tuple[int, Builder]]] = {}


class UnsupportedOp(Exception):
    """Raised by a builder for an attribute/mode it cannot execute (re-raised as HalpError)."""


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register(op_type: str, domain: str = "", since: int = 1) -> Callable[[Builder], Builder]:
    """Register ``builder`` for ``domain::op_type`` from opset version ``since`` on."""

    def deco(fn: Builder) -> Builder:
        entries = _REGISTRY.setdefault((_norm_domain(domain), op_type), [])
        entries[:] = [e for e in entries if e[0] != since] + [(since, fn)]
        entries.sort(key=lambda e: e[0])
        return fn

    return deco


def lookup(domain: str, op_type: str, version: int | None) -> Builder | None:
    """The converter for ``domain::op_type`` at opset ``version`` (None: the newest one; a version
    below every registered ``since`` gets the oldest converter, leniently)."""
    entries = _REGISTRY.get((_norm_domain(domain), op_type))
    if not entries:
        return None
    if version is None:
        return entries[-1][1]
    best = None
    for since, fn in entries:
        if since <= version:
            best = fn
    return best if best is not None else entries[0][1]


def supported_ops() -> list[tuple[str, str]]:
    """All registered ``(domain, op_type)`` keys."""
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------------------------
# helpers

ONNX_TO_TORCH_DTYPE: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.BOOL: torch.bool,
    TensorProto.COMPLEX64: torch.complex64,
    TensorProto.COMPLEX128: torch.complex128,
}
for _name, _code in (("uint16", TensorProto.UINT16), ("uint32", TensorProto.UINT32), ("uint64", TensorProto.UINT64)):
    if hasattr(torch, _name):
        ONNX_TO_TORCH_DTYPE[_code] = getattr(torch, _name)

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def torch_dtype(onnx_type: int) -> torch.dtype:
    try:
        return ONNX_TO_TORCH_DTYPE[onnx_type]
    except KeyError:
        raise UnsupportedOp(f"ONNX dtype {TensorProto.DataType.Name(onnx_type)} has no torch equivalent") from None


def tensor_from_proto(t: onnx.TensorProto, base_dir: str = "") -> torch.Tensor:
    """A torch tensor holding an ONNX TensorProto's value (a copy)."""
    arr = numpy_helper.to_array(t, base_dir=base_dir)
    if t.data_type == TensorProto.BFLOAT16:
        return torch.from_numpy(np.asarray(arr, dtype=np.float32).copy()).to(torch.bfloat16)
    if t.data_type not in ONNX_TO_TORCH_DTYPE:
        raise UnsupportedOp(f"initializer {t.name!r} has dtype {TensorProto.DataType.Name(t.data_type)}")
    return torch.from_numpy(np.array(arr, copy=True)).to(ONNX_TO_TORCH_DTYPE[t.data_type])


def attrs_of(node: onnx.NodeProto) -> dict:
    """Attribute values of ``node`` (strings decoded, tensors as torch tensors)."""
    out = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            out[a.name] = tensor_from_proto(a.t)
        elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            out[a.name] = onnx.helper.get_attribute_value(a)
        else:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode("utf-8")
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                v = [s.decode("utf-8") for s in v]
            out[a.name] = v
    return out


def ints(t: torch.Tensor | None) -> list[int] | None:
    """A 0-d/1-d integer tensor as a list of Python ints."""
    if t is None:
        return None
    return [int(v) for v in t.reshape(-1).tolist()]


def _scalar(t: torch.Tensor):
    return t.reshape(-1)[0].item()


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _n_outputs(node: onnx.NodeProto) -> int:
    return len(node.output)


# --------------------------------------------------------------------------------------------
# element-wise ops


def _unary(op_type: str, fn: Callable[[torch.Tensor], torch.Tensor], since: int = 1) -> None:
    def builder(node, attrs, version):
        return lambda ctx, x: fn(x)

    register(op_type, since=since)(builder)


for _op, _fn in {
    "Identity": lambda x: x,
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
}.items():
    _unary(_op, _fn)


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


def _binary(op_type: str, fn) -> None:
    def builder(node, attrs, version):
        if attrs.get("broadcast", 1) == 0 or "axis" in attrs:
            raise UnsupportedOp("legacy (opset < 7) broadcast/axis attributes")
        return lambda ctx, a, b: fn(a, b)

    register(op_type)(builder)


for _op, _fn in _BINARY.items():
    _binary(_op, _fn)


@register("Mod")
def _mod(node, attrs, version):
    if attrs.get("fmod", 0):
        return lambda ctx, a, b: torch.fmod(a, b)
    return lambda ctx, a, b: torch.remainder(a, b)


def _variadic(op_type: str, fn) -> None:
    def builder(node, attrs, version):
        def run(ctx, *xs):
            out = xs[0]
            for x in xs[1:]:
                out = fn(out, x)
            return out

        return run

    register(op_type)(builder)


_variadic("Max", torch.maximum)
_variadic("Min", torch.minimum)
_variadic("Sum", torch.add)


@register("Mean")
def _mean(node, attrs, version):
    def run(ctx, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out / len(xs)

    return run


@register("Where")
def _where(node, attrs, version):
    return lambda ctx, c, a, b: torch.where(c.bool(), a, b)


@register("Clip", since=1)
def _clip_attr(node, attrs, version):
    lo = attrs.get("min", -math.inf)
    hi = attrs.get("max", math.inf)
    return lambda ctx, x: torch.clamp(x, lo, hi)


@register("Clip", since=11)
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


@register("LeakyRelu")
def _leaky_relu(node, attrs, version):
    alpha = attrs.get("alpha", 0.01)
    return lambda ctx, x: F.leaky_relu(x, alpha)


@register("Elu")
def _elu(node, attrs, version):
    alpha = attrs.get("alpha", 1.0)
    return lambda ctx, x: F.elu(x, alpha)


@register("Celu")
def _celu(node, attrs, version):
    alpha = attrs.get("alpha", 1.0)
    return lambda ctx, x: F.celu(x, alpha)


@register("Selu")
def _selu(node, attrs, version):
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    return lambda ctx, x: gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@register("ThresholdedRelu")
def _thresholded_relu(node, attrs, version):
    alpha = attrs.get("alpha", 1.0)
    return lambda ctx, x: torch.where(x > alpha, x, torch.zeros_like(x))


@register("HardSigmoid")
def _hard_sigmoid(node, attrs, version):
    alpha = attrs.get("alpha", 0.2)
    beta = attrs.get("beta", 0.5)
    if abs(alpha - 1.0 / 6.0) < 1e-7 and beta == 0.5:
        return lambda ctx, x: F.hardsigmoid(x)
    return lambda ctx, x: torch.clamp(x * alpha + beta, 0.0, 1.0)


@register("Gelu", since=20)
def _gelu(node, attrs, version):
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise UnsupportedOp(f"approximate={approximate!r}")
    return lambda ctx, x: F.gelu(x, approximate=approximate)


@register("Gelu", domain="com.microsoft")
def _gelu_ms(node, attrs, version):
    return lambda ctx, x: F.gelu(x)


@register("PRelu")
def _prelu(node, attrs, version):
    return lambda ctx, x, slope: torch.where(x < 0, x * slope, x)


def _softmax_builder(fn):
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


for _op, _fn in (("Softmax", torch.softmax), ("LogSoftmax", torch.log_softmax)):
    register(_op, since=1)(_softmax_builder(_fn))
    register(_op, since=13)(_softmax_builder(_fn))


@register("Cast")
def _cast(node, attrs, version):
    dtype = torch_dtype(attrs["to"])
    return lambda ctx, x: x.to(dtype)


@register("CastLike")
def _cast_like(node, attrs, version):
    return lambda ctx, x, like: x.to(like.dtype)


# --------------------------------------------------------------------------------------------
# linear algebra


@register("MatMul")
def _matmul(node, attrs, version):
    return lambda ctx, a, b: torch.matmul(a, b)


@register("Gemm")
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


@register("Einsum")
def _einsum(node, attrs, version):
    equation = attrs["equation"].replace(" ", "")
    return lambda ctx, *xs: torch.einsum(equation, *xs)


@register("Trilu")
def _trilu(node, attrs, version):
    upper = bool(attrs.get("upper", 1))

    def run(ctx, x, k=None):
        kk = int(_scalar(k)) if k is not None else 0
        return torch.triu(x, kk) if upper else torch.tril(x, kk)

    return run


# --------------------------------------------------------------------------------------------
# convolution / pooling


def _same_pads(in_sizes, kernel, strides, dilations, mode: str) -> list[int]:
    """ONNX ``auto_pad`` SAME_UPPER/SAME_LOWER pads in ONNX order (begins then ends)."""
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small = total // 2
        if mode == "SAME_UPPER":
            begins.append(small)
            ends.append(total - small)
        else:
            begins.append(total - small)
            ends.append(small)
    return begins + ends


def _torch_pad_arg(pads: list[int]) -> list[int]:
    """ONNX pads (x1_begin, x2_begin, ..., x1_end, x2_end) of the trailing dims -> F.pad order."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _resolve_pads(attrs, x, kernel, strides, dilations) -> list[int]:
    nd = len(kernel)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(list(x.shape[2:]), kernel, strides, dilations, auto_pad)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    return list(attrs.get("pads", [0] * (2 * nd)))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@register("Conv")
def _conv(node, attrs, version):
    group = attrs.get("group", 1)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise UnsupportedOp(f"auto_pad={auto_pad!r}")

    def run(ctx, x, w, b=None):
        nd = w.dim() - 2
        if nd not in _CONV:
            raise RuntimeError(f"Conv with {nd} spatial dims")
        kernel = list(attrs.get("kernel_shape", w.shape[2:]))
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        pads = _resolve_pads(attrs, x, kernel, strides, dilations)
        if pads[:nd] == pads[nd:]:
            padding = pads[:nd]
        else:
            x = F.pad(x, _torch_pad_arg(pads))
            padding = [0] * nd
        return _CONV[nd](x, w, b, strides, padding, dilations, group)

    return run


@register("ConvTranspose")
def _conv_transpose(node, attrs, version):
    group = attrs.get("group", 1)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise UnsupportedOp(f"auto_pad={auto_pad!r}")

    def run(ctx, x, w, b=None):
        nd = w.dim() - 2
        kernel = list(attrs.get("kernel_shape", w.shape[2:]))
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        out_pad = list(attrs.get("output_padding", [0] * nd))
        in_sizes = list(x.shape[2:])
        full = [s * (n - 1) + op + (k - 1) * d + 1
                for n, k, s, d, op in zip(in_sizes, kernel, strides, dilations, out_pad)]
        output_shape = attrs.get("output_shape")
        if output_shape is not None:
            output_shape = list(output_shape)[-nd:]
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            output_shape = [n * s for n, s in zip(in_sizes, strides)]
        if output_shape is not None:
            begins, ends = [], []
            for f, o in zip(full, output_shape):
                total = f - o
                if auto_pad == "SAME_UPPER":
                    begins.append(total // 2)
                    ends.append(total - total // 2)
                else:
                    begins.append(total - total // 2)
                    ends.append(total // 2)
            pads = begins + ends
        elif auto_pad == "VALID":
            pads = [0] * (2 * nd)
        else:
            pads = list(attrs.get("pads", [0] * (2 * nd)))
        if pads[:nd] == pads[nd:] and all(op < max(s, d) for op, s, d in zip(out_pad, strides, dilations)) \
                and all(p >= 0 for p in pads):
            return _CONV_T[nd](x, w, b, strides, pads[:nd], out_pad, group, dilations)
        y = _CONV_T[nd](x, w, None, strides, 0, 0, group, dilations)
        # append output_padding, then crop (or zero-extend) pads begin/end
        crop = [-p for p in pads[:nd]] + [op - p for op, p in zip(out_pad, pads[nd:])]
        y = F.pad(y, _torch_pad_arg(crop))
        if b is not None:
            y = y + b.reshape([1, -1] + [1] * nd)
        return y

    return run


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@register("MaxPool")
def _max_pool(node, attrs, version):
    if _n_outputs(node) > 1 and node.output[1]:
        raise UnsupportedOp("the Indices output")
    if attrs.get("storage_order", 0):
        raise UnsupportedOp("storage_order=1")
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    fn = _MAX_POOL.get(nd)
    if fn is None:
        raise UnsupportedOp(f"{nd}-d pooling")

    def run(ctx, x):
        pads = _resolve_pads(attrs, x, kernel, strides, dilations)
        padding = pads[:nd]
        if pads[:nd] != pads[nd:] or any(2 * p > k for p, k in zip(padding, kernel)):
            x = F.pad(x, _torch_pad_arg(pads), value=-math.inf if x.is_floating_point() else torch.iinfo(x.dtype).min)
            padding = [0] * nd
        return fn(x, kernel, strides, padding, dilations, ceil_mode)

    return run


@register("AveragePool")
def _avg_pool(node, attrs, version):
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    if any(d != 1 for d in dilations):
        raise UnsupportedOp("dilations != 1")
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    count_include_pad = bool(attrs.get("count_include_pad", 0))
    fn = _AVG_POOL.get(nd)
    if fn is None:
        raise UnsupportedOp(f"{nd}-d pooling")

    def run(ctx, x):
        pads = _resolve_pads(attrs, x, kernel, strides, dilations)
        padding = pads[:nd]
        if pads[:nd] == pads[nd:] and all(2 * p <= k for p, k in zip(padding, kernel)):
            return fn(x, kernel, strides, padding, ceil_mode, count_include_pad)
        xp = F.pad(x, _torch_pad_arg(pads))
        out = fn(xp, kernel, strides, 0, ceil_mode, True)
        if count_include_pad:
            return out
        ones = F.pad(torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device), _torch_pad_arg(pads))
        return out / fn(ones, kernel, strides, 0, ceil_mode, True)

    return run


@register("LpPool")
def _lp_pool(node, attrs, version):
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    p = float(attrs.get("p", 2))
    strides = list(attrs.get("strides", [1] * nd))
    ceil_mode = bool(attrs.get("ceil_mode", 0))

    def run(ctx, x):
        pads = _resolve_pads(attrs, x, kernel, strides, [1] * nd)
        x = F.pad(x, _torch_pad_arg(pads))
        s = _AVG_POOL[nd](x.abs().pow(p), kernel, strides, 0, ceil_mode, True) * math.prod(kernel)
        return s.pow(1.0 / p)

    return run


@register("GlobalAveragePool")
def _global_avg_pool(node, attrs, version):
    return lambda ctx, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool")
def _global_max_pool(node, attrs, version):
    return lambda ctx, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# --------------------------------------------------------------------------------------------
# normalization


@register("BatchNormalization")
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


@register("InstanceNormalization")
def _instance_norm(node, attrs, version):
    eps = float(attrs.get("epsilon", 1e-5))
    return lambda ctx, x, scale, bias: F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@register("LayerNormalization", since=17)
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


@register("GroupNormalization", since=18)
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


@register("LpNormalization")
def _lp_norm(node, attrs, version):
    axis = attrs.get("axis", -1)
    p = attrs.get("p", 2)
    return lambda ctx, x: x / torch.linalg.vector_norm(x, p, dim=axis, keepdim=True)


# --------------------------------------------------------------------------------------------
# reductions


def _reduce_builder(fn, axes_as_input: bool):
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


for _op, (_fn, _since) in _REDUCE.items():
    register(_op, since=1)(_reduce_builder(_fn, False))
    register(_op, since=_since)(_reduce_builder(_fn, True))


def _arg_builder(fn):
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


register("ArgMax")(_arg_builder(torch.argmax))
register("ArgMin")(_arg_builder(torch.argmin))


@register("CumSum")
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


@register("TopK", since=10)
def _topk(node, attrs, version):
    axis = attrs.get("axis", -1)
    largest = bool(attrs.get("largest", 1))
    sorted_ = bool(attrs.get("sorted", 1))

    def run(ctx, x, k):
        v, i = torch.topk(x, int(_scalar(k)), dim=axis, largest=largest, sorted=sorted_)
        return v, i

    return run


# --------------------------------------------------------------------------------------------
# shape manipulation


@register("Shape")
def _shape(node, attrs, version):
    start = attrs.get("start", 0)
    end = attrs.get("end")

    def run(ctx, x):
        dims = list(x.shape)
        dims = dims[start:end] if end is not None else dims[start:]
        return torch.tensor(dims, dtype=torch.int64, device=x.device)

    return run


@register("Size")
def _size(node, attrs, version):
    return lambda ctx, x: torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@register("Flatten")
def _flatten(node, attrs, version):
    axis = attrs.get("axis", 1)

    def run(ctx, x):
        a = _axis(axis, x.dim())
        return x.reshape(int(math.prod(x.shape[:a])), int(math.prod(x.shape[a:])))

    return run


@register("Reshape", since=5)
def _reshape(node, attrs, version):
    allowzero = bool(attrs.get("allowzero", 0))

    def run(ctx, x, shape):
        dims = ints(shape)
        if not allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    return run


@register("Reshape", since=1)
def _reshape_v1(node, attrs, version):
    dims0 = list(attrs["shape"])
    return lambda ctx, x: x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims0)])


@register("Transpose")
def _transpose(node, attrs, version):
    perm = attrs.get("perm")

    def run(ctx, x):
        return x.permute(perm if perm is not None else list(reversed(range(x.dim()))))

    return run


@register("Concat")
def _concat(node, attrs, version):
    axis = attrs.get("axis", 1 if version < 4 else None)
    if axis is None:
        raise UnsupportedOp("Concat without axis")
    return lambda ctx, *xs: torch.cat([x for x in xs if x is not None], dim=axis)


@register("Split")
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


@register("Slice", since=1)
def _slice_v1(node, attrs, version):
    starts, ends, axes = list(attrs["starts"]), list(attrs["ends"]), attrs.get("axes")
    return lambda ctx, x: _slice_tensor(x, starts, ends, list(axes) if axes is not None else None, None)


@register("Slice", since=10)
def _slice(node, attrs, version):
    def run(ctx, x, starts, ends, axes=None, steps=None):
        return _slice_tensor(x, ints(starts), ints(ends), ints(axes), ints(steps))

    return run


@register("Squeeze", since=1)
def _squeeze_v1(node, attrs, version):
    axes = attrs.get("axes")
    return lambda ctx, x: _squeeze(x, list(axes) if axes is not None else None)


@register("Squeeze", since=13)
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


@register("Unsqueeze", since=1)
def _unsqueeze_v1(node, attrs, version):
    axes = list(attrs["axes"])
    return lambda ctx, x: _unsqueeze(x, axes)


@register("Unsqueeze", since=13)
def _unsqueeze_v13(node, attrs, version):
    return lambda ctx, x, axes: _unsqueeze(x, ints(axes))


def _fix_index(idx: torch.Tensor, dim: int) -> torch.Tensor:
    idx = idx.long()
    return torch.where(idx < 0, idx + dim, idx)


@register("Gather")
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


@register("GatherElements")
def _gather_elements(node, attrs, version):
    axis = attrs.get("axis", 0)

    def run(ctx, x, idx):
        a = _axis(axis, x.dim())
        return torch.gather(x, a, _fix_index(idx, x.shape[a]))

    return run


@register("GatherND")
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


@register("ScatterND")
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


@register("ScatterElements")
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


@register("Constant")
def _constant(node, attrs, version):
    value = constant_value(attrs)
    return lambda ctx: value


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


@register("ConstantOfShape")
def _constant_of_shape(node, attrs, version):
    value = attrs.get("value")
    if value is None:
        fill, dtype = 0.0, torch.float32
    else:
        fill, dtype = value.reshape(-1)[0].item(), value.dtype

    def run(ctx, shape):
        return torch.full(ints(shape), fill, dtype=dtype, device=shape.device)

    return run


@register("Expand")
def _expand(node, attrs, version):
    def run(ctx, x, shape):
        out = torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape)))
        return x.expand(out)

    return run


@register("Tile")
def _tile(node, attrs, version):
    return lambda ctx, x, repeats: x.repeat(ints(repeats))


@register("Range")
def _range(node, attrs, version):
    def run(ctx, start, limit, delta):
        return torch.arange(_scalar(start), _scalar(limit), _scalar(delta), dtype=start.dtype, device=start.device)

    return run


@register("Dropout")
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


@register("Pad", since=1)
def _pad_v2(node, attrs, version):
    pads = list(attrs.get("pads", attrs.get("paddings", [])))
    mode = attrs.get("mode", "constant")
    value = float(attrs.get("value", 0.0))
    _check_pad_mode(mode)
    return lambda ctx, x: _pad(x, pads, mode, value, None)


@register("Pad", since=11)
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


@register("DepthToSpace")
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


@register("SpaceToDepth")
def _space_to_depth(node, attrs, version):
    bs = attrs["blocksize"]

    def run(ctx, x):
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * bs * bs, h // bs, w // bs)

    return run


# --------------------------------------------------------------------------------------------
# Resize / Upsample (separable, exact ONNX coordinate semantics)


def _source_coords(out_size: int, in_size: int, scale: float, mode: str, device, roi=None):
    x = torch.arange(out_size, dtype=torch.float64, device=device)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_size > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        return x * ((in_size - 1) / (out_size - 1)) if out_size > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "half_pixel_symmetric":
        adj = out_size / (scale * in_size)
        center = in_size / 2
        offset = center * (1 - adj)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out_size > 1:
            return start * (in_size - 1) + x * (end - start) * (in_size - 1) / (out_size - 1)
        return torch.full_like(x, 0.5 * (start + end) * (in_size - 1))
    raise RuntimeError(f"coordinate_transformation_mode={mode!r}")


def _nearest_index(coords, mode: str, in_size: int, scale: float):
    if mode == "simple":  # Resize-10 / Upsample: truncate when upsampling, ceil when downsampling
        mode = "ceil" if scale < 1 else "floor"
    if mode == "round_prefer_floor":
        idx = torch.where(coords == torch.floor(coords) + 0.5, torch.floor(coords), torch.round(coords))
    elif mode == "round_prefer_ceil":
        idx = torch.where(coords == torch.floor(coords) + 0.5, torch.ceil(coords), torch.round(coords))
    elif mode == "floor":
        idx = torch.floor(coords)
    else:
        idx = torch.ceil(coords)
    return idx.long().clamp(0, in_size - 1)


def _resize_axis(x, axis, out_size, scale, attrs, roi):
    in_size = x.shape[axis]
    mode = attrs["mode"]
    ctm = attrs["coordinate_transformation_mode"]
    coords = _source_coords(out_size, in_size, scale, ctm, x.device, roi)
    shape = [1] * x.dim()
    shape[axis] = out_size
    extrapolation = attrs.get("extrapolation_value", 0.0)
    outside = (coords < 0) | (coords > in_size - 1) if ctm == "tf_crop_and_resize" else None
    if mode == "nearest":
        y = torch.index_select(x, axis, _nearest_index(coords, attrs.get("nearest_mode", "round_prefer_floor"), in_size, scale))
    elif mode == "linear":
        coords = coords.clamp(0, in_size - 1)
        lo = torch.floor(coords).long().clamp(0, in_size - 1)
        hi = (lo + 1).clamp(max=in_size - 1)
        w = (coords - lo.double()).to(x.dtype).reshape(shape)
        y = torch.index_select(x, axis, lo) * (1 - w) + torch.index_select(x, axis, hi) * w
    else:  # cubic
        a = attrs.get("cubic_coeff_a", -0.75)
        exclude = bool(attrs.get("exclude_outside", 0))
        base = torch.floor(coords)
        t = coords - base
        taps, weights = [], []
        for off in (-1, 0, 1, 2):
            d = (t - off).abs()
            wgt = torch.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                              torch.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, torch.zeros_like(d)))
            pos = base.long() + off
            if exclude:
                wgt = torch.where((pos < 0) | (pos >= in_size), torch.zeros_like(wgt), wgt)
            taps.append(pos.clamp(0, in_size - 1))
            weights.append(wgt)
        if exclude:
            total = sum(weights)
            weights = [w_ / total for w_ in weights]
        y = sum(torch.index_select(x, axis, p) * w_.to(x.dtype).reshape(shape) for p, w_ in zip(taps, weights))
    if outside is not None:
        y = torch.where(outside.reshape(shape), torch.full_like(y, extrapolation), y)
    return y


def _resize_run(x, scales, sizes, attrs, roi):
    rank = x.dim()
    axes = list(attrs.get("axes") or range(rank))
    axes = [_axis(a, rank) for a in axes]
    if sizes is not None and len(sizes) == len(axes) and attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        policy = attrs["keep_aspect_ratio_policy"]
        ratios = [s / x.shape[a] for s, a in zip(sizes, axes)]
        r = min(ratios) if policy == "not_larger" else max(ratios)
        scales = [r] * len(axes)
        sizes = [int(math.floor(r * x.shape[a] + 0.5)) for a in axes]
    elif sizes is not None and len(sizes) == len(axes):
        scales = [s / x.shape[a] for s, a in zip(sizes, axes)]
    elif scales is not None and len(scales) == len(axes):
        sizes = [int(math.floor(x.shape[a] * s)) for a, s in zip(axes, scales)]
    else:
        raise RuntimeError("Resize needs scales or sizes")
    for i, a in enumerate(axes):
        if sizes[i] == x.shape[a] and scales[i] == 1.0 and attrs["coordinate_transformation_mode"] != "tf_crop_and_resize":
            continue
        r = None
        if roi is not None and len(roi) == 2 * len(axes):
            r = (roi[i], roi[i + len(axes)])
        elif roi is not None and len(roi) == 2 * rank:
            r = (roi[a], roi[a + rank])
        x = _resize_axis(x, a, sizes[i], scales[i], attrs, r)
    return x


def _resize_attrs(attrs, version):
    out = dict(attrs)
    out.setdefault("mode", "nearest")
    out.setdefault("coordinate_transformation_mode", "asymmetric" if version < 11 else "half_pixel")
    if version < 11:
        out["nearest_mode"] = "simple"
    if out["mode"] not in ("nearest", "linear", "cubic", "bilinear"):
        raise UnsupportedOp(f"mode={out['mode']!r}")
    if out["mode"] == "bilinear":
        out["mode"] = "linear"
    if out.get("antialias", 0):
        raise UnsupportedOp("antialias=1")
    return out


@register("Resize", since=10)
def _resize_v10(node, attrs, version):
    a = _resize_attrs(attrs, version)
    return lambda ctx, x, scales: _resize_run(x, [float(v) for v in scales.tolist()], None, a, None)


@register("Resize", since=11)
def _resize(node, attrs, version):
    a = _resize_attrs(attrs, version)

    def run(ctx, x, roi=None, scales=None, sizes=None):
        sc = [float(v) for v in scales.tolist()] if scales is not None and scales.numel() else None
        sz = ints(sizes) if sizes is not None and sizes.numel() else None
        r = [float(v) for v in roi.tolist()] if roi is not None and roi.numel() else None
        return _resize_run(x, sc, sz, a, r)

    return run


@register("Upsample", since=1)
def _upsample(node, attrs, version):
    a = _resize_attrs(attrs, 10)
    attr_scales = attrs.get("scales")

    def run(ctx, x, scales=None):
        sc = [float(v) for v in scales.tolist()] if scales is not None else list(attr_scales)
        return _resize_run(x, sc, None, a, None)

    return run
