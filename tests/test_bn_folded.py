"""Fine-tuning BN-folded graphs (halp_onnx.torch.bn_reinsert): a BatchNorm re-inserted after every
folded layer, the identity at init, trained as BN, folded back on write-back into a graph with the
input's nodes and op types that computes what the trained module computes; the defaults (LR,
warm-up, clipping) for such graphs; the real pretrained ResNet-20 export (skips without ../shared)."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from bench import zoo
from halp_onnx.builder import GraphBuilder

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from halp_onnx import api  # noqa: E402
from halp_onnx.errors import HalpError  # noqa: E402
from halp_onnx.torch import OnnxModule  # noqa: E402
from halp_onnx.torch.bn_reinsert import BNReinsertion, candidate_layers, reinsert_bn  # noqa: E402
from halp_onnx.torch.finetune import FinetuneConfig, Trainer, finetune  # noqa: E402

torch.set_num_threads(1)


def folded_resnet(seed: int = 0, size: int = 8, width: int = 8, classes: int = 4, blocks: int = 2,
                  conv_bias: bool = True) -> onnx.ModelProto:
    """A small CIFAR-ResNet-like graph as an exporter writes it with BN folded: Conv(+bias) -> Relu,
    residual blocks Conv-Relu-Conv-Add-Relu, GAP, Gemm head; symbolic batch."""
    b = GraphBuilder("folded", seed)
    x = b.input("input", ["N", 3, size, size])
    y = b.op("Relu", [b.conv(x, 3, width, bias=conv_bias)])
    for _ in range(blocks):
        h = b.op("Relu", [b.conv(y, width, width, bias=conv_bias)])
        y = b.op("Relu", [b.op("Add", [y, b.conv(h, width, width, bias=conv_bias)])])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [y, b.weight((classes, width)), b.const(np.zeros(classes, np.float32))],
                                         ["logits"], name="head", transB=1))
    b.output("logits")
    return b.model()


def mlp(seed: int = 0, trans_b: int = 1) -> onnx.ModelProto:
    """Flatten -> Gemm (hidden, transB as given, beta 0.5) -> Relu -> Gemm head."""
    b = GraphBuilder("mlp", seed)
    x = b.input("input", ["N", 3, 4, 4])
    h = b.op("Flatten", [x], axis=1)
    w = b.weight((16, 48)) if trans_b else b.const((np.random.default_rng(seed).standard_normal((48, 16)) / 7)
                                                   .astype(np.float32), "w")
    b.nodes.append(onnx.helper.make_node("Gemm", [h, w, b.const(np.full(16, 0.3, np.float32))], ["hid"],
                                         name="hidden", transB=trans_b, beta=0.5))
    h = b.op("Relu", ["hid"])
    b.nodes.append(onnx.helper.make_node("Gemm", [h, b.weight((4, 16)), b.const(np.zeros(4, np.float32))],
                                         ["logits"], name="head", transB=1))
    b.output("logits")
    return b.model()


def images(n: int = 96, size: int = 8, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    x[..., 0] = np.clip(x[..., 0].astype(int) // 2 + 40 * labels[:, None, None], 0, 255)
    return x, labels.astype(np.int64)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def pruned_folded(seed: int = 0) -> onnx.ModelProto:
    return api.prune(folded_resnet(seed), 0.5, input_shapes={"input": (1, 3, 8, 8)}).model


# ------------------------------------------------------------------------------------------------
# which layers


def test_candidate_layers():
    folded = folded_resnet()
    assert [n.op_type for n, _ in candidate_layers(folded)] == ["Conv"] * 5  # the head is a graph output
    assert [c for _, c in candidate_layers(folded)] == [8] * 5
    assert candidate_layers(folded, "off") == []
    assert [n.name for n, _ in candidate_layers(mlp())] == ["hidden"]
    b = GraphBuilder("bn", 0)  # a graph with BN: auto leaves it alone, "all" takes the layers no BN follows
    x = b.input("input", ["N", 3, 8, 8])
    y = b.op("Relu", [b.bn(b.conv(x, 3, 4, bias=False), 4)])
    b.output(b.op("Relu", [b.conv(y, 4, 4)]))
    b.output(b.op("Relu", [b.conv(y, 4, 4)]))
    with_bn = b.model()
    assert candidate_layers(with_bn) == []
    assert len(candidate_layers(with_bn, "all")) == 2
    with pytest.raises(HalpError, match="reinsert_bn 'x'"):
        candidate_layers(folded, "x")
    with pytest.raises(HalpError, match="reinsert_bn"):
        FinetuneConfig(reinsert_bn="x")


# ------------------------------------------------------------------------------------------------
# init: identity


def test_identity_at_init_and_gates_after_bn():
    model = pruned_folded()
    x, _ = images(64)
    xt = torch.from_numpy(((x / 255.0 - 0.45) / 0.25).transpose(0, 3, 1, 2).astype(np.float32))
    ref = OnnxModule(model).eval()(xt).detach()

    module = OnnxModule(model)
    first_conv = next(n.output[0] for n in model.graph.node if n.op_type == "Conv")
    gate = torch.ones(1, 8, 1, 1)
    gate[0, 0] = 0.0
    module.set_tensor_hook(first_conv, lambda t: t * gate[:, :t.shape[1]])  # e.g. channel gates, set before
    r = reinsert_bn(module)
    assert isinstance(r, BNReinsertion) and len(r) == 5 and not r.initialized
    assert {k for k, _ in module.named_buffers() if k.startswith("reinserted_bn")}
    with pytest.raises(HalpError, match="already"):
        BNReinsertion(module)
    out = module.eval()(xt).detach()  # uncalibrated: pass-through
    plain = OnnxModule(model)
    plain.set_tensor_hook(first_conv, lambda t: t * gate[:, :t.shape[1]])
    gated_ref = plain.eval()(xt).detach()
    assert torch.allclose(out, gated_ref, atol=1e-5)
    assert r.calibrate([xt[:32], xt[32:]]) == 64 and r.initialized
    with pytest.raises(HalpError, match="initialised already"):
        r.calibrate([xt])
    # eval: exactly the function it had (weights scaled to unit output variance, the BN carries the scale)
    assert torch.allclose(module.eval()(xt).detach(), gated_ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # train mode on the same images: batch statistics = the calibrated ones, still the identity
    assert torch.allclose(module.train()(xt).detach(), gated_ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
    # the gate set before sits after the BN: the gated channel stays zero
    seen = {}
    prev = module._tensor_hooks[first_conv]
    module._tensor_hooks[first_conv] = lambda t: seen.setdefault("y", prev(t))
    module.eval()(xt)
    y0 = seen["y"].detach()
    assert float(y0[:, 0].abs().max()) == 0.0 and float(y0[:, 1].abs().max()) > 0
    # written back before any training (the gate is a hook, not part of the graph): the input model's function
    assert ops(module.write_back()) == ops(model)
    np.testing.assert_allclose(ort_run(module.write_back(), xt.numpy()), ref.numpy(), rtol=1e-4,
                               atol=1e-4 * float(ref.abs().max()))


# ------------------------------------------------------------------------------------------------
# training, write-back


def _check_write_back(trainer: Trainer, source: onnx.ModelProto, x_uint8: np.ndarray) -> None:
    tuned = trainer.student_onnx()
    assert ops(tuned) == ops(source) and len(tuned.graph.node) == len(source.graph.node)
    onnx.checker.check_model(tuned, full_check=True)
    x = trainer.prepare(x_uint8)
    with torch.no_grad():
        want = trainer.student.eval()(x).numpy()
    got = ort_run(tuned, x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_finetune_folded_pruned_defaults_converge_and_fold_back():
    model = pruned_folded(seed=1)
    teacher = folded_resnet(seed=1)
    x, y = images(256)
    cfg = FinetuneConfig(device="cpu", batch_size=32, mean=(0.45,), std=(0.25,), holdout=0.0, eval_every=0, seed=0)
    assert cfg.clip_grad_norm == 20.0 and cfg.warmup_epochs == 0.3 and cfg.reinsert_bn == "auto"
    seen, snap = [], {}

    def cb(tr, step):
        seen.append(tr)
        if step == 1:
            snap.update({k: v.detach().clone() for k, v in tr.bn_reinsertion.bns.named_parameters()})

    res = finetune(model, teacher, (x, y), cfg, progress=False, callback=cb)
    tr = seen[0]
    assert tr.bn_reinsertion is not None and len(tr.bn_reinsertion) == 5 and tr.bn_reinsertion.initialized
    assert tr.base_lr == pytest.approx(0.003)  # SGD on a graph without BN nodes
    assert res.steps == 8 and all(math.isfinite(h["loss"]) for h in res.history)
    # the BN parameters trained and are in the optimizer (no weight decay)
    bn_params = {id(p) for p in tr.bn_reinsertion.parameters()}
    groups = [g for g in tr.optimizer.param_groups if any(id(p) in bn_params for p in g["params"])]
    assert groups and all(g["weight_decay"] == 0.0 for g in groups)
    assert any(not torch.equal(v, snap[k]) for k, v in tr.bn_reinsertion.bns.named_parameters())
    # the written model: the input's nodes and initializer names, the trained module's function
    assert [t.name for t in res.model.graph.initializer] == [t.name for t in model.graph.initializer]
    _check_write_back(tr, model, x[:40])
    np.testing.assert_allclose(ort_run(res.model, tr.prepare(x[:40]).numpy()),
                               ort_run(tr.student_onnx(), tr.prepare(x[:40]).numpy()), rtol=1e-6, atol=1e-6)
    # the teacher is not touched
    assert tr.teacher is not None and tr.teacher.bn_reinsertion is None


@pytest.mark.parametrize("trans_b", [1, 0])
def test_gemm_and_biasless_conv_fold(trans_b):
    x, y = images(64, size=4)
    model = mlp(trans_b=trans_b)
    tr = Trainer(model, model, FinetuneConfig(device="cpu", mean=(0.5,), std=(0.25,), lr=0.05), steps_per_epoch=4)
    assert len(tr.bn_reinsertion) == 1
    tr.calibrate_bn(x)
    for i in range(4):
        assert math.isfinite(float(tr.step(x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16])["loss"]))
    _check_write_back(tr, model, x)

    folded = folded_resnet(conv_bias=False, blocks=1)
    tr = Trainer(folded, None, FinetuneConfig(device="cpu", mean=(0.5,), std=(0.25,), lr=0.05), steps_per_epoch=4)
    xi, yi = images(64)
    for i in range(3):  # uncalibrated: the first step calibrates on its batch
        tr.step(xi[i * 16:(i + 1) * 16], yi[i * 16:(i + 1) * 16])
    tuned = tr.student_onnx()
    assert ops(tuned) == ops(folded)
    assert all(len(n.input) == 3 and n.input[2] for n in tuned.graph.node if n.op_type == "Conv")  # a bias added
    _check_write_back(tr, folded, xi[:16])


def test_reinsertion_off_and_graphs_with_bn_keep_their_defaults():
    model = folded_resnet()
    off = Trainer(model, None, FinetuneConfig(device="cpu", reinsert_bn="off"))
    assert off.bn_reinsertion is None and off.base_lr == pytest.approx(0.003)
    b = GraphBuilder("bn", 0)
    x = b.input("input", ["N", 3, 8, 8])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [b.bn(b.conv(x, 3, 4, bias=False), 4)])])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [y, b.weight((4, 4)), b.const(np.zeros(4, np.float32))], ["logits"],
                                         name="head", transB=1))
    b.output("logits")
    with_bn = Trainer(b.model(), None, FinetuneConfig(device="cpu"))
    assert with_bn.bn_reinsertion is None and with_bn.base_lr == pytest.approx(0.01)
    assert Trainer(model, None, FinetuneConfig(device="cpu", lr=0.02)).base_lr == pytest.approx(0.02)


def test_checkpoint_resume_with_reinserted_bn(tmp_path):
    model, teacher = pruned_folded(seed=2), folded_resnet(seed=2)
    x, y = images(64)
    cfg = FinetuneConfig(device="cpu", lr=0.01, seed=3, mean=(0.45,), std=(0.25,))
    torch.manual_seed(0)
    straight = Trainer(model, teacher, cfg, steps_per_epoch=8)
    straight.calibrate_bn(x[:32])
    for s in range(6):
        straight.step(x[(s * 8) % 64:(s * 8) % 64 + 8], y[(s * 8) % 64:(s * 8) % 64 + 8])
    torch.manual_seed(0)
    first = Trainer(model, teacher, cfg, steps_per_epoch=8)
    first.calibrate_bn(x[:32])
    for s in range(3):
        first.step(x[(s * 8) % 64:(s * 8) % 64 + 8], y[(s * 8) % 64:(s * 8) % 64 + 8])
    first.save_checkpoint(tmp_path / "c.pt")
    second = Trainer.resume(tmp_path / "c.pt", model, teacher)
    assert second.bn_reinsertion.initialized  # restored, not recalibrated
    for s in range(3, 6):
        second.step(x[(s * 8) % 64:(s * 8) % 64 + 8], y[(s * 8) % 64:(s * 8) % 64 + 8])
    a, b = straight.student.state_dict(), second.student.state_dict()
    assert a.keys() == b.keys() and any(k.startswith("reinserted_bn") for k in a)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


# ------------------------------------------------------------------------------------------------
# the real pretrained ResNet-20, exported with BN folded


@pytest.mark.skipif(zoo.shared_dir() is None, reason="../shared (CIFAR-10 data and weights) is absent")
def test_pretrained_resnet20_export_pruned_half_finetunes_with_defaults(tmp_path):
    dense_path = zoo.export_cifar_resnet(20, tmp_path / "r20.onnx", npz=zoo.cifar_resnet_weights(20))
    dense = onnx.load(str(dense_path))
    assert not any(n.op_type == "BatchNormalization" for n in dense.graph.node)
    pruned = api.prune(dense_path, 0.5, input_shapes={"input": (1, 3, 32, 32)}).model
    train_x, train_y = zoo.load_cifar_jpeg("train")
    pick = np.random.default_rng(0).permutation(len(train_x))[:384]
    cfg = FinetuneConfig(device="cpu", batch_size=64, holdout=0.0, eval_every=0, seed=0)  # defaults otherwise
    seen = []
    res = finetune(pruned, dense, (train_x[pick], train_y[pick]), cfg, progress=False,
                   callback=lambda tr, s: seen.append(tr))
    assert res.steps == 6 and all(math.isfinite(h["loss"]) for h in res.history)
    tr = seen[0]
    assert len(tr.bn_reinsertion) == 19
    assert ops(res.model) == ops(pruned)
    assert [t.name for t in res.model.graph.initializer] == [t.name for t in pruned.graph.initializer]
    xe, _ = zoo.load_cifar_exact1017()
    x = zoo.normalize_cifar(xe[:64])
    with torch.no_grad():
        want = tr.student.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_run(res.model, x), want, rtol=1e-4, atol=1e-4)
