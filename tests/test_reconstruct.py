"""Least-squares reconstruction after pruning (halp_onnx.passes.reconstruct): the im2col rows reproduce
onnxruntime's convolution, the refit brings the pruned model's output closer to the dense one on data it
did not see, and the pipeline's repair stage runs it before the statistics repair."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import halp_onnx
from halp_onnx.builder import GraphBuilder
from halp_onnx.passes.channel_groups import analyze
from halp_onnx.passes.load import load
from halp_onnx.passes.reconstruct import _positions, _rows_conv, reconstruct
from halp_onnx.passes.rewrite import rewrite
from halp_onnx.passes.select import keep_by_ratio, l2_scores
from halp_onnx.passes.verify import session

pytest.importorskip("onnxruntime")


def _net(seed: int = 0, width: int = 8, hw: int = 8, bias: bool = True) -> onnx.ModelProto:
    b = GraphBuilder("net", seed)
    x = b.input("input", [1, 3, hw, hw])
    y = b.op("Relu", [b.conv(x, 3, width)])
    for stride in (1, 2):
        h = b.op("Relu", [b.conv(y, width, width, stride=stride, bias=bias)])
        y = b.op("Relu", [b.conv(h, width, width, bias=bias)])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [y, b.weight((4, width)), b.const(np.zeros(4, np.float32))],
                                         ["logits"], name="head", transB=1))
    b.output("logits")
    return b.model()


def _model(nodes: list, x: tuple[str, list], y: tuple[str, list | None], inits: dict[str, np.ndarray]
           ) -> onnx.ModelProto:
    """An opset-17 float model of ``nodes`` with one input and one output (name, shape) and float32
    initializers."""
    h = onnx.helper
    g = h.make_graph(nodes, "net", [h.make_tensor_value_info(x[0], 1, x[1])], [h.make_tensor_value_info(y[0], 1, y[1])],
                     [onnx.numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _data(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 1, 3, 8, 8)) + 0.2).astype(np.float32)


@pytest.mark.parametrize("stride,pad,dil", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)])
def test_im2col_rows_reproduce_the_convolution(stride, pad, dil):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[stride] * 2,
                                 pads=[pad] * 4, dilations=[dil] * 2)
    m = _model([node], ("x", list(x.shape)), ("y", None), {"w": w})
    y = session(m).run(None, {"x": x})[0]
    pos = _positions(rng, y.shape, 6)
    rows = _rows_conv(x.astype(np.float64), node, w.shape, pos)
    want = np.moveaxis(y, 1, -1)[pos]
    np.testing.assert_allclose(rows @ w.reshape(5, -1).T, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_refit_brings_the_pruned_output_closer_to_the_dense_on_unseen_data(bias):
    """Convolutions without a bias (BatchNorm kept) get one."""
    loaded = load(_net(bias=bias))
    analysis = analyze(loaded)
    keep = keep_by_ratio(analysis, l2_scores(loaded, analysis), 0.4)
    result = rewrite(loaded, analysis, keep)
    calib = [{"input": x} for x in _data(256, 1)]
    rc = reconstruct(loaded, analysis, result.model, result.kept, calib, threads=1, per_sample=8)
    assert rc.per_layer and all(after < before for before, after in rc.per_layer.values())
    assert [n.op_type for n in rc.model.graph.node] == [n.op_type for n in result.model.graph.node]
    onnx.checker.check_model(rc.model, full_check=True)
    dense, raw, refit = (session(m) for m in (loaded.model, result.model, rc.model))
    test = _data(64, 2)
    err = {k: 0.0 for k in ("raw", "refit")}
    for x in test:
        want = dense.run(None, {"input": x})[0]
        err["raw"] += float(np.square(raw.run(None, {"input": x})[0] - want).sum())
        err["refit"] += float(np.square(refit.run(None, {"input": x})[0] - want).sum())
    assert err["refit"] < 0.7 * err["raw"], err
    summary = rc.to_dict()
    assert summary["layers"] == len(rc.per_layer) and summary["mean_error_after"] < summary["mean_error_before"]


def test_compile_and_prune_reconstruct_before_the_statistics_repair(tmp_path):
    model = _net(seed=3)
    calib = {"input": np.concatenate(_data(128, 4)), "labels": np.random.default_rng(5).integers(0, 4, 128)}
    on = halp_onnx.prune(model, 0.4, calib=calib, calib_samples=128)
    off = halp_onnx.prune(model, 0.4, calib=calib, calib_samples=128, reconstruct=False)
    assert on.repair is not None and on.repair["reconstructed"]["layers"] > 0
    assert off.repair is not None and off.repair["reconstructed"] is None
    assert on.repair["top1_before"] == off.repair["top1_before"]  # both of the model as pruned
    big = _net(seed=3, width=64, hw=64)  # large enough for a GPU budget to matter
    calib = {"input": np.random.default_rng(6).standard_normal((32, 3, 64, 64)).astype(np.float32)}
    res = halp_onnx.compile(big, target="trt-v100", latency=0.85, calib=calib, calib_samples=32)
    assert res.repair is not None and res.repair["reconstructed"] is not None


def _residual_net(seed: int = 0, width: int = 8, blocks: int = 3) -> onnx.ModelProto:
    b = GraphBuilder("res", seed)
    x = b.input("input", [1, 3, 8, 8])
    y = b.op("Relu", [b.conv(x, 3, width)])
    for _ in range(blocks):
        h = b.op("Relu", [b.conv(y, width, width)])
        y = b.op("Relu", [b.op("Add", [b.conv(h, width, width), y])])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [y, b.weight((4, width)), b.const(np.zeros(4, np.float32))],
                                         ["logits"], name="head", transB=1))
    b.output("logits")
    return b.model()


def test_a_layer_that_writes_a_residual_junction_is_fitted_to_the_dense_junction():
    """With a block removed, the trunk misses that block's contribution: the next block's output conv is
    fitted to the dense sum minus the pruned skip (``residual=True``), so the junction, which every later
    layer reads, ends closer to the dense model's than when the conv is fitted to its own dense output."""
    from halp_onnx.passes.reconstruct import _layers
    from halp_onnx.passes.repair import _Runner

    loaded = load(_residual_net(seed=4))
    analysis = analyze(loaded)
    order = [n.name for n in loaded.model.graph.node]
    inner = [g for g in analysis.prunable if len(g.producers) == 1]  # the trunk has one producer per block
    first_block = min(inner, key=lambda g: order.index(g.producers[0]))
    result = rewrite(loaded, analysis, {first_block.id: np.zeros(0, dtype=np.int64)})
    layers = {ly.node: ly for ly in _layers(loaded, analysis, result.model, result.kept)}
    adds = [n for n in loaded.model.graph.node if n.op_type == "Add"]
    fitted_at_junction = {ly.junction for ly in layers.values() if ly.junction}
    assert fitted_at_junction and fitted_at_junction <= {a.output[0] for a in adds}
    calib = [{"input": x} for x in _data(256, 1)]
    errs = {}
    for residual in (False, True):
        rc = reconstruct(loaded, analysis, result.model, result.kept, calib, threads=1, per_sample=8,
                         residual=residual)
        onnx.checker.check_model(rc.model, full_check=True)
        last = adds[-1].output[0]
        dense, pruned = _Runner(loaded.model, [last], 1), _Runner(rc.model, [last], 1)
        errs[residual] = sum(float(np.square(pruned.run({"input": x})[last] - dense.run({"input": x})[last]).sum())
                             for x in _data(64, 2))
    assert errs[True] < errs[False], errs


