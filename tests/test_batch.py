"""Batches: the examples have a symbolic batch (1 by default, kept symbolic in the output), ``--batch N``
sets it, and re-batches a fixed-batch model unless a node such as a Reshape pins the old batch."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from halp_onnx.builder import GraphBuilder
from halp_onnx.cli import main
from halp_onnx.cli_profile import input_shapes
from halp_onnx.errors import HalpError
from halp_onnx.examples import cifar_resnet, example
from halp_onnx.passes.load import batch_pin, load
from halp_onnx.passes.verify import session


def _dims(model: onnx.ModelProto) -> list:
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def _prune(src, tmp_path, *extra: str) -> tuple[dict, onnx.ModelProto]:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    assert main(["prune", str(src), "--ratio", "0.25", "-o", str(out), "--report", str(report), *extra]) == 0
    return json.loads(report.read_text()), onnx.load(str(out))


def _pinned(tmp_path):
    """conv -> pool -> Reshape to the constant shape 1x-1 (pins batch 1) -> Gemm."""
    b = GraphBuilder("pinned")
    x = b.input("input", [1, 3, 8, 8])
    y = b.op("GlobalAveragePool", [b.op("Relu", [b.conv(x, 3, 8)])])
    shape = b.const(np.array([1, -1], np.int64))
    b.nodes.append(onnx.helper.make_node("Reshape", [y, shape], ["flat"], name="pin"))
    b.nodes.append(onnx.helper.make_node("Gemm", ["flat", b.weight((4, 8)), b.const(np.zeros(4, np.float32))],
                                         ["logits"], name="fc", transB=1))
    b.output("logits")
    path = tmp_path / "pinned.onnx"
    onnx.save(b.model(), str(path))
    return path


def test_examples_have_a_symbolic_batch_that_loads_at_1():
    for name in ("resnet", "mobilenet"):
        model = example(name)
        assert _dims(model)[0] == "N"
        loaded = load(model)
        assert next(iter(loaded.input_shapes.values()))[0] == 1
        assert loaded.original_inputs["input"][0] == "N"


def test_dynamic_example_prunes_at_batch_1_and_stays_dynamic(tmp_path):
    src = tmp_path / "ex.onnx"
    assert main(["example", "resnet", "--out", str(src)]) == 0
    report, pruned = _prune(src, tmp_path)
    assert report["model"]["input_shapes"]["input"] == [1, 3, 32, 32]
    assert _dims(pruned) == ["N", 3, 32, 32]  # the batch stays symbolic in the rewritten model
    out = session(pruned).run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out.shape == (3, 10)


def test_batch_8_on_the_dynamic_example(tmp_path):
    src = tmp_path / "ex.onnx"
    assert main(["example", "resnet", "--out", str(src)]) == 0
    assert input_shapes(str(src), None, 8) == {"input": (8, 3, 32, 32)}
    report, pruned = _prune(src, tmp_path, "--batch", "8")
    assert report["model"]["input_shapes"]["input"] == [8, 3, 32, 32] and _dims(pruned)[0] == "N"


def test_batch_4_on_a_fixed_batch_1_cnn(tmp_path):
    src = tmp_path / "fixed.onnx"
    onnx.save(cifar_resnet(batch=1), str(src))
    assert batch_pin(cifar_resnet(batch=1), {"input": 4}) is None
    assert input_shapes(str(src), None, 4) == {"input": (4, 3, 32, 32)}
    report, pruned = _prune(src, tmp_path, "--batch", "4")
    assert report["model"]["input_shapes"]["input"] == [4, 3, 32, 32]
    assert _dims(pruned) == [4, 3, 32, 32]
    assert session(pruned).run(None, {"input": np.zeros((4, 3, 32, 32), np.float32)})[0].shape == (4, 10)
    # the same through the API: --input-shape may change a fixed batch the graph allows
    assert load(cifar_resnet(batch=1), {"input": (4, 3, 32, 32)}).input_shapes["input"] == (4, 3, 32, 32)


def test_batch_refused_in_one_line_where_a_reshape_pins_it(tmp_path, capsys):
    src = _pinned(tmp_path)
    out = tmp_path / "out.onnx"
    assert main(["prune", str(src), "--ratio", "0.25", "--batch", "4", "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--batch 4" in lines[0] and "node 'pin' (Reshape) pins the batch" in lines[0], lines
    assert not out.exists()
    with pytest.raises(HalpError, match="node 'pin'"):
        load(onnx.load(str(src)), {"input": (4, 3, 8, 8)})
    assert main(["prune", str(src), "--ratio", "0.25", "-o", str(out)]) == 0  # batch 1 is fine


def test_other_dynamic_dims_still_need_input_shape():
    model = cifar_resnet(batch=1)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(HalpError, match="--input-shape input:1x3x1x32"):
        load(model)
    assert load(model, {"input": (2, 3, 32, 32)}).input_shapes["input"] == (2, 3, 32, 32)
    with pytest.raises(HalpError, match="contradicts the model's static shape"):
        load(cifar_resnet(batch=1), {"input": (1, 3, 16, 32)})
