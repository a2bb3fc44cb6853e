"""bench.zoo: CIFAR ResNets against the figures of ../shared/README.md, the option-A Pad,
torchvision export, and the data helpers.

Timings measured on a 2-core CPU: exporting ResNet-20/56 about 2 s each (TorchScript), 5 s
(dynamo); decoding the 10k JPEG test set 1 s; ResNet-20 on it 12.5 s, ResNet-56 37 s in
onnxruntime. The ResNet-56 10k JPEG evaluation therefore only runs with HALP_SLOW_TESTS=1.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from bench import zoo

REPO = Path(__file__).resolve().parents[1]
SHARED = zoo.shared_dir()
SLOW = os.environ.get("HALP_SLOW_TESTS", "") not in ("", "0")

# README figures: top-1 on the exact 1,017 images / on the full 10k JPEG test set
EXPECTED = {20: (0.916, 0.810), 56: (0.927, 0.832)}
TOL = 0.002


def _have_shared_cifar() -> bool:
    return (SHARED is not None
            and (SHARED / "data" / "cifar10-test-exact1017.npz").exists()
            and (SHARED / "data" / "cifar10-jpeg.npz").exists()
            and all(zoo.cifar_resnet_weights(d) is not None for d in EXPECTED))


needs_shared = pytest.mark.skipif(
    not _have_shared_cifar(),
    reason="../shared (CIFAR-10 data and pretrained CIFAR ResNet weights) is absent")


# ---------------------------------------------------------------------------------------------
# no torch needed


def test_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
            "import bench.zoo as z; assert z.ExportResult and z.normalize_cifar; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_shared_dir_location():
    expected = REPO.parent / "shared"
    assert zoo.shared_dir() == (expected if expected.is_dir() else None)


def test_normalize_cifar():
    img = np.zeros((2, 4, 5, 3), np.uint8)
    img[1] = 255
    x = zoo.normalize_cifar(img)
    assert x.dtype == np.float32 and x.shape == (2, 3, 4, 5) and x.flags.c_contiguous
    mean, std = np.array(zoo.CIFAR_MEAN), np.array(zoo.CIFAR_STD)
    np.testing.assert_allclose(x[0, :, 0, 0], -mean / std, rtol=1e-6)
    np.testing.assert_allclose(x[1, :, 2, 3], (1 - mean) / std, rtol=1e-6)


def _mean_classifier(batch: int | str) -> onnx.ModelProto:
    """logits[n, c] = mean over H, W of input[n, c]: a 3-class classifier."""
    node = helper.make_node("ReduceMean", ["input", "axes"], ["logits"], keepdims=0)
    graph = helper.make_graph(
        [node], "mean",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [batch, 3, 2, 2])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("batch", [1, 4, "N"])
def test_top1_onnx_fixed_and_dynamic_batch(batch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(11, 3, 2, 2)).astype(np.float32)
    labels = x.mean(axis=(2, 3)).argmax(axis=1)
    labels[:3] = (labels[:3] + 1) % 3  # 3 of 11 wrong
    acc = zoo.top1_onnx(_mean_classifier(batch), x, labels, batch=5)
    assert acc == pytest.approx(8 / 11)


# ---------------------------------------------------------------------------------------------
# CIFAR ResNets (torch + ../shared)


@pytest.fixture(scope="module")
def cifar_onnx(tmp_path_factory):
    pytest.importorskip("torch")
    if not _have_shared_cifar():
        pytest.skip("../shared (CIFAR-10 data and pretrained CIFAR ResNet weights) is absent")
    out = tmp_path_factory.mktemp("cifar")
    return {d: zoo.export_cifar_resnet(d, out / f"resnet{d}.onnx",
                                       npz=zoo.cifar_resnet_weights(d))
            for d in EXPECTED}


@needs_shared
def test_cifar_resnet_state_dict_matches_npz():
    torch = pytest.importorskip("torch")
    for depth in EXPECTED:
        model = zoo.load_cifar_resnet(depth)
        with np.load(zoo.cifar_resnet_weights(depth)) as z:
            keys = set(z.files)
            state = {k: v for k, v in model.state_dict().items()
                     if not k.endswith("num_batches_tracked")}
            assert set(state) == keys
            for k, v in state.items():
                assert torch.equal(v, torch.from_numpy(z[k])), k
        assert not model.training
        n_blocks = (depth - 2) // 6
        assert len(model.layer1) == len(model.layer2) == len(model.layer3) == n_blocks


@needs_shared
@pytest.mark.parametrize("depth", sorted(EXPECTED))
def test_cifar_onnx_matches_torch(cifar_onnx, depth):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    images, _ = zoo.load_cifar_exact1017()
    x = zoo.normalize_cifar(images[:37])
    with torch.no_grad():
        ref = zoo.load_cifar_resnet(depth)(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(cifar_onnx[depth]), providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {"input": x})[0]  # batch 37 through the symbolic axis "N"
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@needs_shared
@pytest.mark.parametrize("depth", sorted(EXPECTED))
def test_cifar_exact1017_top1(cifar_onnx, depth):
    images, labels = zoo.load_cifar_exact1017()
    assert images.shape == (1017, 32, 32, 3) and images.dtype == np.uint8
    acc = zoo.top1_onnx(cifar_onnx[depth], zoo.normalize_cifar(images), labels)
    assert acc == pytest.approx(EXPECTED[depth][0], abs=TOL)


@needs_shared
@pytest.mark.parametrize("depth", [
    20,
    pytest.param(56, marks=pytest.mark.skipif(
        not SLOW, reason="ResNet-56 on 10k images takes ~37 s on 2 cores; set HALP_SLOW_TESTS=1")),
])
def test_cifar_jpeg_test_top1(cifar_onnx, depth):
    images, labels = zoo.load_cifar_jpeg("test")
    assert images.shape == (10000, 32, 32, 3) and labels.shape == (10000,)
    exact_images, exact_labels = zoo.load_cifar_exact1017()
    np.testing.assert_array_equal(labels[:1017], exact_labels)
    # JPEG pixels differ from the exact ones by about 5.8/255 on average
    assert 2.0 < np.abs(images[:1017].astype(int) - exact_images).mean() < 10.0
    acc = zoo.top1_onnx(cifar_onnx[depth], zoo.normalize_cifar(images), labels, batch=1000)
    assert acc == pytest.approx(EXPECTED[depth][1], abs=TOL)


def _const_value(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    raise AssertionError(f"{name} is not a constant")


def _check_option_a(model: onnx.ModelProto) -> None:
    producers = {o: n for n in model.graph.node for o in n.output}
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    assert len(pads) == 2  # first blocks of layer2 and layer3
    seen = []
    for pad in pads:
        p = _const_value(model, pad.input[1]).tolist()
        assert len(p) == 8
        assert p[1] > 0 and p[5] > 0 and p[1] == p[5], p  # channel axis, both sides
        assert p[0] == p[2] == p[3] == p[4] == p[6] == p[7] == 0, p
        seen.append(p[1])
        # fed by the strided spatial Slice x[:, :, ::2, ::2]
        src = producers[pad.input[0]]
        assert src.op_type == "Slice"
        steps = []
        while src.op_type == "Slice":
            has_steps = len(src.input) > 4 and src.input[4]
            steps += _const_value(model, src.input[4]).tolist() if has_steps else [1]
            src = producers[src.input[0]]
        assert steps and set(steps) == {2}
    assert sorted(seen) == [8, 16]


@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
def test_cifar_export_option_a_pad_on_channel_axis(tmp_path, exporter):
    pytest.importorskip("torch")
    path = zoo.export_cifar_resnet(20, tmp_path / "r20.onnx", exporter=exporter)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    _check_option_a(model)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 3, 32, 32]
    assert out.type.tensor_type.shape.dim[0].dim_param == "N"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["halp_onnx.exporter"] == exporter
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


@needs_shared
def test_cifar_pretrained_export_option_a(cifar_onnx):
    for path in cifar_onnx.values():
        _check_option_a(onnx.load(str(path)))


# ---------------------------------------------------------------------------------------------
# torchvision


def test_list_classification_models():
    pytest.importorskip("torchvision")
    names = zoo.list_classification_models()
    assert len(names) == 80 and len(set(names)) == 80
    assert {"resnet18", "inception_v3", "vit_b_16", "mobilenet_v3_small"} <= set(names)


@pytest.mark.zoo
@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
def test_export_torchvision_resnet18(tmp_path, exporter):
    pytest.importorskip("torchvision")
    ort = pytest.importorskip("onnxruntime")
    res = zoo.export_torchvision("resnet18", tmp_path, exporter=exporter)
    assert isinstance(res, zoo.ExportResult)
    assert res.path == tmp_path / "resnet18.onnx" and res.path.exists()
    assert res.exporter == exporter and not res.cached and res.seconds > 0
    assert res.opset == (17 if exporter == "torchscript" else 18)
    assert not res.external_data and sorted(p.name for p in tmp_path.iterdir()) == ["resnet18.onnx"]
    onnx.checker.check_model(str(res.path), full_check=True)
    model = onnx.load(str(res.path))
    assert len(model.functions) == 0
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 224, 224]
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": np.zeros((1, 3, 224, 224), np.float32)})[0]
    assert y.shape == (1, 1000) and np.isfinite(y).all()

    again = zoo.export_torchvision("resnet18", tmp_path)  # "auto" reuses any valid export
    assert again.cached and again.exporter == exporter and again.path == res.path


@pytest.mark.zoo
def test_export_torchvision_auto_prefers_torchscript_and_is_deterministic(tmp_path):
    pytest.importorskip("torchvision")
    a = zoo.export_torchvision("squeezenet1_1", tmp_path / "a")
    b = zoo.export_torchvision("squeezenet1_1", tmp_path / "b")
    assert a.exporter == b.exporter == "torchscript" and a.fallback_reason is None
    wa = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(a.path)).graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(b.path)).graph.initializer}
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    c = zoo.export_torchvision("squeezenet1_1", tmp_path / "a", seed=1)  # other seed: re-export
    assert not c.cached


def test_export_torch_module_attention_torchscript(tmp_path):
    """nn.MultiheadAttention must not take its fused no-grad fast path during the export
    (aten::_native_multi_head_attention has no TorchScript ONNX symbolic: ViTs failed so)."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")

    class SelfAttention(torch.nn.Module):  # as in torchvision's ViT EncoderBlock
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    layer = SelfAttention().eval()
    x = torch.randn(1, 5, 16)
    path = zoo.export_torch_module(layer, x, tmp_path / "enc.onnx", "torchscript",
                                   output_names=("y",))
    with torch.no_grad():
        ref = layer(x).numpy()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