@pytest.mark.parametrize("helps", [True, False])
def test_the_statistics_repair_is_kept_only_when_it_helps_on_held_out_batches(monkeypatch, helps):
    """``reconstruct_and_repair`` holds every 5th calibration batch out of both fits and keeps the
    statistics repair only when it brings the output closer to the dense model's there."""
    import dataclasses

    from halp_onnx.passes import reconstruct as rc_mod

    loaded = load(_residual_net(seed=5))
    analysis = analyze(loaded)
    result = rewrite(loaded, analysis, keep_by_ratio(analysis, l2_scores(loaded, analysis), 0.4))
    real = rc_mod.repair
    seen: dict = {}

    def fake(loaded_, analysis_, res, batches, **kw):
        seen["fit"] = len(batches)
        out = real(loaded_, analysis_, res, batches, **kw)
        if helps:  # the dense model's own output: nothing can be closer
            return dataclasses.replace(out, model=loaded_.model)
        bad = onnx.ModelProto()
        bad.CopyFrom(out.model)
        head = next(t for t in bad.graph.initializer if t.name == bad.graph.node[-1].input[1])
        head.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(head), head.name))
        return dataclasses.replace(out, model=bad)

    monkeypatch.setattr(rc_mod, "repair", fake)
    calib = [{"input": x} for x in _data(40, 1)]
    out = rc_mod.reconstruct_and_repair(loaded, analysis, result, calib, threads=1)
    assert seen["fit"] == 32  # 8 of the 40 batches held out
    if helps:
        assert out.model is loaded.model and "held-out output error" in out.note
    else:
        assert "statistics repair was left out" in out.note and out.per_layer_shift == {}
        assert rc_mod.output_error(loaded.model, out.model, [{"input": x} for x in _data(8, 3)]) < \
            rc_mod.output_error(loaded.model, result.model, [{"input": x} for x in _data(8, 3)])


