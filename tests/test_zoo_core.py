"""The compiler core on a representative torchvision subset (the full 80 is tools/coverage.py).

Each model: random weights (degenerate inits redrawn so outputs depend on inputs), exported to ONNX
at 1x3x224x224, inspected, pruned at ratio 0.3 and verified against the masked original.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from halp_onnx import prune  # noqa: E402
from bench.zoo import export_torch_module, redraw_degenerate_weights  # noqa: E402

# model -> (pattern it exercises, minimum share of parameters in prunable groups)
SUBSET = {
    "alexnet": ("flatten of a 6x6 map before Gemm", 0.99),
    "resnet18": ("residual adds", 0.99),
    "mobilenet_v3_small": ("depthwise, squeeze-excitation, hard-swish", 0.99),
    "efficientnet_b0": ("squeeze-excitation with sigmoid, SiLU", 0.99),
    "mnasnet0_5": ("depthwise, inverted residuals", 0.99),
    "shufflenet_v2_x0_5": ("channel split and shuffle", 0.99),
    "densenet121": ("dense concats", 0.99),
    "googlenet": ("inception branches, concat", 0.99),
    "squeezenet1_0": ("fire modules, concat", 0.99),
    "regnet_x_400mf": ("grouped convolutions", 0.99),
    "convnext_tiny": ("LayerNorm over channels (frozen), permutes, MLP", 0.85),
    "vit_b_16": ("attention (frozen), MatMul MLPs", 0.6),
    "swin_t": ("window attention, MatMul MLPs", 0.55),
}


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    cache = os.environ.get("HALP_ZOO_CACHE")
    return Path(cache) if cache else tmp_path_factory.mktemp("zoo_core")


@pytest.mark.zoo
@pytest.mark.parametrize("name", sorted(SUBSET))
def test_zoo_model_prunes_and_verifies(zoo_dir, name):
    path = zoo_dir / f"{name}_redrawn.onnx"
    if not path.exists():
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        redraw_degenerate_weights(model)
        try:
            export_torch_module(model, torch.randn(1, 3, 224, 224), path, "torchscript")
        except Exception:  # e.g. ViT's fused attention: only the dynamo exporter handles it
            export_torch_module(model, torch.randn(1, 3, 224, 224), path, "dynamo")
    result = prune(path, 0.3)
    check = result.verification
    assert check.passed and check.max_rel_error < 1e-4
    assert check.input_sensitive, "outputs do not depend on inputs: the check would be vacuous"
    analysis = result.analysis
    share = analysis.prunable_params / analysis.total_params
    assert share >= SUBSET[name][1], (name, share)
    assert result.rewrite.params[1] < result.rewrite.params[0]
    for group in analysis.groups:
        assert group.prunable or group.reasons  # every frozen group says why
