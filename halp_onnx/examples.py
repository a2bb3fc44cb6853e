"""Built-in example models (no network, no torch): ``halp-onnx example NAME --out FILE``."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnx.numpy_helper

from .builder import GraphBuilder
from .errors import HalpError


def cifar_resnet(blocks_per_stage: int = 1, seed: int = 0, *, weights: dict | None = None,
                 batch: int | str = "N") -> onnx.ModelProto:
    """A CIFAR-style ResNet (16/32/64 channels) with BatchNormalization and option-A shortcuts
    (stride-2 Slice plus zero channel padding), ``batch`` x 3 x 32 x 32 input (a symbolic batch ``N``
    by default; an int fixes it), 10 classes.

    ``weights``: a state dict with the names of the classic CIFAR ResNet (``conv1.weight``,
    ``bn1.*``, ``layer1.0.conv1.weight``, ..., ``linear.*``), e.g. the pretrained ResNet-20/56 of
    ../shared (``blocks_per_stage`` 3 / 9); BatchNormalization stays a node (trainable as BN)."""
    b = GraphBuilder("example_resnet", seed)
    named: list[tuple[str, str]] = []  # (initializer, state-dict key)

    def conv(x, c_in, c_out, stride, key):
        y = b.conv(x, c_in, c_out, stride=stride, bias=False)
        named.append((b.nodes[-1].input[1], f"{key}.weight"))
        return y

    def bn(x, c, key):
        y = b.bn(x, c)
        for init, part in zip(b.nodes[-1].input[1:], ("weight", "bias", "running_mean", "running_var")):
            named.append((init, f"{key}.{part}"))
        return y

    x = b.input("input", [batch, 3, 32, 32])
    x = b.op("Relu", [bn(conv(x, 3, 16, 1, "conv1"), 16, "bn1")])
    c_in = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            key = f"layer{stage + 1}.{block}"
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.op("Relu", [bn(conv(x, c_in, width, stride, f"{key}.conv1"), width, f"{key}.bn1")])
            y = bn(conv(y, width, width, 1, f"{key}.conv2"), width, f"{key}.bn2")
            if stride != 1 or c_in != width:
                sub = b.op("Slice", [x, b.const(np.array([0, 0], np.int64)), b.const(np.array([32, 32], np.int64)),
                                     b.const(np.array([2, 3], np.int64)), b.const(np.array([2, 2], np.int64))])
                pad = (width - c_in) // 2
                x = b.op("Pad", [sub, b.const(np.array([0, pad, 0, 0, 0, pad, 0, 0], np.int64))], mode="constant")
            x = b.op("Relu", [b.op("Add", [y, x])])
            c_in = width
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    w, bias = b.weight((10, 64)), b.const(np.zeros(10, np.float32))
    named += [(w, "linear.weight"), (bias, "linear.bias")]
    b.nodes.append(onnx.helper.make_node("Gemm", [x, w, bias], ["logits"], name="classifier", transB=1))
    b.output("logits")
    if weights is not None:
        by_name = {t.name: i for i, t in enumerate(b.inits)}
        for init, key in named:
            if key not in weights:
                raise HalpError(f"weights: missing {key!r} for a CIFAR ResNet with {blocks_per_stage} blocks per "
                                "stage", stage="example")
            old = b.inits[by_name[init]]
            value = np.asarray(weights[key], dtype=np.float32)
            if tuple(value.shape) != tuple(old.dims):
                raise HalpError(f"weights: {key!r} has shape {value.shape}, expected {tuple(old.dims)}",
                                stage="example")
            b.inits[by_name[init]] = onnx.numpy_helper.from_array(value, init)
    return b.model()


def mobilenet(seed: int = 0, *, batch: int | str = "N") -> onnx.ModelProto:
    """Inverted residuals with depthwise convs, squeeze-excitation, hard-swish, a concat; ``batch`` x 3 x 64 x 64
    (a symbolic batch ``N`` by default)."""
    b = GraphBuilder("example_mobilenet", seed)
    x = b.input("input", [batch, 3, 64, 64])
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


EXAMPLES: dict[str, Callable[[], onnx.ModelProto]] = {"resnet": cifar_resnet, "mobilenet": mobilenet}


def example(name: str) -> onnx.ModelProto:
    if name not in EXAMPLES:
        raise HalpError(f"example {name!r}: expected one of {', '.join(EXAMPLES)}", stage="example")
    return EXAMPLES[name]()
