"""Opsets 9 to 21 (attribute-vs-input forms of Slice, Pad, Split, Reduce*, Squeeze) and both torch exporters."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from halp_onnx import prune
from halp_onnx.builder import GraphBuilder


def split_pad_model(opset: int) -> onnx.ModelProto:
    """Channel Slice + Split + channel Pad + ReduceMean, each in the form its opset uses
    (attributes before opset 10/11/13/18, constant inputs after)."""
    b = GraphBuilder(opset=opset)
    i64 = lambda v: b.const(np.array(v, np.int64))  # noqa: E731
    x = b.input("x", [1, 3, 8, 8])
    a = b.op("Relu", [b.conv(x, 3, 12)])
    if opset < 10:  # channels 0..9, rows 1..7
        s = b.op("Slice", [a], starts=[0, 1], ends=[10, 8], axes=[1, 2])
    else:
        s = b.op("Slice", [a, i64([0, 1]), i64([10, 8]), i64([1, 2])])
    if opset < 13:
        p, q = b.op("Split", [s], n_out=2, axis=1, split=[4, 6])
    elif opset < 18:
        p, q = b.op("Split", [s, i64([4, 6])], n_out=2, axis=1)
    else:
        p, q = b.op("Split", [s, i64([4, 6])], n_out=2, axis=1)
    pads = [0, 2, 0, 0, 0, 2, 0, 0]  # channel padding
    p = b.op("Pad", [p], pads=pads) if opset < 11 else b.op("Pad", [p, i64(pads)])
    y = b.op("Add", [p, b.conv(q, 6, 8, k=1)])
    if opset < 18:
        y = b.op("ReduceMean", [y], axes=[2, 3], keepdims=0)
    else:
        y = b.op("ReduceMean", [y, i64([2, 3])], keepdims=0)
    b.nodes.append(onnx.helper.make_node("Gemm", [y, b.weight((4, 8)), b.const(np.zeros(4, np.float32))], ["out"],
                                         name="head", transB=1))
    b.output("out")
    return b.model()


@pytest.mark.parametrize("opset", [9, 10, 11, 13, 17, 18, 21])
def test_every_opset(opset):
    model = split_pad_model(opset)
    assert model.opset_import[0].version == opset
    onnx.checker.check_model(model, full_check=True)
    result = prune(model, 0.3)
    assert result.verification.passed and result.verification.input_sensitive
    assert result.rewrite.params[1] < result.rewrite.params[0]
    onnx.checker.check_model(result.model, full_check=True)


def test_opset_out_of_range_is_refused():
    from halp_onnx import HalpError

    model = split_pad_model(13)
    model.opset_import[0].version = 8
    with pytest.raises(HalpError, match="opset 8 is not supported"):
        prune(model, 0.3)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_both_torch_exporters(tmp_path, exporter):
    torch = pytest.importorskip("torch")
    from bench.zoo import cifar_resnet, export_torch_module

    torch.manual_seed(0)
    path = export_torch_module(cifar_resnet(20).eval(), torch.randn(1, 3, 32, 32), tmp_path / "r20.onnx", exporter)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Pad" in ops and "BatchNormalization" not in ops  # the exporter folded BN into the convs
    result = prune(path, 0.3)
    assert result.verification.passed and result.verification.input_sensitive


def test_unfolded_batchnorm_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from bench.zoo import cifar_resnet

    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "r20_bn.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 32, 32), str(path), dynamo=False, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    result = prune(path, 0.3)
    assert result.verification.passed and result.verification.input_sensitive
    assert any(n.op_type == "BatchNormalization" for n in result.model.graph.node)
