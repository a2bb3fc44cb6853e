"""One small hand-built graph per channel pattern: exact group membership, then rewrite + equivalence."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from halp_onnx import HalpError, inspect
from halp_onnx.builder import GraphBuilder
from halp_onnx.passes.rewrite import kept_channels, rewrite
from halp_onnx.passes.verify import masked_reference, session, verify

from graph_helpers import finish, group_of, prune_and_check
from graph_helpers import node_of as node


def names(*tensors: str) -> set[str]:
    return {node(t) for t in tensors}


def conv_relu(b, x, c_in, c_out, **kw):
    """Returns the Relu output; the conv's output is the Relu's input (same channels)."""
    return b.op("Relu", [b.conv(x, c_in, c_out, **kw)])


def conv_of(b, relu_out: str) -> str:
    """The node name of the Conv feeding a Relu made by conv_relu."""
    return next(node(n.input[0]) for n in b.nodes if n.output[0] == relu_out)


def test_conv_chain_and_bias():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 8)
    c = conv_relu(b, a, 8, 6)
    loaded, analysis, result = prune_and_check(finish(b, c, 6))
    g = group_of(analysis, a)
    assert (g.size, g.producers, g.consumers) == (8, (conv_of(b, a),), (conv_of(b, c),))
    conv1, conv2 = (next(n for n in b.nodes if n.name == conv_of(b, t)) for t in (a, c))
    assert set(g.initializers) == {conv1.input[1], conv1.input[2], conv2.input[1]}
    assert group_of(analysis, c).consumers == ("head",)
    assert not group_of(analysis, "y").prunable
    assert "graph output" in group_of(analysis, "y").reasons[0]


def test_graph_input_channels_are_not_pruned():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    _, analysis = inspect(finish(b, conv_relu(b, x, 3, 4), 4))
    assert analysis.labels.get("x") is None
    assert [g.size for g in analysis.groups] == [4, 5]


def test_grouped_conv_prunes_whole_groups():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 8)
    g2 = conv_relu(b, a, 8, 12, group=4)
    loaded, analysis, result = prune_and_check(finish(b, g2, 12), drop={0: [1, 3]})
    g = group_of(analysis, a)
    assert g.size == 4 and g.id == 0  # four convolution groups, each 2 inputs + 3 outputs
    assert set(g.producers) == {conv_of(b, a), conv_of(b, g2)}
    conv = next(n for n in result.model.graph.node if n.name == conv_of(b, g2))
    assert onnx.helper.get_attribute_value(next(a for a in conv.attribute if a.name == "group")) == 2
    assert result.widths[g.id] == (4, 2)


def test_depthwise_couples_input_and_output():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 8)
    d = conv_relu(b, a, 8, 8, group=8)
    p = conv_relu(b, d, 8, 4, k=1)
    _, analysis, result = prune_and_check(finish(b, p, 4))
    g = group_of(analysis, a)
    assert g.size == 8 and set(g.producers) == {conv_of(b, a), conv_of(b, d)} and g.consumers == (conv_of(b, p),)


def test_depthwise_multiplier():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 4)
    d = conv_relu(b, a, 4, 8, group=4)  # channel multiplier 2
    _, analysis, _ = prune_and_check(finish(b, d, 8))
    g = group_of(analysis, a)
    assert g.size == 4 and conv_of(b, d) in g.producers and group_of(analysis, d).id == g.id


def test_conv_transpose():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 6)
    t = b.op("ConvTranspose", [a, b.weight((6, 5, 2, 2)), b.const(np.zeros(5, np.float32))],
             kernel_shape=[2, 2], strides=[2, 2])
    c = conv_relu(b, b.op("Relu", [t]), 5, 4)
    _, analysis, _ = prune_and_check(finish(b, c, 4))
    assert group_of(analysis, a).consumers == (node(t),)
    assert group_of(analysis, t).consumers == (conv_of(b, c),)


def test_gemm_and_matmul_chain():
    b = GraphBuilder()
    x = b.input("x", [2, 6])
    h = b.op("Relu", [b.gemm(x, 6, 10)])
    m = b.op("MatMul", [h, b.weight((10, 7))])
    m = b.op("Add", [m, b.const(np.arange(7, dtype=np.float32))])
    y = b.op("Gelu" if b.opset >= 20 else "Tanh", [m])
    b.nodes.append(onnx.helper.make_node("MatMul", [y, b.weight((7, 3))], ["y"], name="out"))
    b.output("y")
    _, analysis, _ = prune_and_check(b.model())
    g = group_of(analysis, m)
    assert g.consumers == ("out",) and len(g.initializers) == 3  # weight in, weight out, and the bias
    assert group_of(analysis, h).consumers == (g.producers[0],)


@pytest.mark.parametrize("norm", ["BatchNormalization", "InstanceNormalization", "PRelu", "MulAdd"])
def test_per_channel_parameters_follow(norm):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = b.conv(x, 3, 6)
    if norm == "BatchNormalization":
        a = b.bn(a, 6)
    elif norm == "InstanceNormalization":
        a = b.op(norm, [a, b.const(np.linspace(0.5, 1.5, 6).astype(np.float32)),
                        b.const(np.linspace(-1, 1, 6).astype(np.float32))])
    elif norm == "PRelu":
        a = b.op(norm, [a, b.const(np.linspace(0.1, 0.6, 6).reshape(6, 1, 1).astype(np.float32))])
    else:
        a = b.op("Mul", [a, b.const(np.linspace(0.5, 2, 6).reshape(1, 6, 1, 1).astype(np.float32))])
        a = b.op("Add", [a, b.const(np.linspace(-1, 1, 6).reshape(6, 1, 1).astype(np.float32))])
    c = conv_relu(b, b.op("Relu", [a]), 6, 4)
    _, analysis, _ = prune_and_check(finish(b, c, 4))
    g = group_of(analysis, a)
    expected = {"BatchNormalization": 7, "InstanceNormalization": 5, "PRelu": 4, "MulAdd": 5}[norm]
    assert g.size == 6 and len(g.initializers) == expected  # weights, bias, per-channel parameters


def test_residual_add_and_sub_couple():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    s = conv_relu(b, x, 3, 8)
    mid = conv_relu(b, s, 8, 5)
    branch = b.conv(mid, 5, 8)
    r = b.op("Relu", [b.op("Add", [s, branch])])
    other = b.conv(r, 8, 8)
    r = b.op("Sub", [r, other])
    _, analysis, _ = prune_and_check(finish(b, r, 8))
    g = group_of(analysis, s)
    assert set(g.producers) == names(branch, other) | {conv_of(b, s)}
    assert group_of(analysis, mid).consumers == (node(branch),)


def test_squeeze_excitation_couples_fc_output_with_x():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 8)
    s = b.op("Flatten", [b.op("GlobalAveragePool", [a])], axis=1)
    fc1 = b.gemm(s, 8, 2)
    fc2 = b.gemm(b.op("Relu", [fc1]), 2, 8)
    s = b.op("Unsqueeze", [b.op("Sigmoid", [fc2]), b.const(np.array([2, 3], np.int64))])
    y = b.op("Mul", [a, s])
    _, analysis, _ = prune_and_check(finish(b, y, 8))
    g = group_of(analysis, a)
    assert set(g.producers) == {conv_of(b, a), node(fc2)} and set(g.consumers) == {node(fc1), "head"}
    assert group_of(analysis, fc1).consumers == (node(fc2),)


def test_concat_offsets():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a, c = conv_relu(b, x, 3, 4), conv_relu(b, x, 3, 6)
    cat = b.op("Concat", [a, c], axis=1)
    y = conv_relu(b, cat, 10, 4)
    loaded, analysis, result = prune_and_check(finish(b, y, 4), drop={0: [0, 3], 1: [5]})
    ga, gc = group_of(analysis, a), group_of(analysis, c)
    assert ga.consumers == (conv_of(b, y),) == gc.consumers and (ga.size, gc.size) == (4, 6)
    ids = analysis.channels_of(cat)
    assert ids[:4, 0].tolist() == [ga.id] * 4 and ids[4:, 1].tolist() == list(range(6))
    w_name = next(n for n in b.nodes if n.name == conv_of(b, y)).input[1]
    w = next(i for i in result.model.graph.initializer if i.name == w_name)
    assert tuple(w.dims) == (4, 7, 3, 3)


def test_split_and_slice_on_channel_axis():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 10)
    p, q = b.op("Split", [a, b.const(np.array([4, 6], np.int64))], n_out=2, axis=1)
    s = b.op("Slice", [a, b.const(np.array([2], np.int64)), b.const(np.array([7], np.int64)),
                       b.const(np.array([1], np.int64))])
    y = b.op("Concat", [conv_relu(b, p, 4, 3), conv_relu(b, q, 6, 3), conv_relu(b, s, 5, 3)], axis=1)
    _, analysis, result = prune_and_check(finish(b, y, 9), drop={0: [0, 3, 4, 9]})
    g = group_of(analysis, a)
    assert g.size == 10 and len(g.consumers) == 3 and g.id == 0
    split = next(n for n in result.model.graph.node if n.op_type == "Split")
    sizes = onnx.numpy_helper.to_array(next(i for i in result.model.graph.initializer if i.name == split.input[1]))
    assert sizes.tolist() == [2, 4]


def test_channel_pad_couples_with_residual():
    """Option-A shortcut: stride-2 Slice, zero channels padded on both sides, added to the branch."""
    from halp_onnx.examples import cifar_resnet

    _, analysis, result = prune_and_check(cifar_resnet())
    trunk = next(g for g in analysis.groups if len(g.producers) == 4)
    assert trunk.size == 64 and trunk.prunable  # 16 + 16 padded (stage 2) + 32 padded (stage 3)
    pads = [n for n in result.model.graph.node if n.op_type == "Pad"]
    assert pads and all(n.input[1] for n in pads)


def test_channel_pad_with_one_empty_side():
    """A pruned option-A shortcut can pad on one side only (zero channels before, some after): the
    empty side carries no channel and must not break the analysis (a pruned CIFAR ResNet re-read)."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 8)
    p = b.op("Pad", [a, b.const(np.array([0, 0, 0, 0, 0, 4, 0, 0], np.int64))], mode="constant")
    y = b.op("Relu", [b.op("Add", [b.conv(a, 8, 12), p])])
    out = conv_relu(b, y, 12, 5)
    _, analysis, _ = prune_and_check(finish(b, out, 5))
    trunk = group_of(analysis, y)
    assert trunk.size == 12 and len(trunk.producers) == 2  # both convolutions; the padded tail is no producer


