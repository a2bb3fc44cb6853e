"""Transformer-shaped graphs: attention pruned by whole heads, the residual stream across LayerNorm
(and LayerNorm written out with ReduceMean), GroupNorm by whole groups, MobileViT's patch unfold/fold.

Each small hand-built graph: group membership asserted, rewrite, onnx.checker, and numerical equality
under onnxruntime with the masked reference (which normalises over the kept channels, as the pruned
model does). If timm / transformers are importable, a tiny ViT and a tiny BERT built from configs are
exported, pruned at 0.3 and verified.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from halp_onnx import inspect, prune
from halp_onnx.builder import GraphBuilder
from halp_onnx.passes.rewrite import rewrite
from halp_onnx.passes.verify import masked_reference, session, verify

from graph_helpers import group_of, i64, node_of, small
from graph_helpers import prune_and_check as _prune_and_check

T, C, HEADS = 5, 12, 3  # tokens, width, heads (head_dim 4)


# ------------------------------------------------------------------------------------------ helpers
def prune_and_check(model: onnx.ModelProto, drop: dict[int, list[int]] | None = None, seed: int = 0):
    """graph_helpers.prune_and_check, removing at least one channel per group, outputs input-sensitive."""
    return _prune_and_check(model, drop, seed, at_least_one=True, input_sensitive=True)


def linear(b: GraphBuilder, x: str, c_in: int, c_out: int) -> str:
    return b.op("Add", [b.op("MatMul", [x, b.weight((c_in, c_out))]), small(b, (c_out,))])


def layer_norm(b: GraphBuilder, x: str, c: int = C) -> str:
    return b.op("LayerNormalization", [x, small(b, (c,), offset=1.0), small(b, (c,))], axis=-1, epsilon=1e-5)


def attention(b: GraphBuilder, x: str, layout: str, record: dict | None = None, batch: int = 1, tokens: int = T) -> str:
    """Self-attention over ``x`` (``batch x tokens x C``): separate q/k/v projections (BERT), one fused projection
    split after the head reshape (timm: B x T x 3 x heads x head_dim), or torchvision's
    ``nn.MultiheadAttention`` (T x B x 3 x C, picked with Gather, heads reshaped per tensor).
    ``record`` gets the names of the projections, the output projection and the attention MatMuls.
    The torchvision form is built for ``1 x T x C`` only."""
    record = record if record is not None else {}
    first = len(b.nodes)
    d = C // HEADS
    scale = b.const(np.array(d ** -0.5, np.float32))
    if layout == "separate":
        q, k, v = (b.op("Reshape", [linear(b, x, C, C), i64(b, [batch, tokens, HEADS, d])]) for _ in range(3))
        q = b.op("Transpose", [q], perm=[0, 2, 1, 3])
        kt = b.op("Transpose", [k], perm=[0, 2, 3, 1])
        v = b.op("Transpose", [v], perm=[0, 2, 1, 3])
    elif layout == "fused":
        qkv = b.op("Reshape", [linear(b, x, C, 3 * C), i64(b, [batch, tokens, 3, HEADS, d])])
        parts = b.op("Split", [b.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4]), i64(b, [1, 1, 1])], n_out=3, axis=0)
        q, k, v = (b.op("Squeeze", [p, i64(b, [0])]) for p in parts)
        kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
    else:  # torchvision
        xt = b.op("Transpose", [x], perm=[1, 0, 2])
        qkv = b.op("Reshape", [linear(b, xt, C, 3 * C), i64(b, [T, 1, 3, C])])
        qkv = b.op("Squeeze", [b.op("Transpose", [b.op("Unsqueeze", [qkv, i64(b, [0])])], perm=[3, 1, 2, 0, 4]),
                               i64(b, [3])])
        q, k, v = (b.op("Transpose", [b.op("Reshape", [b.op("Gather", [qkv, b.const(np.array(i, np.int64))], axis=0),
                                                        i64(b, [T, HEADS, d])])], perm=[1, 0, 2]) for i in range(3))
        kt = b.op("Transpose", [k], perm=[0, 2, 1])
    record["projections"] = {n.name for n in b.nodes[first:] if n.op_type == "MatMul"}
    scores = b.op("MatMul", [b.op("Mul", [q, scale]), kt])
    o = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
    record["matmuls"] = [scores, o]
    if layout == "torchvision":
        o = b.op("Reshape", [b.op("Transpose", [o], perm=[1, 0, 2]), i64(b, [T, C])])
        record["merged"] = o
        o = b.op("Gemm", [o, b.weight((C, C)), small(b, (C,))], transB=1)
        record["proj"] = b.nodes[-1]
        return b.op("Transpose", [b.op("Reshape", [o, i64(b, [T, 1, C])])], perm=[1, 0, 2])
    o = b.op("Reshape", [b.op("Transpose", [o], perm=[0, 2, 1, 3]), i64(b, [batch, tokens, C])])
    record["merged"] = o
    out = linear(b, o, C, C)
    record["proj"] = b.nodes[-2]
    return out


def transformer(layout: str = "separate", depth: int = 1, mlp: int = 16,
                record: dict | None = None) -> tuple[onnx.ModelProto, GraphBuilder]:
    """Pre-LN blocks on a residual stream: patch embedding, [x + attn(LN x), x + mlp(LN x)] * depth,
    final LN, mean over tokens, a classifier (``record``: the first block's attention, see attention())."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, T, 6])
    h = b.op("Add", [linear(b, x, 6, C), small(b, (1, T, C))])  # + position embedding
    for i in range(depth):
        h = b.op("Add", [h, attention(b, layer_norm(b, h), layout, record if i == 0 else None)])
        hidden = b.op("Relu", [linear(b, layer_norm(b, h), C, mlp)])
        h = b.op("Add", [h, linear(b, hidden, mlp, C)])
    pooled = b.op("ReduceMean", [layer_norm(b, h)], axes=[1], keepdims=0)
    b.nodes.append(onnx.helper.make_node("Gemm", [pooled, b.weight((4, C)), small(b, (4,))], ["y"], name="head",
                                         transB=1))
    b.output("y")
    return b.model(), b


def nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def const_of(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


# ------------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize("layout", ["separate", "fused", "torchvision"])
def test_attention_pruned_by_whole_heads(layout):
    record: dict = {}
    model, b = transformer(layout, record=record)
    loaded, analysis = inspect(model)
    proj = record["proj"]
    heads = group_of(analysis, record["merged"])
    assert heads.prunable and heads.size == HEADS  # the atoms are heads: head_dim channels each
    assert set(heads.producers) == record["projections"]
    assert len(record["projections"]) == (3 if layout == "separate" else 1)
    assert proj.name in heads.consumers
    # the merged heads: head h's atom at its head_dim positions
    assert analysis.channels_of(record["merged"])[:, 1].tolist() == np.repeat(np.arange(HEADS), C // HEADS).tolist()
    # Q K^T and attn V carry the heads on their batch axis instead of freezing
    for mm in record["matmuls"]:
        assert analysis.labels[mm].axes == (len(loaded.shapes[mm]) - 3,)
        assert group_of(analysis, mm).id == heads.id
    _, _, result = prune_and_check(model, {heads.id: [1]})
    d = C // HEADS
    before = {r.name: const_of(model, r.input[1]).tolist() for r in nodes(model, "Reshape")}
    for r in nodes(result.model, "Reshape"):  # every head count (and width) in the targets updated
        if r.output[0] not in heads.tensors:
            continue
        old, new = before[r.name], const_of(result.model, r.input[1]).tolist()
        if old[-2:] == [HEADS, d]:
            assert new == old[:-2] + [HEADS - 1, d]
        elif old[-1] in (C, 3 * C):
            assert new == old[:-1] + [old[-1] // C * (C - d)]
    assert (HEADS - 1) * d in [d_ for i in result.model.graph.initializer if i.name == proj.input[1] for d_ in i.dims]
    prune_and_check(model)  # a third of every group


@pytest.mark.parametrize("layout", ["separate", "fused", "torchvision"])
def test_transformer_blocks_every_group_pruned(layout):
    model, _ = transformer(layout, depth=2)
    loaded, analysis, result = prune_and_check(model)
    assert analysis.prunable_params / analysis.total_params > 0.95
    assert result.params[1] < 0.8 * result.params[0]


def test_pre_ln_residual_stream_is_one_prunable_group():
    model, b = transformer("separate", depth=2)
    loaded, analysis = inspect(model)
    lns = [n for n in b.nodes if n.op_type == "LayerNormalization"]
    stream = group_of(analysis, lns[0].input[0])
    assert stream.prunable and stream.size == C
    assert all(group_of(analysis, n.input[0]).id == stream.id for n in lns)
    assert {n.input[1] for n in lns} <= set(stream.initializers)  # scales follow the stream
    embed = b.nodes[0].name
    assert embed in stream.producers and "head" in stream.consumers
    # only the stream pruned: the verifier's reference normalises over the kept channels
    _, _, result = prune_and_check(model, {stream.id: [0, 5, 7]})
    reference = masked_reference(loaded, analysis, result.kept)
    assert sum(n.name.startswith("halp_norm_gather") for n in reference.graph.node) >= len(lns)


def test_layer_norm_over_kept_channels_is_the_pruned_function():
    """x -> MatMul -> LN -> MatMul: pruned, LN's mean and variance are those of the kept channels."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 6])
    w1, w2 = b.weight((6, 8)), b.weight((8, 3))
    g, beta = small(b, (8,), offset=1.0), small(b, (8,))
    h = b.op("MatMul", [x, w1])
    y = b.op("LayerNormalization", [h, g, beta], axis=-1, epsilon=1e-5)
    b.nodes.append(onnx.helper.make_node("MatMul", [y, w2], ["y"], name="out"))
    b.output("y")
    loaded, analysis = inspect(b.model())
    group = group_of(analysis, h)
    keep = [0, 2, 3, 6]
    result = rewrite(loaded, analysis, {group.id: keep})
    assert verify(loaded, analysis, result.kept, result.model).passed
    value = {i.name: onnx.numpy_helper.to_array(i) for i in b.inits}
    feed = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    hk = (feed @ value[w1])[:, keep]
    norm = (hk - hk.mean(-1, keepdims=True)) / np.sqrt(hk.var(-1, keepdims=True) + 1e-5)
    expected = (norm * value[g][keep] + value[beta][keep]) @ value[w2][keep]
    got = session(result.model).run(None, {"x": feed})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["layernorm", "rmsnorm", "grn"])
def test_normalisation_written_with_reduce_mean(form):
    """ConvNeXt's channels-first LayerNorm written out (mean/var over C), RMSNorm, ConvNeXt-V2's GRN."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 3, 6, 6])
    a = b.conv(x, 3, 8)
    eps = b.const(np.array(1e-5, np.float32))
    if form == "layernorm":
        d = b.op("Sub", [a, b.op("ReduceMean", [a], axes=[1], keepdims=1)])
        var = b.op("ReduceMean", [b.op("Pow", [d, b.const(np.array(2.0, np.float32))])], axes=[1], keepdims=1)
        y = b.op("Div", [d, b.op("Sqrt", [b.op("Add", [var, eps])])])
    elif form == "rmsnorm":
        ms = b.op("ReduceMean", [b.op("Mul", [a, a])], axes=[1], keepdims=1)
        y = b.op("Mul", [a, b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, eps])])])])
    else:
        gx = b.op("ReduceL2", [a], axes=[2, 3], keepdims=1)
        nx = b.op("Div", [gx, b.op("Add", [b.op("ReduceMean", [gx], axes=[1], keepdims=1), eps])])
        y = b.op("Add", [a, b.op("Mul", [a, nx])])
    y = b.op("Add", [b.op("Mul", [y, small(b, (8, 1, 1), offset=1.0)]), small(b, (8, 1, 1))])
    model = _finish(b, y, 8)
    _, analysis = inspect(model)
    g = group_of(analysis, a)
    assert g.prunable and g.size == 8, g.reasons
    prune_and_check(model, {g.id: [1, 4, 5]})


