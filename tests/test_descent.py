"""Block-wise descent after the least-squares refit (halp_onnx.passes.descent, halp_onnx.torch.blockwise):
where the blocks end, how many steps a model gets, that it brings the pruned output closer to the
dense one on data it did not see, and that the repair keeps it only where it helps on held-out batches."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest

import halp_onnx
from halp_onnx.passes import descent as ds
from halp_onnx.passes import reconstruct as rc_mod
from halp_onnx.passes.channel_groups import analyze
from halp_onnx.passes.load import load
from halp_onnx.passes.reconstruct import _layers, output_error
from halp_onnx.passes.rewrite import rewrite
from halp_onnx.passes.select import keep_by_ratio, l2_scores

from test_reconstruct import _data, _net, _residual_net

pytest.importorskip("onnxruntime")


def _pruned(model: onnx.ModelProto, ratio: float = 0.5):
    loaded = load(model)
    analysis = analyze(loaded)
    result = rewrite(loaded, analysis, keep_by_ratio(analysis, l2_scores(loaded, analysis), ratio))
    return loaded, analysis, result


def _fitted(loaded, analysis, model, kept):
    return [(ly.y, ly.junction, ly.last) for ly in _layers(loaded, analysis, model, kept)]


def _widths(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: v.type.tensor_type.shape.dim[1].dim_value for v in inferred.graph.value_info}


def test_the_blocks_end_at_the_residual_junctions_or_after_every_layer_of_a_chain():
    loaded, analysis, result = _pruned(_residual_net(seed=2))
    points = ds.descent_points(loaded, result.model, analysis, result.kept,
                               _fitted(loaded, analysis, result.model, result.kept))
    producer = {o: n for n in result.model.graph.node for o in n.output}
    adds = {n.output[0] for n in result.model.graph.node if n.op_type == "Add"}
    widths = _widths(result.model)
    assert len(points) == 3  # one per block
    for name, (keep, axis) in points.items():
        assert producer[name].op_type == "Relu" and producer[name].input[0] in adds and axis == 1
        assert keep is not None and keep.size == 8 and int(keep.sum()) == widths[name]
    loaded, analysis, result = _pruned(_net(seed=2))
    points = ds.descent_points(loaded, result.model, analysis, result.kept,
                               _fitted(loaded, analysis, result.model, result.kept))
    producer = {o: n for n in result.model.graph.node for o in n.output}
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert {producer[t].op_type for t in points} == {"Relu"}
    assert len(points) == len(convs) - 1  # every disturbed conv (the stem's input is intact), after its Relu


def test_the_step_count_follows_the_mac_budget():
    assert ds.descent_steps(1_000_000, 32, 10) == ds.STEPS
    # a CIFAR ResNet-56 at 0.5 of its latency (27 blocks and the head), at most 400 steps per block
    assert ds.descent_steps(46_449_280, 32, 28, steps=400) == 192
    assert ds.descent_steps(2_000_000_000, 32, 17, steps=400) < ds.MIN_STEPS  # a ResNet-50 at 224 px
    loaded, analysis, result = _pruned(_residual_net(seed=2))
    feeds = [{"input": x} for x in _data(8, 1)]
    out = ds.run_descent(loaded, result.model, analysis, result.kept,
                         _fitted(loaded, analysis, result.model, result.kept), feeds, 10 ** 12)
    assert out.model is None and "skipped" in out.note and "MAC budget" in out.note


def test_without_torch_the_descent_is_skipped_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "halp_onnx.torch.blockwise", None)
    loaded, analysis, result = _pruned(_residual_net(seed=2))
    out = ds.run_descent(loaded, result.model, analysis, result.kept,
                         _fitted(loaded, analysis, result.model, result.kept), [{"input": x} for x in _data(8, 1)],
                         1000)
    assert out.model is None and "needs PyTorch" in out.note


@pytest.mark.parametrize("seed", [0, 1])
def test_descent_brings_the_pruned_output_closer_to_the_dense_on_unseen_data(seed):
    """From the pruned model as rewritten (no refit first: on random weights the linear refit leaves
    the output within 1-2% of the dense one, too close to tell), 300 steps on 256 inputs."""
    pytest.importorskip("torch")
    from halp_onnx.passes.repair import _Runner

    loaded, analysis, result = _pruned(_residual_net(seed=seed, width=16, blocks=2), 0.75)
    batches = [{"input": np.concatenate(_data(32, 10 + i))} for i in range(8)]
    before = onnx.ModelProto()
    before.CopyFrom(result.model)
    out = ds.run_descent(loaded, result.model, analysis, result.kept,
                         _fitted(loaded, analysis, result.model, result.kept), batches, result.macs[1], steps=300,
                         lr=1e-3, threads=1)
    assert out.model is not None and out.summary is not None
    assert result.model == before  # the input model is not modified
    assert out.summary["steps"] == 300 * (out.summary["points"] + 1)  # every block, the head included
    assert out.summary["loss_last"] < out.summary["loss_first"]
    assert [n.op_type for n in out.model.graph.node] == [n.op_type for n in result.model.graph.node]
    onnx.checker.check_model(out.model, full_check=True)
    x = np.concatenate(_data(64, 100))
    dense, raw, trained = (_Runner(m, [], 1).run({"input": x})["logits"] for m in (loaded.model, result.model,
                                                                                     out.model))
    err_raw, err = (float(np.mean((v - dense) ** 2) / np.var(dense)) for v in (raw, trained))
    assert err < 0.5 * err_raw, (err_raw, err)


@pytest.mark.parametrize("helps", [True, False])
def test_the_repair_keeps_the_descent_only_when_it_helps_on_held_out_batches(monkeypatch, helps):
    pytest.importorskip("torch")
    loaded, analysis, result = _pruned(_residual_net(seed=5), 0.4)

    def fake(loaded_, model, *args, **kw):
        assert len(kw["stopping"]) == 4  # half of the 8 held-out batches choose the step
        if helps:  # the dense model's own output: nothing can be closer
            return ds.DescentOutcome(loaded_.model, "block descent: the dense model", {"steps": 1})
        bad = onnx.ModelProto()
        bad.CopyFrom(model)
        head = next(t for t in bad.graph.initializer if t.name == bad.graph.node[-1].input[1])
        head.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(head), head.name))
        return ds.DescentOutcome(bad, "block descent: the head negated", {"steps": 1})

    monkeypatch.setattr(rc_mod, "run_descent", fake)
    calib = [{"input": x} for x in _data(40, 1)]
    out = rc_mod.reconstruct_and_repair(loaded, analysis, result, calib, threads=1)
    d = out.reconstructed["descent"]
    assert d["kept"] is helps and d["steps"] == 1
    assert ("left out" in d["note"]) is not helps and "block descent" in out.note
    if helps:
        assert output_error(loaded.model, out.model, [{"input": x} for x in _data(8, 3)]) < 1e-6


def test_prune_and_compile_run_the_descent_unless_told_not_to():
    pytest.importorskip("torch")
    model = _residual_net(seed=3)
    calib = {"input": np.concatenate(_data(160, 4))}
    on = halp_onnx.prune(model, 0.4, calib=calib, calib_samples=160)
    off = halp_onnx.prune(model, 0.4, calib=calib, calib_samples=160, descent=False)
    assert on.repair is not None and "descent" in on.repair["reconstructed"]
    assert off.repair is not None and "descent" not in off.repair["reconstructed"]


def test_a_block_that_does_no_better_on_held_out_batches_keeps_its_weights():
    """At an absurd learning rate every block ends worse on the held-out batches: each keeps its
    weights, and the descent reports that nothing changed."""
    pytest.importorskip("torch")
    loaded, analysis, result = _pruned(_residual_net(seed=1, width=16, blocks=2), 0.75)
    batches = [{"input": np.concatenate(_data(32, 10 + i))} for i in range(6)]
    held = [{"input": np.concatenate(_data(32, 50 + i))} for i in range(2)]
    out = ds.run_descent(loaded, result.model, analysis, result.kept,
                         _fitted(loaded, analysis, result.model, result.kept), batches, result.macs[1],
                         stopping=held, steps=20, lr=100.0, threads=1)
    assert out.model is None and "nothing changed" in out.note, out.note
    assert out.summary is not None and out.summary["kept_back"] == out.summary["points"] + 1


def test_a_transformer_s_blocks_end_at_its_residual_adds_with_the_features_on_the_last_axis():
    """A pre-LN transformer (the tests' 2-block export shape): every residual Add is a block end, its
    channels on the last axis (tokens x features), and the repair with the descent stays no further
    from the dense output on unseen inputs than the refit alone."""
    pytest.importorskip("torch")
    from test_graphs_transformer import transformer

    model, _ = transformer(depth=2)
    loaded, analysis, result = _pruned(model, 0.4)
    points = ds.descent_points(loaded, result.model, analysis, result.kept,
                               _fitted(loaded, analysis, result.model, result.kept))
    adds = [n.output[0] for n in result.model.graph.node if n.op_type == "Add"]
    assert points and set(points) <= set(adds)
    assert all(axis == 2 and keep is not None and 0 < keep.sum() < keep.size for keep, axis in points.values())
    name = loaded.model.graph.input[0].name
    rng = np.random.default_rng(0)
    calib = [{name: rng.standard_normal((1, *loaded.input_shapes[name][1:])).astype(np.float32)} for _ in range(80)]
    unseen = [{name: rng.standard_normal((1, *loaded.input_shapes[name][1:])).astype(np.float32)} for _ in range(16)]
    on = rc_mod.reconstruct_and_repair(loaded, analysis, result, calib, threads=1)
    off = rc_mod.reconstruct_and_repair(loaded, analysis, result, calib, threads=1, descent=False)
    assert "descent" in on.reconstructed and "descent" not in off.reconstructed
    assert output_error(loaded.model, on.model, unseen) <= 1.05 * output_error(loaded.model, off.model, unseen)


def test_the_compile_and_prune_reports_say_what_the_descent_did(tmp_path):
    """``--report`` carries the repair (the refit, the descent and whether it was kept) for compile as
    for prune; ``--no-descent`` leaves the descent out; with too few batches to hold some out it is
    skipped, and the report says why."""
    pytest.importorskip("torch")
    import json

    from halp_onnx.cli import main
    from halp_onnx.passes.rewrite import save_model

    def run(cmd: str, model: onnx.ModelProto, n: int, hw: int, *args: str) -> dict:
        src, npz, rep = tmp_path / f"{cmd}.onnx", tmp_path / f"{cmd}.npz", tmp_path / f"{cmd}.json"
        save_model(model, src)
        np.savez(npz, input=np.random.default_rng(6).standard_normal((n, 3, hw, hw)).astype(np.float32))
        assert main([cmd, str(src), *args, "--calib", str(npz), "--calib-samples", str(n), "-o",
                     str(tmp_path / f"{cmd}-out.onnx"), "--report", str(rep)]) == 0
        return json.loads(rep.read_text())["details"]["repair"]

    big = _net(seed=3, width=64, hw=64)  # large enough for a GPU budget to matter
    repair = run("compile", big, 40, 64, "--target", "trt-v100", "--latency", "0.85", "--quiet")
    assert repair["reconstructed"]["layers"] > 0 and repair["reconstructed"]["descent"]["kept"] is False
    assert "block descent: skipped, it needs 5 calibration batches" in repair["note"]
    repair = run("prune", _residual_net(seed=3), 160, 8, "--ratio", "0.4")
    assert repair["reconstructed"]["descent"]["steps"] > 0 and "block descent" in repair["note"]
    assert "descent" not in run("prune", _residual_net(seed=3), 160, 8, "--ratio", "0.4", "--no-descent")["reconstructed"]
