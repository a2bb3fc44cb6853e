"""Timed blocks: fused epilogues, signatures, and widths that follow the channel groups."""
from __future__ import annotations

import numpy as np

from halp_onnx import inspect
from halp_onnx.examples import cifar_resnet, mobilenet
from halp_onnx.passes.rewrite import kept_channels, rewrite
from halp_onnx.profiles.blocks import block_widths, model_blocks


def test_resnet_blocks_fuse_bn_free_epilogues_and_follow_widths():
    loaded, analysis = inspect(cifar_resnet())
    blocks = model_blocks(loaded, analysis)
    convs = [b for b in blocks if b.signature.op == "Conv"]
    assert len(convs) == 7 and all(b.signature.kernel == (3, 3) for b in convs)
    assert convs[0].c_in == 3 and convs[0].signature.in_hw == (32, 32)
    assert {b.signature.stride for b in convs} == {(1, 1), (2, 2)}
    # BN is folded into the kernel's weights: the signature (the table key) names what the kernel runs
    assert convs[0].signature.epilogue == ("Relu",)
    assert ("Add", "Relu") in {b.signature.epilogue for b in convs}  # residual fused
    assert len(convs[0].fused) == 2  # its BN and Relu nodes belong to the block
    gemm = next(b for b in blocks if b.signature.op == "Gemm")
    assert (gemm.c_in, gemm.c_out) == (64, 10)
    # widths under a keep choice equal the rewritten model's real channel counts
    keep = {g.id: list(range(0, g.size, 2)) for g in analysis.prunable}
    kept = kept_channels(analysis, keep)
    result = rewrite(loaded, analysis, keep)
    shapes = {i.name: tuple(i.dims) for i in result.model.graph.initializer}
    nodes = {n.name: n for n in result.model.graph.node}
    for b in convs:
        c_in, c_out = block_widths(analysis, kept, b)
        w = shapes[nodes[b.node].input[1]]
        assert (c_in, c_out) == (w[1], w[0]), b.node


def test_mobilenet_signatures():
    loaded, analysis = inspect(mobilenet())
    blocks = model_blocks(loaded, analysis)
    rules = {b.signature.groups for b in blocks if b.signature.op == "Conv"}
    assert {"dense", "depthwise"} <= rules
    fused = [b for b in blocks if b.signature.epilogue]
    assert any(b.signature.epilogue == ("HardSwish",) for b in fused)
    assert any(b.signature.op == "Pool" for b in blocks)
    keys = {b.signature.key() for b in blocks}
    assert len(keys) < len(blocks)  # identical layers share one signature (measured once)
    dense = np.ones(len(analysis.channel_group), bool)
    assert all(block_widths(analysis, dense, b) == (b.c_in, b.c_out) for b in blocks)
