"""Channel gates (halp_onnx.torch.gates) and the importance pass (Taylor / magnitude).

(a) gate gradients equal a hand-built torch graph and central finite differences; (b) coupled
channels sum their producers' signed contributions before the absolute value; (c) masked channels
score 0 and the masked forward equals onnxruntime on ``masked_reference``; (d) magnitude importance
has mean 1 per group; (e) with ../shared: Taylor on the real CIFAR ResNet-20 picks better channels
than its reverse.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from bench import zoo  # noqa: E402
from halp_onnx.builder import GraphBuilder  # noqa: E402
from halp_onnx.errors import HalpError  # noqa: E402
from halp_onnx.examples import example  # noqa: E402
from halp_onnx.passes.channel_groups import analyze  # noqa: E402
from halp_onnx.passes.importance import (Importance, _import_torch, magnitude_importance,  # noqa: E402
                                         taylor_importance)
from halp_onnx.passes.load import load  # noqa: E402
from halp_onnx.passes.rewrite import kept_channels, rewrite  # noqa: E402
from halp_onnx.passes.select import keep_by_ratio, l2_scores  # noqa: E402
from halp_onnx.passes.verify import masked_reference, session  # noqa: E402
from halp_onnx.torch import OnnxModule  # noqa: E402
from halp_onnx.torch.gates import ChannelGates  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    out = {}
    for name in ("resnet", "mobilenet"):
        loaded = load(example(name))
        out[name] = (loaded, analyze(loaded))
    return out


def batch(loaded, n, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shape = loaded.input_shapes["input"]
    return rng.standard_normal((n, *shape[1:])).astype(dtype), rng.integers(0, 10, n)


def loss_of(module, x, y):
    return torch.nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(y))


def one_batch_signed(module, loaded, analysis, x, y):
    gates = ChannelGates(module, loaded, analysis)
    loss_of(module, x, y).backward()
    gates.accumulate()
    return gates


# ------------------------------------------------------------------------------------------------
# (a) the gate gradient is dL/dgate


def tiny_model():
    b = GraphBuilder("tiny", seed=3)
    x = b.input("input", [1, 3, 6, 6])
    h = b.op("Relu", [b.bn(b.conv(x, 3, 4, bias=True), 4)])
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1)
    b.nodes.append(__import__("onnx").helper.make_node(
        "Gemm", [h, b.weight((3, 4)), b.const(np.zeros(3, np.float32))], ["logits"], name="fc", transB=1))
    b.output("logits")
    return b.model()


def test_gate_gradient_matches_hand_built_torch():
    loaded = load(tiny_model())
    analysis = analyze(loaded)
    module = OnnxModule(loaded.model).double().eval()
    gates = ChannelGates(module, loaded, analysis)
    (bn,) = [n for n in loaded.model.graph.node if n.op_type == "BatchNormalization"]
    assert gates.tensors == [bn.output[0]]  # after the BN, not the conv output
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 6, 6))
    y = rng.integers(0, 3, 5)
    loss_of(module, x, y).backward()
    gates.accumulate()

    c = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in loaded.constants.items()}
    conv = next(n for n in loaded.model.graph.node if n.op_type == "Conv")
    fc = next(n for n in loaded.model.graph.node if n.op_type == "Gemm")
    gate = torch.ones(4, dtype=torch.float64, requires_grad=True)
    h = torch.nn.functional.conv2d(torch.from_numpy(x), c[conv.input[1]], c[conv.input[2]], padding=1)
    h = torch.nn.functional.batch_norm(h, c[bn.input[3]], c[bn.input[4]], c[bn.input[1]], c[bn.input[2]],
                                       training=False, eps=1e-5)
    h = torch.relu(h * gate.view(1, -1, 1, 1)).mean(dim=(2, 3))
    logits = h @ c[fc.input[1]].T + c[fc.input[2]]
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()

    ids = gates.ids[bn.output[0]]
    np.testing.assert_allclose(gates.signed()[ids], gate.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gates.scores()[ids], np.abs(gate.grad.numpy()), rtol=1e-10, atol=1e-14)
    assert np.abs(gate.grad.numpy()).min() > 0


@pytest.mark.parametrize("name,mode", [("resnet", "eval"), ("resnet", "train"), ("mobilenet", "eval")])
def test_gate_gradient_matches_finite_differences(models, name, mode):
    loaded, analysis = models[name]
    module = OnnxModule(loaded.model).double()
    getattr(module, mode)()
    x, y = batch(loaded, 4, seed=2, dtype=np.float64)
    gates = one_batch_signed(module, loaded, analysis, x, y)
    signed = gates.signed()

    probe = OnnxModule(loaded.model).double()
    getattr(probe, mode)()

    def loss_with(channel, scale):
        probe.clear_tensor_hooks()
        for t in gates.tensors:
            sel = gates.ids[t] == channel
            if sel.any():
                view = [1] * len(loaded.shapes[t])
                for i, ax in enumerate(gates.axes[t]):
                    view[ax] = sel.shape[i]
                f = torch.from_numpy(np.where(sel, scale, 1.0)).view(*view)
                probe.set_tensor_hook(t, lambda v, f=f: v * f)
        with torch.no_grad():
            return float(loss_of(probe, x, y))

    eps = 1e-6
    for group in analysis.prunable:
        members = np.nonzero(analysis.channel_group == group.id)[0]
        scale = np.abs(signed[members]).max()
        assert scale > 0
        for ch in members[:: max(1, len(members) // 3)][:3]:
            fd = (loss_with(ch, 1 + eps) - loss_with(ch, 1 - eps)) / (2 * eps)
            assert abs(fd - signed[ch]) <= 1e-5 * scale + 1e-6 * abs(fd), (group.id, ch, fd, signed[ch])


# ------------------------------------------------------------------------------------------------
# (b) coupled channels: |sum over producers|, gradients zeroed between batches


def per_tensor_contributions(loaded, tensors, x, y):
    """sum over batch and space of x * dL/dx for each tensor: dL/dgate at gate = 1, without gates."""
    module = OnnxModule(loaded.model).double().eval()
    kept = {}

    def keep(name):
        def hook(v):
            v.retain_grad()
            kept[name] = v
            return v
        return hook

    for t in tensors:
        module.set_tensor_hook(t, keep(t))
    loss_of(module, x, y).backward()
    return {t: (v * v.grad).sum(dim=(0, 2, 3)).detach().numpy() for t, v in kept.items()}


def test_coupled_group_sums_signed_contributions(models):
    loaded, analysis = models["resnet"]
    trunk = max(analysis.prunable, key=lambda g: len(g.producers))
    assert len(trunk.producers) == 4
    module = OnnxModule(loaded.model).double().eval()
    gates = ChannelGates(module, loaded, analysis)
    trunk_tensors = [t for t in gates.tensors if np.any(analysis.channel_group[gates.ids[t][gates.ids[t] >= 0]]
                                                        == trunk.id)]
    assert len(trunk_tensors) == 4

    batches = [batch(loaded, 3, seed=s, dtype=np.float64) for s in (10, 11)]
    expected_abs = []
    for x, y in batches:
        contrib = per_tensor_contributions(loaded, trunk_tensors, x, y)
        loss_of(module, x, y).backward()
        gates.accumulate()
        for t in trunk_tensors:
            np.testing.assert_allclose(gates.contributions()[t], contrib[t], rtol=1e-9, atol=1e-13)
        members = np.nonzero(analysis.channel_group == trunk.id)[0]
        signed_sum = np.zeros(len(analysis.channel_group))
        abs_sum = np.zeros(len(analysis.channel_group))
        n_tensors = np.zeros(len(analysis.channel_group), dtype=int)
        for t in trunk_tensors:
            np.add.at(signed_sum, gates.ids[t], contrib[t])
            np.add.at(abs_sum, gates.ids[t], np.abs(contrib[t]))
            np.add.at(n_tensors, gates.ids[t], 1)
        assert n_tensors[members].max() == 4  # the stage-1 channels run through all four producers
        np.testing.assert_allclose(gates.signed()[members], signed_sum[members], rtol=1e-9, atol=1e-13)
        # the signs differ between producers: summing before |.| matters
        assert np.any(abs_sum[members] > 1.5 * np.abs(signed_sum[members]) + 1e-12)
        expected_abs.append(np.abs(signed_sum))
    # scores average the per-batch |sum| (the second batch saw no stale gradient of the first)
    members = analysis.channel_group == trunk.id
    np.testing.assert_allclose(gates.scores()[members], np.mean(expected_abs, axis=0)[members], rtol=1e-9,
                               atol=1e-13)
    assert gates.batches == 2
    gates.reset()
    assert gates.batches == 0 and not gates.scores().any()


# ------------------------------------------------------------------------------------------------
# (c) masks


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_masked_channels_score_zero_and_match_masked_reference(models, name):
    loaded, analysis = models[name]
    rng = np.random.default_rng(5)
    kept = kept_channels(analysis, keep_by_ratio(analysis, rng.random(len(analysis.channel_group)), 0.3))
    assert (~kept).sum() > 10
    module = OnnxModule(loaded.model).eval()
    gates = ChannelGates(module, loaded, analysis)
    gates.set_mask(kept)
    x, y = batch(loaded, 3, seed=6)

    ref = session(masked_reference(loaded, analysis, kept))
    plain = session(loaded.model)
    want = np.concatenate([ref.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    dense = np.concatenate([plain.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    assert np.abs(want - dense).max() > 1e-3  # the mask changes the outputs
    got = module(torch.from_numpy(x))
    assert np.abs(got.detach().numpy() - want).max() <= 1e-4 * np.abs(want).max()

    torch.nn.functional.cross_entropy(got, torch.from_numpy(y)).backward()
    gates.accumulate()
    scores = gates.scores()
    prunable = np.isin(analysis.channel_group, [g.id for g in analysis.prunable])
    assert not scores[~kept].any()
    assert (scores[kept & prunable] > 0).mean() > 0.8

    gates.set_mask(None)
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), dense, rtol=1e-4,
                                   atol=1e-4 * np.abs(dense).max())
    gates.remove()
    assert not module._tensor_hooks

    trained = OnnxModule(loaded.model).train()  # train mode: BN on batch statistics
    gates = ChannelGates(trained, loaded, analysis)
    gates.set_mask(kept)
    loss_of(trained, x, y).backward()
    gates.accumulate()
    assert not gates.scores()[~kept].any() and gates.scores()[kept & prunable].max() > 0


# ------------------------------------------------------------------------------------------------
# (d) magnitude importance, Importance, errors


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_magnitude_importance_normalised_per_group(models, name):
    loaded, analysis = models[name]
    imp = magnitude_importance(loaded, analysis)
    assert isinstance(imp, Importance) and imp.method == "magnitude" and imp.loss is None
    assert imp.scores.dtype == np.float64 and imp.scores.shape == analysis.channel_group.shape
    l2 = l2_scores(loaded, analysis)
    for group in analysis.prunable:
        members = analysis.channel_group == group.id
        assert abs(imp.scores[members].mean() - 1.0) < 1e-12
        np.testing.assert_allclose(imp.scores[members], l2[members] / l2[members].mean(), rtol=1e-12)
    d = imp.to_dict()
    json.dumps(d)
    assert "note" in d and d["channels"] == len(analysis.channel_group)


def test_taylor_importance_api_and_errors(models, monkeypatch):
    loaded, analysis = models["mobilenet"]
    x, y = batch(loaded, 4, seed=7)
    calls = []
    imp = taylor_importance(loaded, analysis, [(x, y), ({"input": x}, None), (x, y)], max_batches=2,
                            progress=lambda b, s: calls.append((b, s)))
    assert imp.method == "taylor" and imp.batches == 2 and imp.samples == 8 and calls == [(1, 4), (2, 8)]
    assert imp.loss == "cross-entropy" and "1 of 2" in imp.note
    assert imp.scores.shape == analysis.channel_group.shape and imp.scores.max() > 0
    json.dumps(imp.to_dict())
    unlabelled = taylor_importance(loaded, analysis, [(x, None)])
    assert unlabelled.loss == "self-prediction"

    with pytest.raises(HalpError, match="no calibration batch"):
        taylor_importance(loaded, analysis, [])
    with pytest.raises(HalpError, match="labels"):
        taylor_importance(loaded, analysis, [(x, y[:2])])
    with pytest.raises(HalpError, match="inputs"):
        taylor_importance(loaded, analysis, [({"image": x}, None)])

    b = GraphBuilder("features", seed=0)
    inp = b.input("input", [1, 3, 8, 8])
    b.output(b.op("Relu", [b.conv(inp, 3, 4)]))
    feats = load(b.model())
    with pytest.raises(HalpError, match="N x classes"):
        taylor_importance(feats, analyze(feats), [(np.zeros((1, 3, 8, 8), np.float32), None)])

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(HalpError, match=r"pip install 'halp-onnx\[torch\]'"):
        _import_torch()


def small_classifier(baked_batch: bool):
    import onnx

    b = GraphBuilder("small", seed=4)
    x = b.input("input", [1, 3, 8, 8])
    h = b.op("GlobalAveragePool", [b.op("Relu", [b.bn(b.conv(x, 3, 6, bias=False), 6)])])
    h = (b.op("Reshape", [h, b.const(np.array([1, 6], np.int64))]) if baked_batch
         else b.op("Flatten", [h], axis=1))
    b.nodes.append(onnx.helper.make_node("Gemm", [h, b.weight((4, 6)), b.const(np.zeros(4, np.float32))],
                                         ["logits"], name="fc", transB=1))
    b.output("logits")
    return b.model()


def test_taylor_batch_baked_into_graph_goes_sample_by_sample():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((5, 3, 8, 8)).astype(np.float32), rng.integers(0, 4, 5)
    scores = {}
    for baked in (False, True):
        loaded = load(small_classifier(baked))
        imp = taylor_importance(loaded, analyze(loaded), [(x, y)])
        assert ("one sample at a time" in imp.note) == baked
        scores[baked] = imp.scores
    assert scores[False].max() > 0
    np.testing.assert_allclose(scores[True], scores[False], rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# (e) the real CIFAR ResNet-20


@pytest.mark.skipif(zoo.shared_dir() is None, reason="../shared (CIFAR-10 data and weights) is absent")
def test_taylor_on_cifar_resnet20_beats_reversed(tmp_path):
    path = zoo.export_cifar_resnet(20, tmp_path / "resnet20.onnx", npz=zoo.cifar_resnet_weights(20))
    loaded = load(path, {"input": (1, 3, 32, 32)})
    analysis = analyze(loaded)
    module = OnnxModule(loaded.model).eval()
    gates = ChannelGates(module, loaded, analysis)
    producers = {p for g in analysis.prunable for p in g.producers}
    out_of = {o: n for n in loaded.model.graph.node for o in n.output}
    assert {out_of[t].op_type for t in gates.tensors} == {"Conv"}  # BN folded: the gates sit on convs
    assert {out_of[t].name for t in gates.tensors} == producers

    images, labels = zoo.load_cifar_jpeg("train")
    idx = np.random.default_rng(0).choice(len(images), 256, replace=False)  # the split is sorted by class
    x, y = zoo.normalize_cifar(images[idx]), labels[idx]
    imp = taylor_importance(loaded, analysis, ((x[i:i + 16], y[i:i + 16]) for i in range(0, 256, 16)))
    assert imp.batches == 16 and imp.samples == 256 and imp.loss == "cross-entropy"
    prunable = np.isin(analysis.channel_group, [g.id for g in analysis.prunable])
    assert (imp.scores[prunable] > 0).mean() > 0.9  # a few pretrained channels are dead (tiny weights)

    test_images, test_labels = zoo.load_cifar_jpeg("test")
    xt, yt = zoo.normalize_cifar(test_images[:500]), test_labels[:500]
    top1 = {}
    for name, scores in (("taylor", imp.scores), ("reversed", -imp.scores)):
        result = rewrite(loaded, analysis, keep_by_ratio(analysis, scores, 0.3))
        top1[name] = zoo.top1_onnx(result.model, xt, yt)
    print(f"resnet20 pruned 30% per group, top-1 on 500 test images: Taylor {top1['taylor']:.3f}, "
          f"reversed Taylor {top1['reversed']:.3f} ({imp.seconds:.2f} s for 256 images)")
    assert top1["taylor"] > top1["reversed"] + 0.05
