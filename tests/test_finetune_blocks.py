"""The block stage of fine-tuning (halp_onnx.torch.finetune.blocks): prune/compile write the block ends
into the pruned model (halp_onnx.passes.descent.annotate), finetune --teacher trains the student block by
block towards the teacher there on its training data before the end-to-end steps, keeps it only where
held-out images say the output moved closer, and says why when it does not run."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import halp_onnx
from halp_onnx import api
from halp_onnx.errors import HalpError
from halp_onnx.passes import descent as ds

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from halp_onnx.passes.reconstruct import output_error  # noqa: E402
from halp_onnx.torch.finetune import FinetuneConfig, finetune  # noqa: E402
from halp_onnx.torch.finetune.blocks import _prepared, block_stage  # noqa: E402
from halp_onnx.torch.finetune.data import _as_data  # noqa: E402

from test_bn_folded import folded_resnet, images  # noqa: E402

torch.set_num_threads(1)
SHAPES = {"input": (1, 3, 8, 8)}


def _pruned(seed: int = 3) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    teacher = folded_resnet(seed, blocks=3)
    return api.prune(teacher, 0.5, input_shapes=SHAPES).model, teacher


def _widths(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: v.type.tensor_type.shape.dim[1].dim_value for v in inferred.graph.value_info}


def test_prune_and_compile_write_the_block_ends_and_they_read_back():
    student, teacher = _pruned()
    ends = ds.block_ends_of(student)
    assert ends is not None
    points, output, macs = ends
    assert output == "logits" and macs > 0 and len(points) == 3  # one per residual block
    dense_w, pruned_w = _widths(teacher), _widths(student)
    for name, (keep, axis) in points.items():
        assert axis == 1 and keep is not None and keep.size == dense_w[name] and int(keep.sum()) == pruned_w[name]
    assert ds.block_ends_of(teacher) is None
    # re-annotating replaces the entry; other metadata stays
    student.metadata_props.add(key="mine", value="1")
    again = ds.annotate(student, {}, "logits", 0)
    assert [p.key for p in again.metadata_props] == ["mine"] and ds.block_ends_of(again) is None
    assert ds.METADATA_KEY in [p.key for p in student.metadata_props]  # annotate copies
    compiled = halp_onnx.compile(teacher, target="trt-v100", latency=0.7, input_shapes=SHAPES, min_keep=0.05)
    assert ds.block_ends_of(compiled.model) is not None


def test_malformed_block_ends_are_an_error_naming_the_key():
    student, _ = _pruned()
    for p in student.metadata_props:
        if p.key == ds.METADATA_KEY:
            d = json.loads(p.value)
            d["points"][0][2][0] = 10_000  # more channels than the mask has bits
            p.value = json.dumps(d)
    with pytest.raises(HalpError, match=ds.METADATA_KEY):
        ds.block_ends_of(student)


def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(device="cpu", batch_size=32, mean=(0.45,), std=(0.25,), seed=0,
                          **{"block_stage": "on", **kw})


def test_the_block_stage_brings_the_student_closer_to_the_teacher_on_unseen_images():
    student, teacher = _pruned()
    x, y = images(1280, seed=1)
    train, held = _as_data((x[:1024], y[:1024]), "data", None), _as_data((x[1024:], y[1024:]), "held", None)
    out, info = block_stage(student, teacher, train, held, _cfg())
    assert info["ran"] and info["kept"] and info["steps"] == 4 * 32  # 3 blocks and the head, a pass each
    assert info["error_after"] < info["error_before"]
    fresh, _ = images(256, seed=9)
    feed = [{"input": _prepared(_as_data((fresh, None), "fresh", None), np.arange(256), _cfg())}]
    assert output_error(teacher, out, feed) < 0.8 * output_error(teacher, student, feed)
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in student.graph.node]
    assert ds.block_ends_of(out) is not None  # still carried: a later fine-tune can run it again


def test_finetune_reports_the_block_stage_and_says_why_it_did_not_run():
    student, teacher = _pruned()
    x, y = images(1024, seed=1)
    res = finetune(student, teacher, (x, y), _cfg(max_steps=2), progress=False)
    assert res.blocks is not None and res.blocks["ran"] and "block stage: 4 block(s)" in res.blocks["note"]
    off = finetune(student, teacher, (x, y), FinetuneConfig(device="cpu", batch_size=32, max_steps=1),
                   progress=False)
    assert off.blocks is not None and not off.blocks["ran"] and "--block-stage off (the default)" in off.blocks["note"]
    plain = onnx.ModelProto()
    plain.CopyFrom(student)
    del plain.metadata_props[:]
    train = _as_data((x, y), "data", None)
    for s, t, why in [(student, None, "needs a teacher"), (plain, teacher, "carries no block ends"),
                      (student, folded_resnet(3, blocks=2), "does not run with the student's block ends")]:
        got, info = block_stage(s, t, train, None, _cfg())
        assert got is s and not info["ran"] and why in info["note"], info["note"]
    from halp_onnx.torch import OnnxModule

    assert block_stage(student, OnnxModule(teacher), train, None, _cfg())[1]["ran"]  # a teacher module: its graph
    got, info = block_stage(OnnxModule(student), teacher, train, None, _cfg())
    assert isinstance(got, OnnxModule) and "the student is an OnnxModule" in info["note"]
    few = _as_data((x[:200], y[:200]), "data", None)
    assert "too few images" in block_stage(student, teacher, few, None, _cfg())[1]["note"]
    with pytest.raises(HalpError, match="block_stage"):
        _cfg(block_stage="yes")


def test_the_cli_runs_the_block_stage_on_request_and_reports_it(tmp_path, capsys):
    from halp_onnx import cli_finetune

    student, teacher = _pruned()
    s_path, t_path, data = tmp_path / "pruned.onnx", tmp_path / "dense.onnx", tmp_path / "train.npz"
    onnx.save(student, s_path)
    onnx.save(teacher, t_path)
    x, y = images(1152, seed=1)
    np.savez(data, images=x, labels=y)
    out, report = tmp_path / "tuned.onnx", tmp_path / "r.json"
    before = s_path.read_bytes()
    rc = cli_finetune.main([str(s_path), "--teacher", str(t_path), "--data", str(data), "--max-steps", "2",
                            "--batch-size", "32", "--mean", "0.45", "--std", "0.25", "--device", "cpu",
                            "--block-stage", "on", "--no-progress", "--report", str(report), "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "block stage: 4 block(s) in turn" in capsys.readouterr().out
    rep = json.loads(report.read_text())["details"]["block_stage"]
    assert rep["ran"] and rep["steps"] == 4 * 33 and s_path.read_bytes() == before  # 1,037 training images (10% held out)
    onnx.checker.check_model(onnx.load(out), full_check=True)