def test_output_error_is_a_kl_for_logits_and_a_relative_squared_error_otherwise():
    from halp_onnx.passes.reconstruct import output_error

    logits = _residual_net(seed=6)
    feeds = [{"input": x} for x in _data(4, 7)]
    assert output_error(logits, logits, feeds) == pytest.approx(0.0, abs=1e-9)
    b = GraphBuilder("maps", 0)  # a 4-D output (a detection head, a segmentation map)
    x = b.input("input", [1, 3, 8, 8])
    b.nodes.append(onnx.helper.make_node("Conv", [x, b.weight((5, 3, 3, 3)), b.const(np.zeros(5, np.float32))],
                                         ["maps"], name="head", pads=[1, 1, 1, 1]))
    b.output("maps")
    maps = b.model()
    scaled = onnx.ModelProto()
    scaled.CopyFrom(maps)
    w = next(t for t in scaled.graph.initializer if t.name == scaled.graph.node[0].input[1])
    w.CopyFrom(onnx.numpy_helper.from_array(2 * onnx.numpy_helper.to_array(w), w.name))
    err = output_error(maps, scaled, feeds)  # (2y - y)^2 / var(y) = mean(y^2) / var(y) >= 1
    ys = np.concatenate([session(maps).run(None, f)[0] for f in feeds])
    assert err == pytest.approx(float(np.mean(ys ** 2) / np.var(ys)), rel=1e-4)


def test_every_calibration_input_counts_and_a_layer_s_rows_stay_within_the_float_budget():
    """The refit reads every calibration input given (up to ``max_samples``), and samples fewer positions
    per input where features x rows would pass ``max_floats``; the Gemm head counts its input width."""
    from halp_onnx.passes.reconstruct import _features

    loaded = load(_net())
    analysis = analyze(loaded)
    keep = keep_by_ratio(analysis, l2_scores(loaded, analysis), 0.4)
    result = rewrite(loaded, analysis, keep)
    inits = {t.name: t for t in result.model.graph.initializer}
    nodes = {n.name: n for n in result.model.graph.node}
    head = nodes["head"]
    assert _features(head, inits) == inits[head.input[1]].dims[1]  # transB: (outputs, inputs)
    calib = [{"input": x} for x in _data(300, 1)]
    full = reconstruct(loaded, analysis, result.model, result.kept, calib, threads=1, per_sample=8)
    assert full.samples == 300
    tight = reconstruct(loaded, analysis, result.model, result.kept, calib, threads=1, per_sample=8,
                        max_floats=300 * 50 * 2)
    assert tight.samples == 300 and tight.rows < full.rows
    assert "fewer, within" in tight.note and "fewer, within" not in full.note
    conv = [ly for ly in tight.per_layer if nodes[ly].op_type == "Conv"]
    assert conv  # rows were cut, not the refit
    few = reconstruct(loaded, analysis, result.model, result.kept, calib, threads=1, per_sample=8, max_samples=100)
    assert few.samples == 100


