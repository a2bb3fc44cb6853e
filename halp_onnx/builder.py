"""A small ONNX graph builder with random weights (used by the built-in examples and the tests)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Append nodes one call at a time; every call returns the output tensor name."""

    def __init__(self, name: str = "graph", seed: int = 0, opset: int = 17):
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._n = 0

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def input(self, name: str, shape, dtype=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def output(self, name: str, dtype=TensorProto.FLOAT) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, None))

    def const(self, value, base: str = "c") -> str:
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape, base: str = "w", scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), base)

    def op(self, op_type: str, inputs, n_out: int = 1, base: str | None = None, **attrs):
        name = self._name(base or op_type.lower())
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    # -- common blocks -------------------------------------------------------------------------
    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1, group: int = 1, bias: bool = True) -> str:
        inputs = [x, self.weight((c_out, c_in // group, k, k))]
        if bias:
            inputs.append(self.const((self.rng.standard_normal(c_out) * 0.1).astype(np.float32), "b"))
        return self.op("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [(1 + 0.1 * r.standard_normal(c)), 0.1 * r.standard_normal(c), 0.1 * r.standard_normal(c),
                  1 + 0.1 * r.random(c)]
        return self.op("BatchNormalization", [x] + [self.const(p.astype(np.float32), "bn") for p in params],
                       epsilon=1e-5)

    def gemm(self, x: str, c_in: int, c_out: int) -> str:
        return self.op("Gemm", [x, self.weight((c_out, c_in)), self.const(np.zeros(c_out, np.float32), "b")], transB=1)

    def model(self, extra_opsets: dict[str, int] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="halp-onnx")
        model.ir_version = min(model.ir_version, 9)
        return onnx.shape_inference.infer_shapes(model)
