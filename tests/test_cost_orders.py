"""The knapsack's block widths follow the importance order: a group whose channels lie unevenly on
several tensors (a channel split, ShuffleNet's split after the shuffle) loses them where its least
important channels are, not in proportion, and the cost model must price what the rewrite builds."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from halp_onnx import inspect
from halp_onnx.builder import GraphBuilder
from halp_onnx.passes.latency_cost import build_cost_model, ranked_values, total_latency
from halp_onnx.passes.rewrite import rewrite
from halp_onnx.profiles.blocks import block_widths, model_blocks

from graph_helpers import finish, group_of


def _halves() -> tuple[GraphBuilder, str, str, str]:
    """A builder holding conv 3->8 (its output ``a``) and the two Slices of ``a``: channels 0-3, 4-7."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = b.op("Relu", [b.conv(x, 3, 8)])
    lo = b.op("Slice", [a, b.const(np.array([0], np.int64)), b.const(np.array([4], np.int64)),
                        b.const(np.array([1], np.int64))])
    hi = b.op("Slice", [a, b.const(np.array([4], np.int64)), b.const(np.array([8], np.int64)),
                        b.const(np.array([1], np.int64))])
    return b, a, lo, hi


def _split_model() -> tuple[onnx.ModelProto, str]:
    """conv 3->8, its channels split 0-3 / 4-7 into two convs (4->6 each), summed, then a head."""
    b, a, lo, hi = _halves()
    s = b.op("Add", [b.op("Relu", [b.conv(lo, 4, 6)]), b.op("Relu", [b.conv(hi, 4, 6)])])
    return finish(b, s, 6), a


def test_ordered_widths_are_the_rewritten_models():
    model, a = _split_model()
    loaded, analysis = inspect(model)
    blocks = model_blocks(loaded, analysis)
    cm = build_cost_model(analysis, blocks, lambda sig: 1, min_keep=0.1, monotone=False)
    g = group_of(analysis, a).id
    members = np.nonzero(analysis.channel_group == g)[0]
    scores = np.zeros(len(analysis.channel_group))
    # the first half (channels 0-3, the first Slice's) far more important than the second
    scores[members] = np.where(analysis.channel_index[members] < 4, 10.0, 1.0) + 0.01 * analysis.channel_index[members]
    order, _ = ranked_values(analysis, scores, cm.choices[g])
    ordered = cm.with_orders({g: order})
    mismatch_proportional = 0
    for w in cm.choices[g].widths:
        if w == 0:
            continue
        keep = {g: np.sort(order[:w])} if w < cm.choices[g].size else {}
        kept = rewrite(loaded, analysis, keep, check=False).kept
        for plain, bc in zip(cm.blocks, ordered.blocks):
            assert ordered.alive_widths(bc, {g: w}) == block_widths(analysis, kept, bc.block), (w, bc.block.node)
            mismatch_proportional += cm.alive_widths(plain, {g: w}) != block_widths(analysis, kept, bc.block)
    # in proportion, keeping 4 of 8 would halve both Slices' consumers; the order keeps the first whole
    assert mismatch_proportional > 0
    i = next(i for i, bc in enumerate(cm.blocks) if bc.c_in.groups() == (g,) and max(bc.c_in.members[0]) < 4)
    assert ordered.alive_widths(ordered.blocks[i], {g: 4})[0] == 4 and cm.alive_widths(cm.blocks[i], {g: 4})[0] == 2


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_ordered_widths_on_the_examples(name):
    """Random orders and widths on the built-in examples (a zero-padded shortcut, depthwise convs and
    squeeze-excitation): every block's widths are the rewritten model's."""
    from halp_onnx.examples import example

    loaded, analysis = inspect(example(name))
    blocks = model_blocks(loaded, analysis)
    cm = build_cost_model(analysis, blocks, lambda sig: 1, monotone=False)
    rng = np.random.default_rng(0)
    orders = {g: rng.permutation(ch.size) for g, ch in cm.choices.items()}
    ordered = cm.with_orders(orders)
    for _ in range(4):
        widths = {g: int(rng.choice([w for w in ch.widths if w > 0])) for g, ch in cm.choices.items()}
        keep = {g: np.sort(orders[g][:w]) for g, w in widths.items() if w < cm.choices[g].size}
        kept = rewrite(loaded, analysis, keep, check=False).kept
        for bc in ordered.blocks:
            assert ordered.alive_widths(bc, widths) == block_widths(analysis, kept, bc.block), bc.block.node


def _emptied_branch_model() -> tuple[onnx.ModelProto, str]:
    """conv 3->8 split 0-3 / 4-7; the second half feeds a two-conv branch (4->6->6), the first a conv
    (4->6); the branches are summed, then a head."""
    b, a, lo, hi = _halves()
    branch = b.op("Relu", [b.conv(b.op("Relu", [b.conv(hi, 4, 6)]), 6, 6)])
    s = b.op("Add", [b.op("Relu", [b.conv(lo, 4, 6)]), branch])
    return finish(b, s, 6), a


def test_a_branch_the_order_empties_is_priced_folded():
    """Keeping the first half of a split group empties the second Slice: its branch computes from
    constants, the rewrite folds it away, and the cost model's total is the rewritten model's (without
    the folding it still charges the branch's second convolution)."""
    from halp_onnx.profiles.folding import block_sources

    model, a = _emptied_branch_model()
    loaded, analysis = inspect(model)
    blocks = model_blocks(loaded, analysis)

    def ms(sig, ci, co):  # any price that grows with both widths; an empty input leaves the epilogue
        return float(ci * co + co) if ci > 0 else 0.5 * co

    sources = block_sources(loaded.model.graph, blocks)
    cm = build_cost_model(analysis, blocks, lambda sig: 1, min_keep=0.1, monotone=False, sources=sources)
    plain = build_cost_model(analysis, blocks, lambda sig: 1, min_keep=0.1, monotone=False)
    g = group_of(analysis, a).id
    members = np.nonzero(analysis.channel_group == g)[0]
    scores = np.zeros(len(analysis.channel_group))
    scores[members] = np.where(analysis.channel_index[members] < 4, 10.0, 1.0)
    order, _ = ranked_values(analysis, scores, cm.choices[g])
    keep = {g: np.sort(order[:4])}
    out = rewrite(loaded, analysis, keep, check=False).model
    loaded2, analysis2 = inspect(out)
    rewritten = sum(ms(b.signature, b.c_in, b.c_out) for b in model_blocks(loaded2, analysis2))
    assert len(model_blocks(loaded2, analysis2)) < len(blocks)  # the branch is gone from the graph
    folded_total = total_latency(cm.with_orders({g: order}), {g: 4}, ms)
    unfolded_total = total_latency(plain.with_orders({g: order}), {g: 4}, ms)
    assert folded_total == pytest.approx(rewritten)
    assert unfolded_total > rewritten + 30  # the 6->6 convolution (36 + 6) charged at its widths
