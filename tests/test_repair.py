"""Statistics repair after pruning (halp_onnx.passes.repair, onnxruntime only) and the importance that
respects coupling (Fisher estimate along the joint removal of coupled gates, label-free distillation):
small graphs, plus the real BN-folded CIFAR ResNet-20 (skips without ../shared)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from bench import zoo
from halp_onnx.builder import GraphBuilder
from halp_onnx.errors import HalpError
from halp_onnx.examples import example
from halp_onnx.passes.channel_groups import analyze
from halp_onnx.passes.load import load
from halp_onnx.passes.repair import RepairResult, repair
from halp_onnx.passes.rewrite import rewrite
from halp_onnx.passes.select import keep_by_ratio, l2_scores
from halp_onnx.passes.verify import session

ort = pytest.importorskip("onnxruntime")


def folded_resnet(seed: int = 0, width: int = 8, batch="N") -> onnx.ModelProto:
    b = GraphBuilder("folded", seed)
    x = b.input("input", [batch, 3, 8, 8])
    y = b.op("Relu", [b.conv(x, 3, width)])
    for _ in range(2):
        h = b.op("Relu", [b.conv(y, width, width)])
        y = b.op("Relu", [b.op("Add", [y, b.conv(h, width, width)])])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [y, b.weight((4, width)), b.const(np.zeros(4, np.float32))],
                                         ["logits"], name="head", transB=1))
    b.output("logits")
    return b.model()


def calib(n: int = 96, seed: int = 0, labels: bool = True, batch: int = 32, shape=(3, 8, 8)):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, *shape)) + 0.3).astype(np.float32)
    y = rng.integers(0, 4, n)
    return [({"input": x[i:i + batch]}, y[i:i + batch] if labels else None) for i in range(0, n, batch)]


def channel_means(model: onnx.ModelProto, tensors: list[str], batches, stat: str = "mean") -> dict[str, np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in tensors:
        m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = session(m)
    names = [o.name for o in sess.get_outputs()]
    acc: dict[str, list] = {t: [] for t in tensors}
    for inputs, _ in batches:  # one sample at a time: the loaded model has a batch of 1
        for i in range(len(inputs["input"])):
            out = dict(zip(names, sess.run(None, {"input": inputs["input"][i:i + 1]})))
            for t in tensors:
                acc[t].append(out[t])
    return {t: np.concatenate(v).astype(np.float64).__getattribute__(stat)(axis=(0, 2, 3) if v[0].ndim == 4 else 0)
            for t, v in acc.items()}


def kept_of(analysis, kept, tensor, width):
    lab = analysis.labels.get(tensor)
    return np.ones(width, bool) if lab is None else np.where(lab.ids >= 0, kept[np.maximum(lab.ids, 0)], True)


def setup(model, ratio=0.5, seed=0):
    loaded = load(model, {"input": (1, 3, 8, 8)})
    analysis = analyze(loaded)
    keep = keep_by_ratio(analysis, np.random.default_rng(seed).random(len(analysis.channel_group)), ratio)
    return loaded, analysis, rewrite(loaded, analysis, keep)


# ------------------------------------------------------------------------------------------------
# BN folded: bias correction in topological order


def test_bias_correction_matches_dense_means_at_every_consumer():
    loaded, analysis, res = setup(folded_resnet())
    batches = calib()
    rr = repair(loaded, analysis, res, batches, scope="consumers", scale=False)
    assert isinstance(rr, RepairResult) and rr.kinds.get("bias", 0) >= 3 and rr.seconds > 0
    assert [n.op_type for n in rr.model.graph.node] == [n.op_type for n in res.model.graph.node]
    # only biases changed
    before = {t.name: onnx.numpy_helper.to_array(t) for t in res.model.graph.initializer}
    changed = [t.name for t in rr.model.graph.initializer
               if not np.array_equal(onnx.numpy_helper.to_array(t), before[t.name])]
    nodes = {n.name: n for n in rr.model.graph.node}
    assert changed and all(any(len(n.input) > 2 and n.input[2] == c for n in nodes.values()) for c in changed)
    # at every repaired layer the pruned output's channel means equal the dense ones (one sweep per layer)
    outs = {nodes[name].output[0]: name for name in rr.per_layer_shift}
    dense = channel_means(loaded.model, list(outs), batches)
    after = channel_means(rr.model, list(outs), batches)
    for t in outs:
        keep = kept_of(analysis, res.kept, t, len(dense[t]))
        np.testing.assert_allclose(after[t], dense[t][keep], rtol=1e-4, atol=1e-4)
    assert rr.residual is not None and rr.residual < 1e-4
    assert max(rr.per_layer_shift.values()) > 1e-3
    # labels given: top-1 before / after on the calibration images
    assert rr.top1_before is not None and rr.top1_after is not None
    d = rr.to_dict()
    assert d["layers"] == len(rr.per_layer_shift) and d["top1_after"] == rr.top1_after
    # fewer sweeps: layers in one sweep are corrected together, not exact any more
    coarse = repair(loaded, analysis, res, batches, scope="consumers", scale=False, chunks=1)
    assert coarse.sweeps == 4 and coarse.residual >= rr.residual  # dense, before, 1 chunk, after


def test_default_downstream_scale_matches_mean_and_std():
    loaded, analysis, res = setup(folded_resnet(seed=3))
    batches = calib(seed=1)
    rr = repair(loaded, analysis, res, batches)
    assert rr.kinds.get("scale", 0) >= 4 and rr.residual < 1e-4
    nodes = {n.name: n for n in rr.model.graph.node}
    outs = [nodes[name].output[0] for name in rr.per_layer_shift]
    assert "logits" in outs  # the classifier too (heads=False leaves a graph output alone)
    assert "head" not in repair(loaded, analysis, res, batches, heads=False).per_layer_shift
    for stat in ("mean", "std"):
        dense = channel_means(loaded.model, outs, batches, stat)
        raw = channel_means(res.model, outs, batches, stat)
        after = channel_means(rr.model, outs, batches, stat)
        for t in outs:
            keep = kept_of(analysis, res.kept, t, len(dense[t]))
            np.testing.assert_allclose(after[t], dense[t][keep], rtol=1e-3, atol=1e-4)
        assert any(np.abs(raw[t] - dense[t][kept_of(analysis, res.kept, t, len(dense[t]))]).max() > 1e-2
                   for t in outs)


def test_removed_branch_constant_becomes_the_dense_mean():
    loaded = load(folded_resnet(seed=4), {"input": (1, 3, 8, 8)})
    analysis = analyze(loaded)
    inner = [g for g in analysis.prunable if g.removable]
    assert inner
    res = rewrite(loaded, analysis, {inner[0].id: []})  # one residual branch pruned away
    new_consts = {t.name for t in res.model.graph.initializer} - {t.name for t in loaded.model.graph.initializer}
    assert new_consts
    batches = calib(seed=2)
    rr = repair(loaded, analysis, res, batches, scope="consumers", scale=False)
    assert rr.kinds.get("constant", 0) == len(new_consts)
    dense = channel_means(loaded.model, sorted(new_consts), batches)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in rr.model.graph.initializer}
    for name in new_consts:
        value = inits[name]
        np.testing.assert_allclose(value.reshape(value.shape[1], -1).mean(1) if value.shape[0] == 1 else value,
                                   dense[name], rtol=1e-5, atol=1e-6)


def test_fixed_batch_and_unlabelled_batches():
    model = folded_resnet(seed=5, batch=1)  # a batch of 1 in the graph: fed in its chunks (or relaxed)
    loaded = load(model)
    analysis = analyze(loaded)
    res = rewrite(loaded, analysis, keep_by_ratio(analysis, l2_scores(loaded, analysis), 0.5))
    batches = calib(n=20, batch=8, labels=False)
    rr = repair(loaded, analysis, res, [b for b, _ in batches])  # bare input dicts
    assert rr.top1_before is None and rr.top1_after is None and rr.samples == 20
    assert rr.residual < 1e-3
    x = batches[0][0]["input"][:1]
    assert session(rr.model).run(None, {"input": x})[0].shape == (1, 4)


def test_errors_and_nothing_to_repair():
    loaded, analysis, res = setup(folded_resnet())
    with pytest.raises(HalpError, match="no calibration batch"):
        repair(loaded, analysis, res, [])
    with pytest.raises(HalpError, match="do not match"):
        repair(loaded, analysis, res, [{"image": np.zeros((2, 3, 8, 8), np.float32)}])
    with pytest.raises(HalpError, match="labels"):
        repair(loaded, analysis, res, [({"input": np.zeros((2, 3, 8, 8), np.float32)}, np.zeros(3))])
    with pytest.raises(HalpError, match="scope"):
        repair(loaded, analysis, res, calib(), scope="all")
    dense = rewrite(loaded, analysis, {})
    nothing = repair(loaded, analysis, dense, calib())
    assert nothing.per_layer_shift == {} and "nothing to repair" in nothing.note


# ------------------------------------------------------------------------------------------------
# BN kept: running statistics re-estimated


def test_bn_statistics_reestimated_so_bn_outputs_match_dense():
    loaded = load(example("resnet"))
    analysis = analyze(loaded)
    shape = loaded.input_shapes["input"]
    keep = keep_by_ratio(analysis, np.random.default_rng(1).random(len(analysis.channel_group)), 0.5)
    res = rewrite(loaded, analysis, keep)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, *shape[1:])).astype(np.float32)
    batches = [({"input": x[i:i + 1]}, None) for i in range(16)] if shape[0] == 1 else [({"input": x}, None)]
    rr = repair(loaded, analysis, res, batches)
    assert rr.kinds.get("bn", 0) >= 3
    bns = [n for n in rr.model.graph.node if n.op_type == "BatchNormalization" and n.name in rr.per_layer_shift]
    outs = [n.output[0] for n in bns]
    dense = channel_means(loaded.model, outs, batches)
    after = channel_means(rr.model, outs, batches)
    raw = channel_means(res.model, outs, batches)
    err_after = err_raw = 0.0
    for t in outs:
        keep_t = kept_of(analysis, res.kept, t, len(dense[t]))
        err_after += float(np.abs(after[t] - dense[t][keep_t]).mean())
        err_raw += float(np.abs(raw[t] - dense[t][keep_t]).mean())
        np.testing.assert_allclose(after[t], dense[t][keep_t], rtol=1e-3, atol=1e-3)
    assert err_after < 0.05 * err_raw
    replaced = repair(loaded, analysis, res, batches, bn="replace")
    assert replaced.kinds == rr.kinds


# ------------------------------------------------------------------------------------------------
# importance: the joint removal of coupled gates, label-free distillation


def test_fisher_importance_sums_coupled_gates_per_sample_before_squaring():
    torch = pytest.importorskip("torch")
    from halp_onnx.passes.importance import taylor_importance
    from halp_onnx.torch import OnnxModule
    from halp_onnx.torch.gates import ChannelGates

    loaded = load(folded_resnet(seed=6), {"input": (1, 3, 8, 8)})
    analysis = analyze(loaded)
    trunk = max(analysis.prunable, key=lambda g: len(g.producers))
    assert len(trunk.producers) == 3  # the stem and the two blocks' second convs
    batches = calib(n=12, batch=6)
    fisher = taylor_importance(loaded, analysis, batches)
    halp = taylor_importance(loaded, analysis, batches, estimator="halp")
    assert fisher.method == halp.method == "taylor" and "Fisher" in fisher.note and "HALP" in halp.note

    # by hand: one sample at a time through ChannelGates (signed sum over every coupled producer)
    module = OnnxModule(loaded.model).eval()
    gates = ChannelGates(module, loaded, analysis)
    per_sample, per_batch = [], []
    for inputs, labels in batches:
        x, y = torch.from_numpy(inputs["input"]), torch.from_numpy(labels.astype(np.int64))
        for i in range(len(x)):
            torch.nn.functional.cross_entropy(module(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
            gates.accumulate()
            per_sample.append(gates.signed())
        torch.nn.functional.cross_entropy(module(x), y).backward()
        gates.accumulate()
        per_batch.append(np.abs(gates.signed()))
    want_fisher = 0.5 * np.mean(np.square(per_sample), axis=0)
    prunable = np.isin(analysis.channel_group, [g.id for g in analysis.prunable])
    np.testing.assert_allclose(fisher.scores, np.where(prunable, want_fisher, 0), rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(halp.scores, np.where(prunable, np.mean(per_batch, axis=0), 0), rtol=1e-4,
                               atol=1e-12)
    # no per-group normalisation: a trunk channel's score is a loss change like any other
    members = analysis.channel_group == trunk.id
    assert abs(fisher.scores[members].mean() - 1.0) > 1e-3


def test_label_free_distillation_scores():
    pytest.importorskip("torch")
    from halp_onnx.passes.importance import taylor_importance

    loaded = load(folded_resnet(seed=7), {"input": (1, 3, 8, 8)})
    analysis = analyze(loaded)
    batches = calib(n=64, labels=False)
    kd = taylor_importance(loaded, analysis, batches, label_free="distillation", temperature=2.0, seed=1)
    again = taylor_importance(loaded, analysis, batches, label_free="distillation", temperature=2.0, seed=1)
    assert kd.loss == "distillation" and "KL to the model's own softmax at T=2" in kd.note
    np.testing.assert_array_equal(kd.scores, again.scores)
    prunable = np.isin(analysis.channel_group, [g.id for g in analysis.prunable])
    assert (kd.scores[prunable] > 0).mean() > 0.9 and not kd.scores[~prunable].any()
    # the first-order Taylor of the KL is zero at the dense model; "halp" + distillation is scored to second order too
    first = taylor_importance(loaded, analysis, batches, label_free="distillation", estimator="halp", seed=1)
    np.testing.assert_allclose(first.scores, kd.scores)
    assert taylor_importance(loaded, analysis, batches).loss == "self-prediction"
    with pytest.raises(HalpError, match="label-free loss"):
        taylor_importance(loaded, analysis, batches, label_free="kl")
    with pytest.raises(HalpError, match="estimator"):
        taylor_importance(loaded, analysis, batches, estimator="second")


# ------------------------------------------------------------------------------------------------
# the real BN-folded ResNet-20


@pytest.mark.skipif(zoo.shared_dir() is None, reason="../shared (CIFAR-10 data and weights) is absent")
def test_repair_recovers_pruned_cifar_resnet20(tmp_path):
    path = zoo.export_cifar_resnet(20, tmp_path / "r20.onnx", npz=zoo.cifar_resnet_weights(20))
    loaded = load(path, {"input": (1, 3, 32, 32)})
    analysis = analyze(loaded)
    res = rewrite(loaded, analysis, keep_by_ratio(analysis, l2_scores(loaded, analysis), 0.1))
    train_x, train_y = zoo.load_cifar_jpeg("train")
    pick = np.random.default_rng(0).permutation(len(train_x))[:512]
    x, y = zoo.normalize_cifar(train_x[pick]), train_y[pick]
    rr = repair(loaded, analysis, res, [({"input": x[i:i + 64]}, y[i:i + 64]) for i in range(0, 512, 64)], threads=1)
    xe, ye = zoo.load_cifar_exact1017()
    xn = zoo.normalize_cifar(xe)
    before, after = zoo.top1_onnx(res.model, xn, ye), zoo.top1_onnx(rr.model, xn, ye)
    print(f"resnet20 (BN folded) prune 0.1 L2: top-1 on the exact 1,017 images {before:.3f} -> {after:.3f} after "
          f"repair on 512 images ({rr.seconds:.1f} s, {len(rr.per_layer_shift)} layers)")
    assert after >= before + 0.04
    assert [n.op_type for n in rr.model.graph.node] == [n.op_type for n in res.model.graph.node]


def test_prune_cli_repairs_with_calib(tmp_path, capsys):
    """``prune --calib`` repairs the pruned model's statistics and says what it did; without --calib or with
    --no-repair it does not; --repair without data is refused before anything is written."""
    import json

    from halp_onnx.cli import main
    from halp_onnx.passes.rewrite import save_model

    src, out, rep = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "r.json"
    save_model(folded_resnet(), src)
    rng = np.random.default_rng(0)
    npz = tmp_path / "calib.npz"
    np.savez(npz, input=(rng.standard_normal((48, 3, 8, 8)) + 0.3).astype(np.float32), labels=rng.integers(0, 4, 48))
    assert main(["prune", str(src), "--ratio", "0.3", "-o", str(out), "--calib", str(npz), "--report", str(rep)]) == 0
    text = capsys.readouterr().out
    assert "repair:" in text and "top-1 on them" in text
    details = json.loads(rep.read_text())["details"]
    assert details["repair"]["layers"] > 0 and details["repair"]["samples"] == 48
    repaired = onnx.load(str(out))
    out2 = tmp_path / "p2.onnx"
    assert main(["prune", str(src), "--ratio", "0.3", "-o", str(out2), "--calib", str(npz), "--no-repair"]) == 0
    assert "repair:" not in capsys.readouterr().out
    plain = onnx.load(str(out2))
    assert [n.op_type for n in plain.graph.node] == [n.op_type for n in repaired.graph.node]
    assert any(not np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
               for a, b in zip(plain.graph.initializer, repaired.graph.initializer))
    out3 = tmp_path / "p3.onnx"
    assert main(["prune", str(src), "--ratio", "0.3", "-o", str(out3), "--repair"]) == 2
    assert "--repair needs calibration data" in capsys.readouterr().err and not out3.exists()
