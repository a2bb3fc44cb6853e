"""Built-in example models (no network, no torch): ``halp-onnx example NAME --out FILE``."""
from __future__ import annotations

import numpy as np
import onnx

from .builder import GraphBuilder
from .errors import HalpError


def cifar_resnet(blocks_per_stage: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A CIFAR-style ResNet (16/32/64 channels) with BatchNormalization and option-A shortcuts
    (stride-2 Slice plus zero channel padding), 1x3x32x32 input, 10 classes."""
    b = GraphBuilder("example_resnet", seed)
    x = b.input("input", [1, 3, 32, 32])
    x = b.op("Relu", [b.bn(b.conv(x, 3, 16, bias=False), 16)])
    c_in = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.op("Relu", [b.bn(b.conv(x, c_in, width, stride=stride, bias=False), width)])
            y = b.bn(b.conv(y, width, width, bias=False), width)
            if stride != 1 or c_in != width:
                sub = b.op("Slice", [x, b.const(np.array([0, 0], np.int64)), b.const(np.array([32, 32], np.int64)),
                                     b.const(np.array([2, 3], np.int64)), b.const(np.array([2, 2], np.int64))])
                pad = (width - c_in) // 2
                x = b.op("Pad", [sub, b.const(np.array([0, pad, 0, 0, 0, pad, 0, 0], np.int64))], mode="constant")
            x = b.op("Relu", [b.op("Add", [y, x])])
            c_in = width
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [x, b.weight((10, 64)), b.const(np.zeros(10, np.float32))],
                                         ["logits"], name="classifier", transB=1))
    b.output("logits")
    return b.model()


def mobilenet(seed: int = 0) -> onnx.ModelProto:
    """Inverted residuals with depthwise convs, squeeze-excitation, hard-swish, a concat; 1x3x64x64."""
    b = GraphBuilder("example_mobilenet", seed)
    x = b.input("input", [1, 3, 64, 64])
    x = b.op("HardSwish", [b.conv(x, 3, 16, stride=2)])
    for expand, c in ((4, 16), (4, 16)):
        hidden = c * expand
        y = b.op("HardSwish", [b.conv(x, c, hidden, k=1)])
        y = b.op("HardSwish", [b.conv(y, hidden, hidden, group=hidden)])
        s = b.op("GlobalAveragePool", [y])
        s = b.op("Relu", [b.conv(s, hidden, hidden // 4, k=1)])
        s = b.op("HardSigmoid", [b.conv(s, hidden // 4, hidden, k=1)], alpha=1 / 6, beta=0.5)
        y = b.op("Mul", [y, s])
        x = b.op("Add", [x, b.conv(y, hidden, c, k=1)])
    left = b.conv(x, 16, 24, k=1)
    right = b.op("MaxPool", [b.conv(x, 16, 8, k=3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = b.op("Relu", [b.op("Concat", [left, right], axis=1)])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [x, b.weight((10, 32)), b.const(np.zeros(10, np.float32))],
                                         ["logits"], name="classifier", transB=1))
    b.output("logits")
    return b.model()


EXAMPLES = {"resnet": cifar_resnet, "mobilenet": mobilenet}


def example(name: str) -> onnx.ModelProto:
    if name not in EXAMPLES:
        raise HalpError(f"example {name!r}: expected one of {', '.join(EXAMPLES)}", stage="example")
    return EXAMPLES[name]()