def test_gather_channel_indices():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 6)
    g = b.op("Gather", [a, b.const(np.array([5, 0, 2, 2], np.int64))], axis=1)
    y = conv_relu(b, g, 4, 3)
    _, analysis, result = prune_and_check(finish(b, y, 3), drop={0: [1, 2]})
    assert group_of(analysis, a).consumers == (conv_of(b, y),) and group_of(analysis, a).id == 0


def test_flatten_and_reshape_before_gemm():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 4, 4])
    a = conv_relu(b, x, 3, 6)
    f = b.op("Reshape", [a, b.const(np.array([1, -1], np.int64))])
    h = b.op("Relu", [b.gemm(f, 96, 8)])
    b.nodes.append(onnx.helper.make_node("Gemm", [h, b.weight((3, 8))], ["y"], name="head", transB=1))
    b.output("y")
    _, analysis, result = prune_and_check(b.model(), drop={0: [0, 4]})
    lab = analysis.labels[f]
    assert lab.axes == (1,) and lab.ids.shape == (96,)
    assert np.array_equal(analysis.channels_of(f)[:, 1], np.repeat(np.arange(6), 16))
    w_name = next(n for n in b.nodes if n.output[0] == h.replace("relu", "x") or n.op_type == "Gemm").input[1]
    w = next(i for i in result.model.graph.initializer if i.name == w_name)
    assert tuple(w.dims) == (8, 64) and group_of(analysis, a).id == 0


