"""TensorRT-style kernel grouping for trt-* targets (profiles.fusion), the liveness of composed removals
(passes.liveness), and the analysis fixes they needed (uniform constants shared by exporters, GRN's
statistic inside a removed branch). Small hand-built graphs of the shapes seen in YOLO, ViT, BiT and
ConvNeXt-V2 exports."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import halp_onnx
from halp_onnx import inspect
from halp_onnx.builder import GraphBuilder
from halp_onnx.ops.table import GpuFusion, gpu_fusion
from halp_onnx.passes.liveness import live_outputs, restorer
from halp_onnx.passes.rewrite import rewrite
from halp_onnx.passes.solve import first_layer_groups
from halp_onnx.passes.verify import session, verify
from halp_onnx.profiles.block_model import block_feeds, block_model
from halp_onnx.profiles.blocks import model_blocks
from halp_onnx.profiles.targets import get_target

from graph_helpers import i64, silu, small

T, C, HEADS = 5, 12, 3


def _yolo_like() -> onnx.ModelProto:
    """Conv + SiLU blocks, a channel split and a concatenation (C2f), a residual bottleneck."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 3, 16, 16])
    a = silu(b, b.conv(x, 3, 16))
    left, right = b.op("Split", [a, i64(b, [8, 8])], n_out=2, axis=1)
    m = silu(b, b.conv(silu(b, b.conv(right, 8, 8)), 8, 8))
    right2 = b.op("Add", [right, m])
    cat = b.op("Concat", [left, right, right2], axis=1)
    y = silu(b, b.conv(cat, 24, 16))
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [pooled, b.weight((4, 16)), small(b, (4,))], ["y"], name="head",
                                         transB=1))
    b.output("y")
    return b.model()


def test_the_op_table_names_what_a_gpu_compiler_fuses():
    assert gpu_fusion("Sigmoid") is GpuFusion.POINTWISE and gpu_fusion("Mul") is GpuFusion.POINTWISE
    assert gpu_fusion("Softmax") is GpuFusion.REDUCTION and gpu_fusion("LayerNormalization") is GpuFusion.REDUCTION
    assert gpu_fusion("Transpose") is GpuFusion.SHUFFLE and gpu_fusion("Reshape") is GpuFusion.SHUFFLE
    assert gpu_fusion("Concat") is GpuFusion.ELIMINATED
    assert gpu_fusion("Conv") is GpuFusion.KERNEL and gpu_fusion("MaxPool") is GpuFusion.KERNEL
    assert gpu_fusion("SomeCustomOp") is GpuFusion.KERNEL
    assert get_target("trt-v100").fusion == "tensorrt" and get_target("ort-cpu").fusion == "ort"


def test_silu_and_the_residual_fuse_into_the_conv_and_concat_is_free():
    loaded, analysis = inspect(_yolo_like())
    ort = model_blocks(loaded, analysis)
    trt = model_blocks(loaded, analysis, fusion="tensorrt")
    ort_ops = [b.signature.epilogue[0] for b in ort if b.signature.op == "Elementwise"]
    assert "Sigmoid" in ort_ops or "Mul" in ort_ops  # onnxruntime: SiLU's ops as kernels of their own
    convs = [b for b in trt if b.signature.op == "Conv"]
    assert len(convs) == 4 and all(b.signature.epilogue[:2] == ("Sigmoid", "Mul") for b in convs)
    # the bottleneck's last conv takes the residual Add as well
    assert sum("Add" in b.signature.epilogue for b in convs) == 1
    names = {n for b in trt for n in (b.node, *b.fused)}
    assert not any(n.op_type == "Concat" and n.name in names for n in loaded.model.graph.node)
    # whatever is not fused is a real kernel (the split's copy, the pool)
    rest = [b for b in trt if b.signature.op not in ("Conv", "Gemm")]
    assert all(b.signature.op == "Pool" or b.signature.epilogue[0] == "Fused" for b in rest)
    # the one-block model TensorRT would time for a SiLU conv is a valid model: x * sigmoid(conv(x))
    sig = convs[0].signature
    m = block_model(sig, 3, 16)
    assert [n.op_type for n in m.graph.node] == ["Conv", "Sigmoid", "Mul"]
    session(m).run(None, block_feeds(m))
    # and it prices lower than onnxruntime's split of the same graph on a GPU target
    from halp_onnx.profiles.latency import LatencyModel, predict

    lm = LatencyModel(get_target("trt-v100"), None)
    assert predict(trt, lm).total_ms < predict(ort, lm).total_ms


