"""Shared pieces of the torch lowerings: dtype maps, tensor/attribute decoding and small helpers.

A lowering (builder) is called once per node while the
:class:`~halp_onnx.torch.executor.OnnxModule` is built, as ``builder(node, attrs, version)``. It
parses and checks the attributes (raising :class:`UnsupportedOp` for anything it cannot execute, so
errors surface at construction) and returns the runtime function ``run(ctx, *inputs)``. ``ctx`` is
the executing module (read for ``training`` / ``train_bn``); ``inputs`` are torch tensors, ``None``
for absent optional inputs. ``run`` returns one tensor, or a tuple with one entry per node output.

Integer shape computations (Shape, Gather on shapes, Concat of dims...) run in torch too; values
that must be Python ints (Reshape targets, Slice bounds, pads, axes) are read with ``tolist()``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

Runner = Callable[..., Any]
Builder = Callable[[onnx.NodeProto, dict, int], Runner]


class UnsupportedOp(Exception):
    """Raised by a builder for an attribute/mode it cannot execute (re-raised as HalpError)."""


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