# ------------------------------------------------------------------------------------------ GroupNorm
def _finish(b: GraphBuilder, y: str, c: int) -> onnx.ModelProto:
    out = b.op("Relu", [b.conv(y, c, 4)])
    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [out])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [pooled, b.weight((5, 4)), small(b, (5,))], ["y"], name="head",
                                         transB=1))
    b.output("y")
    return b.model()


def _onnx_infers_group_norm() -> bool:
    """onnx 1.23 cannot type GroupNormalization-21's output (its function body), so the load and the
    rewrite, which re-infer shapes, stop there."""
    b = GraphBuilder(opset=21)
    x = b.input("x", [1, 4, 2, 2])
    y = b.op("GroupNormalization", [x, b.const(np.ones(4, np.float32)), b.const(np.zeros(4, np.float32))],
             num_groups=2)
    b.output(b.op("Relu", [y]))
    try:
        onnx.shape_inference.infer_shapes(b.model(), strict_mode=True)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("form", ["GroupNormalization", "InstanceNormalization"])
def test_group_norm_pruned_by_whole_groups(form):
    groups, c = 4, 8
    b = GraphBuilder(opset=21 if form == "GroupNormalization" else 17)
    x = b.input("x", [1, 3, 6, 6])
    a = b.conv(x, 3, c)
    if form == "GroupNormalization":  # typed as an Identity first (onnx may not infer GroupNormalization)
        y = b.op("Identity", [a])
        gn = b.nodes[-1]
    else:  # what torch exports for nn.GroupNorm before opset 18
        r = b.op("Reshape", [a, i64(b, [1, groups, -1])])
        r = b.op("InstanceNormalization", [r, b.const(np.ones(groups, np.float32)),
                                           b.const(np.zeros(groups, np.float32))], epsilon=1e-5)
        r = b.op("Reshape", [r, i64(b, [1, c, 6, 6])])
        y = b.op("Add", [b.op("Mul", [r, small(b, (c, 1, 1), offset=1.0)]), small(b, (c, 1, 1))])
    model = _finish(b, b.op("Relu", [y]), c)
    if form == "GroupNormalization":
        node = next(n for n in model.graph.node if n.name == gn.name)
        node.op_type = "GroupNormalization"
        node.input.extend([small(b, (c,), offset=1.0), small(b, (c,))])
        node.attribute.extend([onnx.helper.make_attribute("num_groups", groups),
                               onnx.helper.make_attribute("epsilon", 1e-5)])
        model.graph.initializer.extend(b.inits[-2:])
        model.ir_version = 10
    if form == "GroupNormalization" and not _onnx_infers_group_norm():
        from halp_onnx.passes.channel_groups import analyze
        from halp_onnx.passes.load import LoadedModel

        # the channel rule on the shapes typed through the Identity, without the re-inference
        analysis = analyze(LoadedModel(model=model, source="gn", opset=21))
    else:
        _, analysis = inspect(model)
    g = group_of(analysis, a)
    assert g.prunable and g.size == groups  # each channel of the group is one GroupNorm group
    assert (analysis.channels_of(a)[:, 1] == np.repeat(np.arange(groups), c // groups)).all()
    if form == "GroupNormalization" and not _onnx_infers_group_norm():
        pytest.skip("onnx cannot infer GroupNormalization-21's output type: load and rewrite re-infer shapes")
    _, _, result = prune_and_check(model, {g.id: [0, 3]})
    if form == "GroupNormalization":
        gn = nodes(result.model, "GroupNormalization")[0]
        assert onnx.helper.get_attribute_value(next(a for a in gn.attribute if a.name == "num_groups")) == 2
    else:
        assert const_of(result.model, nodes(result.model, "Reshape")[0].input[1]).tolist() == [1, 2, -1]


def test_weight_standardised_conv_folds_and_prunes():
    """BiT's StdConv: the weight is normalised per output channel by a chain on the constant weight."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 3, 6, 6])
    raw = b.weight((8, 3, 3, 3))
    d = b.op("Sub", [raw, b.op("ReduceMean", [raw], axes=[1, 2, 3], keepdims=1)])
    var = b.op("ReduceMean", [b.op("Mul", [d, d])], axes=[1, 2, 3], keepdims=1)
    w = b.op("Div", [d, b.op("Sqrt", [b.op("Add", [var, b.const(np.array(1e-6, np.float32))])])])
    a = b.op("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    r = b.op("Reshape", [a, i64(b, [1, 4, -1])])
    r = b.op("InstanceNormalization", [r, b.const(np.ones(4, np.float32)), b.const(np.zeros(4, np.float32))])
    y = b.op("Relu", [b.op("Reshape", [r, i64(b, [1, 8, 6, 6])])])
    model = _finish(b, y, 8)
    loaded, analysis = inspect(model)
    conv = next(n for n in loaded.model.graph.node if n.op_type == "Conv")
    assert conv.input[1] in loaded.constants  # folded at load
    g = group_of(analysis, conv.output[0])
    assert g.prunable and g.size == 4 and conv.name in g.producers
    prune_and_check(model, {g.id: [1, 2]})


# ------------------------------------------------------------------------------------------ MobileViT
@pytest.mark.parametrize("batch", [1, 2])
def test_patch_unfold_fold_block(batch):
    """MobileViT: B x C x H x W unfolded to (B*P) x N x C patches (Reshape/Transpose), a transformer
    on the patches (LN, attention, MLP), folded back and fused by a convolution."""
    c, hw, ph, n, p = C, 4, 2, 4, 4
    b = GraphBuilder(opset=17)
    x = b.input("x", [batch, 3, hw, hw])
    a = b.op("Relu", [b.conv(x, 3, 6)])
    local = b.conv(a, 6, c, k=1, bias=False)
    u = b.op("Reshape", [local, i64(b, [batch * c * 2, ph, 2, ph])])
    u = b.op("Reshape", [b.op("Transpose", [u], perm=[0, 2, 1, 3]), i64(b, [batch, c, n, p])])
    u = b.op("Reshape", [b.op("Transpose", [u], perm=[0, 3, 2, 1]), i64(b, [batch * p, n, c])])
    record: dict = {}
    h = b.op("Add", [u, attention(b, layer_norm(b, u), "fused", record, batch=batch * p, tokens=n)])
    h = b.op("Add", [h, linear(b, b.op("Relu", [linear(b, layer_norm(b, h), c, 2 * c)]), 2 * c, c)])
    f = b.op("Reshape", [layer_norm(b, h), i64(b, [batch, p, n, c])])
    f = b.op("Reshape", [b.op("Transpose", [f], perm=[0, 3, 2, 1]), i64(b, [batch * c * 2, 2, ph, ph])])
    f = b.op("Reshape", [b.op("Transpose", [f], perm=[0, 2, 1, 3]), i64(b, [batch, c, hw, hw])])
    proj = b.op("Relu", [b.conv(f, c, 6, k=1)])
    fused = b.op("Relu", [b.conv(b.op("Concat", [a, proj], axis=1), 12, 6)])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [fused])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [y, b.weight((3, 6)), small(b, (3,))], ["y"], name="head",
                                         transB=1))
    b.output("y")
    model = b.model()
    _, analysis = inspect(model)
    stream = group_of(analysis, local)
    assert stream.prunable and stream.size == c and node_of(local) in stream.producers
    assert group_of(analysis, u).id == stream.id and group_of(analysis, f).id == stream.id
    assert analysis.labels[u].axes == (2,) and analysis.labels[f].axes == (1,)
    assert group_of(analysis, record["merged"]).size == HEADS
    for seed in range(3):
        prune_and_check(model, seed=seed)
    prune_and_check(model, {stream.id: list(range(0, c, 2))})


# ------------------------------------------------------------------------------------------ torch exports
def _jitter(module) -> None:
    """Distinct random values everywhere (LayerNorm's ones, zero biases): the check has teeth, and an
    exporter that merges equal constants merges nothing."""
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _check_export(model, example, path, heads: int, exporter: str = "torchscript", vocab: int = 0):
    from bench.zoo import export_torch_module, redraw_degenerate_weights

    model.eval()
    redraw_degenerate_weights(model)
    _jitter(model)
    export_torch_module(model, example, path, exporter)
    result = prune(path, 0.3)
    check = result.verification
    assert check.passed and check.max_rel_error < 1e-4 and (check.input_sensitive or vocab)
    if vocab:  # token ids: the verifier feeds zeros to integer inputs; compare on random tokens too
        reference = session(masked_reference(result.loaded, result.analysis, result.rewrite.kept))
        pruned = session(result.model)
        outs = []
        for seed in range(3):
            feed = {"input": np.random.default_rng(seed).integers(0, vocab, example.shape).astype(np.int64)}
            want, got = reference.run(None, feed)[0], pruned.run(None, feed)[0]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
            outs.append(want)
        assert not np.allclose(outs[0], outs[1])
    analysis = result.analysis
    assert analysis.prunable_params / analysis.total_params >= 0.9
    head_groups = [g for g in analysis.prunable if g.size == heads and len(g.producers) in (1, 3)]
    assert head_groups, [(g.size, g.producers) for g in analysis.groups]
    assert result.rewrite.params[1] < 0.8 * result.rewrite.params[0]
    onnx.checker.check_model(result.model, full_check=True)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_tiny_timm_vit(tmp_path, exporter):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                            depth=2, num_heads=4, num_classes=10)
    _check_export(vit, torch.randn(1, 3, 32, 32), tmp_path / "vit.onnx", heads=4, exporter=exporter)


def test_tiny_hf_bert(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = transformers.BertModel(cfg)
            self.head = torch.nn.Linear(32, 3)

        def forward(self, ids):
            return self.head(self.bert(input_ids=ids).pooler_output)

    _check_export(Classifier(), torch.randint(0, 100, (1, 8)), tmp_path / "bert.onnx", heads=4, vocab=100)