def _vit_like(depth: int = 3) -> onnx.ModelProto:
    """A class token, pre-LN blocks whose attention is the only path from the patches to it, the class
    token's row read by the head."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, T - 1, 6])
    patches = b.op("Add", [b.op("MatMul", [x, b.weight((6, C))]), small(b, (C,))])
    h = b.op("Concat", [small(b, (1, 1, C)), patches], axis=1)
    d = C // HEADS
    for _ in range(depth):
        ln = b.op("LayerNormalization", [h, small(b, (C,), offset=1.0), small(b, (C,))], axis=-1, epsilon=1e-5)
        q, k, v = (b.op("Transpose", [b.op("Reshape", [b.op("Add", [b.op("MatMul", [ln, b.weight((C, C))]),
                                                                   small(b, (C,))]), i64(b, [1, T, HEADS, d])])],
                        perm=[0, 2, 1, 3]) for _ in range(3))
        kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
        att = b.op("Softmax", [b.op("MatMul", [q, kt])], axis=-1)
        o = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [att, v])], perm=[0, 2, 1, 3]), i64(b, [1, T, C])])
        h = b.op("Add", [h, b.op("Add", [b.op("MatMul", [o, b.weight((C, C))]), small(b, (C,))])])
        ln2 = b.op("LayerNormalization", [h, small(b, (C,), offset=1.0), small(b, (C,))], axis=-1, epsilon=1e-5)
        hid = b.op("Relu", [b.op("Add", [b.op("MatMul", [ln2, b.weight((C, 16))]), small(b, (16,))])])
        h = b.op("Add", [h, b.op("Add", [b.op("MatMul", [hid, b.weight((16, C))]), small(b, (C,))])])
    cls = b.op("Gather", [h, b.const(np.array(0, np.int64))], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [cls, b.weight((4, C)), small(b, (4,))], ["y"], name="head",
                                         transB=1))
    b.output("y")
    return b.model()


def test_attention_is_one_generated_kernel_on_tensorrt():
    loaded, analysis = inspect(_vit_like(depth=1))
    trt = model_blocks(loaded, analysis, fusion="tensorrt")
    fused = [b for b in trt if b.signature.op == "Elementwise"]
    # the attention products, the softmax and the layout ops around them: one kernel
    att = [b for b in fused if "Softmax" in b.signature.epilogue]
    assert len(att) == 1 and "MatMul" in att[0].signature.epilogue
    members = {att[0].node, *att[0].fused}
    assert {n.name for n in loaded.model.graph.node if n.op_type == "Softmax"} <= members
    # views alone are no kernel, and every matrix product with a constant weight is a GEMM of its own
    assert all(b.signature.epilogue[0] == "Fused" for b in fused)
    assert sum(b.signature.op == "MatMul" for b in trt) == 7  # patches, q, k, v, out, fc1, fc2


def test_restorer_halves_the_candidates():
    calls = []

    def alive_without(restored):
        calls.append(restored)
        return 5 in restored

    assert restorer([1, 2, 3, 4, 5, 6, 7, 8], alive_without) == [5]
    assert len(calls) <= 8
    assert restorer([1, 2, 3], lambda r: False) is None
    assert restorer([], lambda r: True) is None


def test_restorer_finds_every_branch_a_model_needs_back():
    """Two Fire modules each lost both branches: one branch of each must come back (either one)."""
    pairs = ({2, 3}, {6, 7})

    def alive_without(restored):
        return all(restored & p for p in pairs)

    back = restorer(list(range(1, 11)), alive_without)
    assert back is not None and alive_without(frozenset(back)) and len(back) == 2


def test_removals_that_together_cut_the_class_token_off_are_not_chosen():
    """Each attention branch may go on its own; with every one gone the class token never sees the
    patches. The knapsack's solution is checked by running it, and one attention branch is kept."""
    model = _vit_like(depth=3)
    loaded, analysis = inspect(model)
    assert live_outputs(loaded.model) == {"y"}
    heads = [g for g in analysis.prunable if g.removable and g.size == HEADS]
    assert len(heads) == 3
    dead = rewrite(loaded, analysis, {g.id: [] for g in heads})
    assert live_outputs(dead.model, like=loaded.model) == frozenset()
    res = halp_onnx.compile(model, target="trt-v100", latency=0.3, min_keep=0.1)
    assert live_outputs(res.model, like=loaded.model) == {"y"}
    kept_heads = [g.id for g in heads if res.rewrite.widths[g.id][1] > 0]
    assert kept_heads, "an attention branch must stay"
    assert res.verification.passed


