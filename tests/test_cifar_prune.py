"""CIFAR ResNet-20/56 with their real weights: prune at 0.3 through the option-A pads.

The pruned model must make exactly the predictions of the masked original on the 1,017 exact test
images (so the same top-1). Skips without ../shared or torch.
"""
from __future__ import annotations

import numpy as np
import pytest

from bench import zoo

pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(zoo.shared_dir() is None, reason="../shared (CIFAR-10 data and weights) is absent")


def predictions(model, images: np.ndarray) -> np.ndarray:
    from halp_onnx.passes.verify import session

    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: images[i:i + 256]})[0].argmax(1)
                           for i in range(0, len(images), 256)])


@pytest.mark.parametrize("depth,dense_top1", [(20, 0.916), (56, 0.927)])
def test_cifar_resnet_pruned_equals_masked(tmp_path, depth, dense_top1):
    import onnx

    from halp_onnx import prune
    from halp_onnx.passes.rewrite import restore_symbolic_dims
    from halp_onnx.passes.verify import masked_reference

    path = zoo.export_cifar_resnet(depth, tmp_path / f"resnet{depth}.onnx", npz=zoo.cifar_resnet_weights(depth))
    images, labels = zoo.load_cifar_exact1017()
    x = zoo.normalize_cifar(images)
    dense = predictions(onnx.load(str(path)), x)
    assert abs((dense == labels).mean() - dense_top1) < 0.0015  # ../shared/README.md: 91.6% / 92.7%

    result = prune(path, 0.3, input_shapes={"input": (1, 3, 32, 32)})
    assert result.verification.passed
    trunk = max(result.analysis.prunable, key=lambda g: len(g.producers))
    assert len(trunk.producers) == 3 * (depth - 2) // 6 + 1  # every block's conv2 and the stem share the trunk
    assert any(n.op_type == "Pad" for n in result.model.graph.node)
    reference = restore_symbolic_dims(masked_reference(result.loaded, result.analysis, result.rewrite.kept),
                                      result.loaded)
    pruned_pred = predictions(result.model, x)
    masked_pred = predictions(reference, x)
    assert np.array_equal(pruned_pred, masked_pred)
    assert result.rewrite.params[1] < 0.6 * result.rewrite.params[0]
    print(f"resnet{depth}: dense top-1 {(dense == labels).mean():.4f}, pruned 0.3 top-1 "
          f"{(pruned_pred == labels).mean():.4f} (masked original {(masked_pred == labels).mean():.4f}), "
          f"params {result.rewrite.params[0]} -> {result.rewrite.params[1]}, "
          f"max rel. error {result.verification.max_rel_error:.2e}")
