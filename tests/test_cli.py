"""The command line: the main job end to end, and every bad input as one line, exit 2, nothing written."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from halp_onnx.builder import GraphBuilder
from halp_onnx.cli import main
from halp_onnx.examples import cifar_resnet


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "halp_onnx", *args], capture_output=True, text=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def example(tmp_path) -> Path:
    path = tmp_path / "example.onnx"
    assert main(["example", "resnet", "--out", str(path)]) == 0
    return path


def test_example_prune_inspect_end_to_end(example, tmp_path, capsys):
    before = digest(example)
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    assert main(["prune", str(example), "--ratio", "0.3", "-o", str(out), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "verified: max relative error" in text and "params" in text and "MACs" in text
    assert digest(example) == before  # the input is never modified
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    data = json.loads(report.read_text())
    assert data["verification"]["passed"] and data["params"]["after"] < data["params"]["before"]
    assert main(["inspect", str(example), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["groups"]) == 5 and sum(g["prunable"] for g in info["groups"]) == 4
    assert main(["inspect", str(example)]) == 0
    assert "frozen: tensor 'logits' is a graph output" in capsys.readouterr().out


def test_random_criterion_and_seed(example, tmp_path):
    outs = []
    for seed in (1, 1, 2):
        out = tmp_path / f"r{len(outs)}.onnx"
        assert main(["prune", str(example), "--ratio", "0.5", "--criterion", "random", "--seed", str(seed),
                     "-o", str(out)]) == 0
        outs.append(digest(out))
    assert outs[0] == outs[1] != outs[2]


def _bad_models(tmp_path: Path, example: Path) -> dict[str, tuple[list[str], str]]:
    cases: dict[str, tuple[list[str], str]] = {}
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    cases["not onnx"] = ([str(garbage)], "not a readable ONNX model")
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(example.read_bytes()[: example.stat().st_size // 2])
    cases["truncated"] = ([str(trunc)], "not a readable ONNX model")
    model = onnx.load(str(example))
    missing = onnx.ModelProto()
    missing.CopyFrom(model)
    name = missing.graph.initializer[0].name
    del missing.graph.initializer[0]
    path = tmp_path / "missing.onnx"
    onnx.save(missing, str(path))
    cases["missing initializer"] = ([str(path)], f"reads '{name}'")
    cyc = onnx.ModelProto()
    cyc.CopyFrom(model)
    first, second = cyc.graph.node[0], cyc.graph.node[2]
    first.input[0] = second.output[0]
    path = tmp_path / "cycle.onnx"
    onnx.save(cyc, str(path))
    cases["cycle"] = ([str(path)], "cycle")
    dyn = onnx.ModelProto()
    dyn.CopyFrom(model)
    dyn.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"  # a dynamic batch alone defaults to 1
    path = tmp_path / "dynamic.onnx"
    onnx.save(dyn, str(path))
    cases["dynamic dims"] = ([str(path)], "--input-shape input:1x3x1x32")
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    y = b.conv(x, 3, 4)
    b.nodes.append(onnx.helper.make_node("Frobnicate", [y], ["z"], name="mystery", domain="example.ops"))
    b.nodes.append(onnx.helper.make_node("Relu", ["z"], ["out"], name="last"))
    b.output("out")
    path = tmp_path / "unknown.onnx"
    onnx.save(b.model({"example.ops": 1}), str(path))
    cases["unknown op on the pruned path"] = ([str(path)], "node 'mystery' has op example.ops::Frobnicate")
    cases["no such file"] = ([str(tmp_path / "nope.onnx")], "no such file")
    return cases


def test_bad_inputs_one_line_exit_2_nothing_written(example, tmp_path):
    for label, (args, message) in _bad_models(tmp_path, example).items():
        out = tmp_path / f"out_{label.replace(' ', '_')}.onnx"
        proc = run_cli("prune", *args, "--ratio", "0.3", "-o", str(out))
        assert proc.returncode == 2, (label, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (label, proc.stderr)
        assert "Traceback" not in proc.stderr and not out.exists(), label
        assert not list(tmp_path.glob(".*.tmp")), label


def test_output_equal_to_input_and_bad_options(example, tmp_path):
    before = digest(example)
    for args, message in [
        (["prune", str(example), "--ratio", "0.3", "-o", str(example)], "the output path is the input model"),
        (["prune", str(example), "--ratio", "1.5", "-o", str(tmp_path / "o.onnx")], "--ratio 1.5"),
        (["prune", str(example), "--ratio", "0.3", "--criterion", "taylor", "-o", str(tmp_path / "o.onnx")],
         "--criterion 'taylor'"),
        (["inspect", str(example), "--input-shape", "input:1x3"], "rank 2 given"),
        (["inspect", str(example), "--input-shape", "bogus"], "--input-shape 'bogus'"),
        (["inspect", str(example), "--input-shape", "other:1x3x32x32"], "no input 'other'"),
        (["example", "alexnet", "--out", str(tmp_path / "e.onnx")], "example 'alexnet'"),
    ]:
        proc = run_cli(*args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert digest(example) == before and not (tmp_path / "o.onnx").exists()


def test_dynamic_batch_with_input_shape(tmp_path):
    model = cifar_resnet()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    src = tmp_path / "dyn.onnx"
    onnx.save(model, str(src))
    out = tmp_path / "dyn_pruned.onnx"
    assert main(["prune", str(src), "--ratio", "0.25", "--input-shape", "input:2x3x32x32", "-o", str(out)]) == 0
    pruned = onnx.load(str(out))
    dims = pruned.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 32, 32]  # the batch stays dynamic
    from halp_onnx.passes.verify import session
    out = session(pruned).run(None, {"input": np.zeros((5, 3, 32, 32), np.float32)})[0]
    assert out.shape == (5, 10)


def test_external_data_model(tmp_path):
    model = cifar_resnet()
    src = tmp_path / "ext.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    out = tmp_path / "ext_pruned.onnx"
    assert main(["prune", str(src), "--ratio", "0.3", "-o", str(out)]) == 0
    assert np.isfinite(onnx.numpy_helper.to_array(onnx.load(str(out)).graph.initializer[0])).all()


def test_models_over_the_protobuf_limit(tmp_path, monkeypatch):
    """The >2 GiB paths (skeleton shape inference, external-data checker and sessions, external-data
    output) exercised on a small model by lowering the limit."""
    from halp_onnx.passes import load as load_pass, rewrite as rewrite_pass, verify as verify_pass

    for module in (load_pass, rewrite_pass, verify_pass):
        monkeypatch.setattr(module, "PROTOBUF_LIMIT", 1000)
    src = tmp_path / "big.onnx"
    onnx.save_model(cifar_resnet(), str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data", size_threshold=0)
    out = tmp_path / "big_pruned.onnx"
    assert main(["prune", str(src), "--ratio", "0.3", "-o", str(out)]) == 0
    assert (tmp_path / "big_pruned.onnx.data").exists() and not list(tmp_path.glob("*.tmp"))
    pruned = onnx.load(str(out), load_external_data=False)
    assert all(i.data_location == onnx.TensorProto.EXTERNAL for i in pruned.graph.initializer if i.dims and
               int(np.prod(i.dims)) > 256)
    onnx.checker.check_model(str(out), full_check=True)