def test_uniform_constants_shared_by_the_exporter_do_not_couple_layers():
    """A dynamo export shares one array of ones (and one of zeros) between every InstanceNormalization
    (GroupNorm) of a BiT: sharing a constant is not sharing a weight."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 3, 6, 6])
    ones, zeros = b.const(np.ones(2, np.float32)), b.const(np.zeros(2, np.float32))
    h = x
    for c_in, c in ((3, 8), (8, 4)):
        a = b.conv(h, c_in, c)
        r = b.op("Reshape", [a, i64(b, [1, 2, -1])])
        r = b.op("InstanceNormalization", [r, ones, zeros], epsilon=1e-5)
        h = b.op("Relu", [b.op("Reshape", [r, i64(b, [1, c, 6, 6])])])
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(h, 4, 4)])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [pooled, b.weight((3, 4)), small(b, (3,))], ["y"], name="head",
                                         transB=1))
    b.output("y")
    model = b.model()
    before = model.SerializeToString()
    loaded, analysis = inspect(model)
    assert model.SerializeToString() == before  # the input model is not touched
    assert len([g for g in analysis.prunable if g.size == 2]) == 2  # one group per GroupNorm, not one for both
    keep = {g.id: [1] for g in analysis.prunable if g.size == 2}
    result = rewrite(loaded, analysis, keep)
    onnx.checker.check_model(result.model, full_check=True)
    assert verify(loaded, analysis, result.kept, result.model).passed


def test_grn_branch_can_be_removed_whole():
    """ConvNeXt-V2's MLP: fc1 -> GELU -> GRN (L2 over space, mean over the channels) -> fc2, added to the
    stream. The mean over the hidden channels is used only inside the branch, so the branch may go."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 3, 6, 6])
    s = b.conv(x, 3, 8)
    h = b.op("Relu", [b.conv(s, 8, 16, k=1)])
    gx = b.op("ReduceL2", [h], axes=[2, 3], keepdims=1)
    nx = b.op("Div", [gx, b.op("Add", [b.op("ReduceMean", [gx], axes=[1], keepdims=1),
                                       b.const(np.array(1e-6, np.float32))])])
    grn = b.op("Add", [b.op("Add", [b.op("Mul", [small(b, (1, 16, 1, 1)), b.op("Mul", [h, nx])]),
                                     small(b, (1, 16, 1, 1))]), h])
    y = b.op("Add", [s, b.conv(grn, 16, 8, k=1)])
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [pooled, b.weight((3, 8)), small(b, (3,))], ["y"], name="head",
                                         transB=1))
    b.output("y")
    loaded, analysis = inspect(b.model())
    hidden = next(g for g in analysis.prunable if g.size == 16)
    assert hidden.removable, hidden.remove_reason
    result = rewrite(loaded, analysis, {hidden.id: []})
    onnx.checker.check_model(result.model, full_check=True)
    assert not any(n.op_type in ("ReduceMean", "ReduceL2") for n in result.model.graph.node)
    assert verify(loaded, analysis, result.kept, result.model).passed
    assert live_outputs(result.model, like=loaded.model) == {"y"}


@pytest.mark.parametrize("stem", ["conv", "matmul"])
def test_only_a_convolution_stem_is_held_dense(stem):
    model = _yolo_like() if stem == "conv" else _vit_like(depth=1)
    loaded, analysis = inspect(model)
    held = first_layer_groups(analysis, model_blocks(loaded, analysis))
    assert bool(held) == (stem == "conv")


def test_dynamo_as_strided_gather_is_followed_as_a_reshape():
    """ConvNeXt's head under the dynamo exporter: mean over space, flattened, then a Gather of every
    element in order (as_strided) back to N x C x 1 x 1. It is a Reshape, and its channels prune."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 3, 6, 6])
    a = b.op("Relu", [b.conv(x, 3, 8)])
    flat = b.op("Reshape", [b.op("ReduceMean", [a], axes=[2, 3], keepdims=1), i64(b, [8])])
    picked = b.op("Gather", [flat, b.const(np.arange(8, dtype=np.int64).reshape(1, 8, 1, 1))], axis=0)
    pooled = b.op("Flatten", [picked], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [pooled, b.weight((3, 8)), small(b, (3,))], ["y"], name="head",
                                         transB=1))
    b.output("y")
    model = b.model()
    loaded, analysis = inspect(model)
    assert not any(n.op_type == "Gather" for n in loaded.model.graph.node)
    g = next(g for g in analysis.groups if g.size == 8)
    assert g.prunable, g.reasons
    result = rewrite(loaded, analysis, {g.id: [0, 2, 5]})
    onnx.checker.check_model(result.model, full_check=True)
    assert verify(loaded, analysis, result.kept, result.model).passed
    # a Gather that permutes is left alone (and freezes what it cannot follow)
    perm = [n for n in model.graph.node if n.op_type == "Gather"][0]
    idx = next(t for t in model.graph.initializer if t.name == perm.input[1])
    idx.CopyFrom(onnx.numpy_helper.from_array(np.arange(8, dtype=np.int64)[::-1].reshape(1, 8, 1, 1).copy(), idx.name))
    loaded2, _ = inspect(model)
    assert any(n.op_type == "Gather" for n in loaded2.model.graph.node)
