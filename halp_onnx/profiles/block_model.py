"""One-block ONNX models: what a backend times for a (signature, c_in, c_out) point.

The model computes what the runtime runs as one kernel in the whole graph: the GEMM-like op with
its fused epilogue (activation, residual ``Add`` with a second input), or one memory-bound op
(``Elementwise`` / ``Pool`` blocks name their ONNX op in ``epilogue[0]``). Weights are random;
only shapes matter. Every backend (onnxruntime, TensorRT, torch via the bridge) times this same
model, so a table measured by one is comparable with another.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import HalpError
from ..ops.table import ANCHOR_OPS, SPATIAL_ANCHOR_OPS, Latency, latency_role
from .signature import BlockSignature

STAGE = "profiles"
OPSET = 17

# memory-bound ops timed as themselves; anything else that moves channels (Concat, Slice, Pad,
# Transpose, ...) is timed as a copy of the same size (an Identity-like unary op)
BINARY_OPS = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Pow")
UNARY_OPS = ("Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Exp", "Abs", "Neg",
             "Sqrt", "Reciprocal", "LeakyRelu", "Elu", "Selu", "Softplus", "Mish", "Clip")
COPY_PROXY = "Relu"
_ONNX_DTYPE = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "int8": TensorProto.FLOAT}
_NP_DTYPE = {"fp32": np.float32, "fp16": np.float16, "int8": np.float32}


def timed_op(sig: BlockSignature) -> str:
    """The ONNX op a memory-bound block is timed as (its own, or the copy proxy)."""
    op = sig.epilogue[0] if sig.epilogue else ""
    if sig.op == "Pool":
        return op if op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool") else (
            "GlobalAveragePool" if not sig.kernel else "MaxPool")
    if op in BINARY_OPS or op in UNARY_OPS or op == "BatchNormalization":
        return op
    return COPY_PROXY


def input_shape(sig: BlockSignature, c_in: int) -> tuple[int, ...]:
    if sig.op in ("Gemm",):
        return (sig.batch * sig.in_hw[0], c_in)
    if sig.op == "MatMul":
        return (sig.batch, sig.in_hw[0], c_in)
    if sig.op == "Elementwise":
        return (sig.batch, c_in, sig.in_hw[0])
    return (sig.batch, c_in, *sig.in_hw)


def block_model(sig: BlockSignature, c_in: int, c_out: int, *, seed: int = 0) -> onnx.ModelProto:
    """The one-block model for ``sig`` at ``(c_in, c_out)``: input ``x`` (and ``r`` for a fused
    residual Add), output ``y``."""
    if c_in <= 0 or c_out <= 0:
        raise HalpError(f"block {sig.key()}: channels must be positive, got c_in={c_in} c_out={c_out}", stage=STAGE)
    rng = np.random.default_rng(seed)
    dt, npdt = _ONNX_DTYPE[sig.dtype], _NP_DTYPE[sig.dtype]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs = [helper.make_tensor_value_info("x", dt, list(input_shape(sig, c_in)))]

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value).astype(npdt), name))
        return name

    def node(op: str, ins: list[str], **attrs) -> str:
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, ins, [out], name=f"{op.lower()}_{len(nodes)}", **attrs))
        return out

    if sig.op in SPATIAL_ANCHOR_OPS:
        cpg = sig.channels_per_group
        if cpg is None:
            group = 1
        elif sig.is_depthwise:
            group = c_in
            if c_out % c_in:
                raise HalpError(f"block {sig.key()}: depthwise needs c_out a multiple of c_in, got {c_in}, {c_out}",
                                stage=STAGE)
        else:
            if c_in % cpg:
                raise HalpError(f"block {sig.key()}: c_in={c_in} is not a multiple of {cpg} channels per group",
                                stage=STAGE)
            group = c_in // cpg
        if sig.op == "Conv":
            w_shape = (c_out, c_in // group, *sig.kernel)
        else:
            w_shape = (c_in, c_out // group, *sig.kernel)
        fan_in = int(np.prod(w_shape[1:]))
        w = const("w", rng.standard_normal(w_shape) / np.sqrt(max(fan_in, 1)))
        b = const("b", rng.standard_normal(c_out) * 0.1)
        y = node(sig.op, ["x", w, b], kernel_shape=list(sig.kernel), strides=list(sig.stride), pads=list(sig.pads),
                 dilations=list(sig.dilation), group=group)
        out_shape = (sig.batch, c_out, *sig.out_hw())
    elif sig.op in ("Gemm", "MatMul"):
        w = const("w", rng.standard_normal((c_in, c_out)) / np.sqrt(c_in))
        if sig.op == "Gemm":
            y = node("Gemm", ["x", w, const("b", rng.standard_normal(c_out) * 0.1)])
            out_shape = (sig.batch * sig.in_hw[0], c_out)
        else:
            y = node("MatMul", ["x", w])
            out_shape = (sig.batch, sig.in_hw[0], c_out)
    elif sig.op in ("Pool", "Elementwise", "Other"):
        op = timed_op(sig)
        if sig.op == "Pool":
            attrs = {} if op.startswith("Global") else dict(kernel_shape=list(sig.kernel), strides=list(sig.stride),
                                                            pads=list(sig.pads))
            y = node(op, ["x"], **attrs)
        elif op in BINARY_OPS:
            inputs.append(helper.make_tensor_value_info("x2", dt, list(input_shape(sig, c_in))))
            y = node(op, ["x", "x2"])
        elif op == "BatchNormalization":
            c = c_in
            y = node(op, ["x", const("s", np.ones(c)), const("bb", np.zeros(c)), const("m", np.zeros(c)),
                          const("v", np.ones(c))])
        else:
            y = node(op, ["x"])
        out_shape = None
    else:  # pragma: no cover - signatures validate their op
        raise HalpError(f"block {sig.key()}: no block model for op {sig.op}", stage=STAGE)

    epilogue = sig.epilogue if sig.op in ANCHOR_OPS else ()
    pre = y  # the anchor's output, which a gating op after an activation multiplies (SiLU: x * sigmoid(x))
    for op in epilogue:
        if latency_role(op) is Latency.NORM:
            continue  # folded into the weights by every runtime
        if op == "Add":
            if out_shape is None:  # only anchors have epilogues, and every anchor branch sets out_shape
                raise TypeError(f"block {sig.key()}: no output shape for the residual input")
            inputs.append(helper.make_tensor_value_info("r", dt, list(out_shape)))
            y = node("Add", [y, "r"])
        elif op in BINARY_OPS:
            y = node(op, [pre, y])
        elif op == "Clip":
            y = node("Clip", [y, const(f"lo{len(nodes)}", np.array(0.0)), const(f"hi{len(nodes)}", np.array(6.0))])
        else:
            y = node(op, [y])
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "block", inputs, [helper.make_tensor_value_info("y", dt, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="halp-onnx")
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    y_info = next(v for v in inferred.graph.value_info if v.name == "y") if not any(
        o.type.tensor_type.HasField("shape") for o in inferred.graph.output) else inferred.graph.output[0]
    model.graph.output[0].CopyFrom(y_info)
    return model


def block_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for a block model (static shapes)."""
    from ..passes.verify import random_inputs

    return random_inputs(model, np.random.default_rng(seed))