def test_channel_shuffle_permutation():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a, c = conv_relu(b, x, 3, 4), conv_relu(b, x, 3, 4)
    cat = b.op("Concat", [a, c], axis=1)
    r = b.op("Reshape", [cat, b.const(np.array([1, 2, 4, 8, 8], np.int64))])
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    sh = b.op("Reshape", [t, b.const(np.array([1, 8, 8, 8], np.int64))])
    _, analysis, result = prune_and_check(finish(b, conv_relu(b, sh, 8, 3), 3), drop={0: [1]})
    g = group_of(analysis, a)
    assert set(g.producers) == {conv_of(b, a), conv_of(b, c)} and g.size == 4 and g.id == 0
    # after the shuffle, channel 2k comes from the first branch and 2k+1 from the second
    assert analysis.channels_of(sh)[:, 1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("op,attrs", [
    ("Relu", {}), ("Clip", {}), ("Sigmoid", {}), ("HardSigmoid", {}), ("HardSwish", {}), ("LeakyRelu", {}),
    ("Elu", {}), ("Tanh", {}), ("Softplus", {}), ("Dropout", {}), ("Identity", {}), ("Erf", {}),
    ("MaxPool", {"kernel_shape": [2, 2]}), ("AveragePool", {"kernel_shape": [2, 2]}),
    ("GlobalMaxPool", {}), ("ReduceMean", {"axes": [2, 3]}), ("ReduceMax", {"axes": [2, 3]}),
    ("Resize", {}), ("Pad", {}), ("Slice", {}), ("Cast", {}),
])
def test_pass_through(op, attrs):
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 6)
    if op == "Resize":
        y = b.op(op, [a, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    elif op == "Pad":
        y = b.op(op, [a, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    elif op == "Slice":
        y = b.op(op, [a, b.const(np.array([1], np.int64)), b.const(np.array([7], np.int64)),
                      b.const(np.array([3], np.int64))])
    elif op == "Cast":
        y = b.op(op, [a], to=onnx.TensorProto.FLOAT)
    elif op == "ReduceMean" or op == "ReduceMax":
        y = b.op(op, [a], **attrs)
    elif op == "Clip":
        y = b.op(op, [a, b.const(np.array(0.0, np.float32)), b.const(np.array(1.0, np.float32))])
    else:
        y = b.op(op, [a], **attrs)
    out = conv_relu(b, y, 6, 3)
    _, analysis, _ = prune_and_check(finish(b, out, 3))
    g = group_of(analysis, a)
    assert g.prunable and g.consumers == (conv_of(b, out),) and group_of(analysis, y).id == g.id


@pytest.mark.parametrize("blocker,expect", [
    ("LpNormalization", "mixes values across the channel axis"),
    ("Softmax", "mixes values across the channel axis"),
    ("ReduceMean", "reduces over the channel axis"),
    ("Reshape", "(Reshape) spreads the channels"),
    ("Unknown", "does not know"),
])
def test_blockers_freeze_with_reason(blocker, expect):
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 3, 4, 4])
    a = conv_relu(b, x, 3, 6)
    if blocker in ("Softmax", "LpNormalization"):
        y = b.op(blocker, [a], axis=1)
    elif blocker == "ReduceMean":
        y = b.op("Mul", [a, b.op(blocker, [a], axes=[1], keepdims=1)])
    elif blocker == "Reshape":
        y = b.op(blocker, [a, b.const(np.array([1, 4, 6, 4], np.int64))])
        y = b.op("Transpose", [y], perm=[0, 2, 1, 3])
    else:
        b.nodes.append(onnx.helper.make_node("Frobnicate", [a], ["frob"], name="mystery", domain="example.ops"))
        y = "frob"
    y = b.op("Relu", [y])
    b.output(y)
    model = b.model({"example.ops": 1} if blocker == "Unknown" else None)
    _, analysis = inspect(model)
    g = group_of(analysis, a)
    assert not g.prunable and any(expect in r for r in g.reasons), g.reasons
    with pytest.raises(HalpError, match="cannot be pruned"):
        kept_channels(analysis, {g.id: [0, 1]})


def test_shared_weight_couples_its_readers():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    w = b.weight((4, 3, 3, 3))
    a = b.op("Conv", [x, w], pads=[1, 1, 1, 1])
    c = b.op("Conv", [b.op("Neg", [x]), w], pads=[1, 1, 1, 1])
    y = b.op("Concat", [b.op("Relu", [a]), b.op("Relu", [c])], axis=1)
    _, analysis, _ = prune_and_check(finish(b, y, 8))
    assert group_of(analysis, a).id == group_of(analysis, c).id


def test_keep_any_subset_and_bad_keep():
    from halp_onnx.examples import mobilenet

    loaded, analysis = inspect(mobilenet())
    g = analysis.prunable[0]
    keep = {g.id: [g.size - 1, 0]}  # any subset, in any order
    result = rewrite(loaded, analysis, keep)
    assert verify(loaded, analysis, result.kept, result.model).passed
    with pytest.raises(HalpError, match="distinct"):
        kept_channels(analysis, {g.id: [0, 0]})
    with pytest.raises(HalpError, match="no channel group"):
        kept_channels(analysis, {999: [0]})
    with pytest.raises(HalpError, match="lose all"):
        kept_channels(analysis, {g.id: []})


def test_masked_reference_runs_and_matches_dense_when_nothing_removed():
    from halp_onnx.examples import mobilenet

    loaded, analysis = inspect(mobilenet())
    kept = np.ones(len(analysis.channel_group), bool)
    ref = masked_reference(loaded, analysis, kept)
    assert len(ref.graph.node) == len(loaded.model.graph.node)
    session(ref)


def test_zero_width_group_removes_residual_branch():
    from halp_onnx.examples import cifar_resnet

    loaded, analysis = inspect(cifar_resnet())
    mid = analysis.groups[0]  # first block's inner channels: conv -> bn -> relu -> conv -> bn -> Add
    assert mid.removable, mid.remove_reason
    result = rewrite(loaded, analysis, {mid.id: []})
    names = {n.name for n in result.model.graph.node}
    assert not set(mid.producers) & names and not set(mid.consumers) & names
    assert len(result.model.graph.node) < len(loaded.model.graph.node) - 4
    onnx.checker.check_model(result.model, full_check=True)
    assert verify(loaded, analysis, result.kept, result.model).passed
    trunk = next(g for g in analysis.groups if len(g.producers) == 4)
    assert not trunk.removable and "no longer depend on the inputs" in trunk.remove_reason


def test_zero_width_refused_with_reason():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = conv_relu(b, x, 3, 4)
    loaded, analysis = inspect(finish(b, conv_relu(b, a, 4, 3), 3))
    g = group_of(analysis, a)
    assert not g.removable and "no longer depend" in g.remove_reason
    with pytest.raises(HalpError, match="cannot lose all its channels: without it"):
        kept_channels(analysis, {g.id: []})


def test_zero_width_squeeze_excitation_bottleneck():
    from halp_onnx.examples import mobilenet

    loaded, analysis = inspect(mobilenet())
    se = next(g for g in analysis.groups if g.size == 16 and len(g.producers) == 1 and g.removable)
    result = rewrite(loaded, analysis, {se.id: []})
    assert verify(loaded, analysis, result.kept, result.model).passed