def _relu_net(seed: int) -> onnx.ModelProto:
    """conv 3x3 -> Relu -> conv 1x1 with a negative bias -> Relu (most of its outputs dead)."""
    rng = np.random.default_rng(seed)
    h = onnx.helper
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.4, "b1": rng.standard_normal(8) * 0.1,
             "w2": rng.standard_normal((6, 8, 1, 1)) * 0.5, "b2": np.full(6, -0.6)}
    nodes = [h.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             h.make_node("Relu", ["c2"], ["out"], name="relu2")]
    return _model(nodes, ("input", [1, 3, 8, 8]), ("out", [1, 6, 8, 8]), inits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_relu_aware_refit_lowers_the_error_after_the_relu_on_unseen_data(seed):
    """Rows where the dense value and the fit are both negative cost nothing after the Relu: refitting
    without them brings what the Relu passes on closer to the dense model's than the plain fit does."""
    loaded = load(_relu_net(seed))
    analysis = analyze(loaded)
    keep = keep_by_ratio(analysis, l2_scores(loaded, analysis), 0.5)
    result = rewrite(loaded, analysis, keep)
    calib = [{"input": x} for x in _data(64, 1 + seed)]
    test = _data(64, 10 + seed)
    dense = session(loaded.model)
    want = np.concatenate([dense.run(None, {"input": x})[0] for x in test])
    err = {}
    for rounds in (0, 3):
        rc = reconstruct(loaded, analysis, result.model, result.kept, calib, threads=1, per_sample=16,
                         relu_aware=rounds)
        assert "conv2" in rc.per_layer
        assert ("ReLU-aware" in rc.note) == (rounds > 0)
        got = session(rc.model)
        err[rounds] = float(np.square(np.concatenate([got.run(None, {"input": x})[0] for x in test]) - want).mean())
    assert err[3] < 0.99 * err[0], err


def _mlp(seed: int, bias: bool) -> onnx.ModelProto:
    """A transformer's MLP as exporters write it: x (1, T, C) @ W1 + b1 -> Relu -> @ W2 (+ b2), MatMul + Add."""
    rng = np.random.default_rng(seed)
    h = onnx.helper
    vals = {"w1": rng.standard_normal((6, 16)) * 0.5, "b1": rng.standard_normal(16) * 0.1,
            "w2": rng.standard_normal((16, 6)) * 0.3, "b2": rng.standard_normal(6) * 0.1}
    nodes = [h.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"), h.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
             h.make_node("Relu", ["a1"], ["r1"], name="act"),
             h.make_node("MatMul", ["r1", "w2"], ["m2" if bias else "y"], name="fc2")]
    if bias:
        nodes.append(h.make_node("Add", ["m2", "b2"], ["y"], name="bias2"))
    return _model(nodes, ("x", [1, 5, 6]), ("y", [1, 5, 6]), {k: v for k, v in vals.items() if bias or k != "b2"})


@pytest.mark.parametrize("bias", [True, False])
def test_a_matmul_layer_is_refitted_with_its_intercept_in_the_add_after_it(bias):
    """Transformer exports write linear layers as MatMul (+ Add of a bias): the refit reads their rows on
    the last axis and puts the fitted intercept into the Add's constant; without that Add it fits none."""
    loaded = load(_mlp(0, bias))
    analysis = analyze(loaded)
    keep = keep_by_ratio(analysis, l2_scores(loaded, analysis), 0.5)
    result = rewrite(loaded, analysis, keep)
    rng = np.random.default_rng(1)
    calib = [{"x": (rng.standard_normal((1, 5, 6)) + 0.3).astype(np.float32)} for _ in range(128)]
    rc = reconstruct(loaded, analysis, result.model, result.kept, calib, threads=1, per_sample=5)
    assert "fc2" in rc.per_layer
    assert [n.op_type for n in rc.model.graph.node] == [n.op_type for n in result.model.graph.node]
    assert len(rc.model.graph.initializer) == len(result.model.graph.initializer)  # no bias input added
    onnx.checker.check_model(rc.model, full_check=True)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in rc.model.graph.initializer}
    before = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert not np.allclose(inits["w2"], before["w2"])
    if bias:
        assert not np.allclose(inits["b2"], before["b2"])
    test = [(rng.standard_normal((1, 5, 6)) + 0.3).astype(np.float32) for _ in range(32)]
    dense, raw, refit = (session(m) for m in (loaded.model, result.model, rc.model))
    want = np.concatenate([dense.run(None, {"x": x})[0] for x in test])
    err = {k: float(np.square(np.concatenate([s.run(None, {"x": x})[0] for x in test]) - want).mean())
           for k, s in (("raw", raw), ("refit", refit))}
    assert err["refit"] < 0.8 * err["raw"], err
