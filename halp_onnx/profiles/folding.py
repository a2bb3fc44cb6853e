"""Blocks that a pruned model computes from constants only, which the rewrite and the runtime fold away.

Pruning can empty a tensor without removing a group: the channels of one side of a split (ShuffleNet's
halves after the channel shuffle, a slice of a concat) may all rank last in their group's order, so the
group keeps channels while that branch reads none. The branch's first layer then outputs its bias, the
layers after it compute from that constant, and the rewritten model holds a constant where the branch
was. A latency prediction that prices those layers at their widths overestimates the pruned model.

:func:`block_sources` records, once per model, which blocks each block's data comes from (through ops
that are not blocks themselves: reshapes, unfused activations); :func:`folded` then says, for one choice
of widths, which blocks read a constant (priced as with no input channel: what is left is their
epilogue's join) and which blocks' outputs are constant in turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import onnx

from ..ops.table import ANCHOR_OPS
from .blocks import Block

GRAPH_INPUT = -1  # a source that is a graph input: always live


@dataclass(frozen=True)
class Sources:
    """Where one block's data comes from: ``main`` its anchor's input (``Block.in_tensor``),
    ``operands`` the sources of each other input it reads (a residual Add's other operand, a Concat's
    other inputs), ``side`` all of those together; block indices, or :data:`GRAPH_INPUT`. Constants
    (initializers) are no source. ``anchor``: a GEMM-like block, which with a constant input is left
    with its epilogue; any other block runs while one of its inputs is live."""

    main: frozenset[int]
    operands: tuple[frozenset[int], ...]
    anchor: bool

    @property
    def side(self) -> frozenset[int]:
        return frozenset().union(*self.operands)


def block_sources(graph: onnx.GraphProto, blocks: Sequence[Block]) -> tuple[Sources, ...]:
    """The :class:`Sources` of every block of ``graph``, walking back through non-block nodes."""
    producer: dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output if o}
    by_name = {n.name: n for n in graph.node}
    inits = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input} - inits
    out_of = {b.out_tensor: i for i, b in enumerate(blocks)}
    owner = {name: i for i, b in enumerate(blocks) for name in (b.node, *b.fused)}

    def sources(tensor: str) -> frozenset[int]:
        stack, seen, found = [tensor], set(), set()
        while stack:
            t = stack.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if t in out_of:
                found.add(out_of[t])
            elif t in inputs:
                found.add(GRAPH_INPUT)
            elif t in producer:
                node = producer[t]
                if node.name in owner:  # an inner tensor of a block read outside it: that block
                    found.add(owner[node.name])
                else:
                    stack.extend(node.input)
        return frozenset(found)

    out = []
    for b in blocks:
        nodes = [by_name[n] for n in (b.node, *b.fused) if n in by_name]
        inner = {o for n in nodes for o in n.output}
        operands = (sources(x) for x in sorted({x for n in nodes for x in n.input})
                    if x and x != b.in_tensor and x not in inner and x not in inits)
        out.append(Sources(sources(b.in_tensor), tuple(o for o in operands if o), b.signature.op in ANCHOR_OPS))
    return tuple(out)


def folded(sources: Sequence[Sources], widths: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The widths to price blocks at, given their ``(c_in, c_out)`` (graph order; ``c_out == 0``:
    gone): ``c_out`` 0 where the output is computed from constants only (folded away: no cost),
    ``c_in`` 0 where a GEMM-like block reads a constant but its epilogue joins a live tensor (what is
    left is the join), else as given. No ``sources``: as given."""
    if not sources:
        return list(widths)
    out, _ = _fold(sources, widths)
    return out


def half_constant(sources: Sequence[Sources], widths: Sequence[tuple[int, int]]) -> set[int]:
    """The blocks (indices) that stay live but read one operand from constants only that the dense
    model computes: a squeeze-excitation ``Mul`` whose squeeze was removed (it scales by a constant),
    an ``Add`` whose other branch folded to its bias. The runtime fuses such an op into its neighbour
    (onnxruntime folds a ``Mul`` by a constant into the convolution before it), so its time is not the
    op's time on two live tensors, which its table prices."""
    if not sources:
        return set()
    _, const = _fold(sources, widths)

    def live(parts: frozenset[int], i: int) -> bool:
        own = parts - {i}  # (an elementwise block's ``in_tensor`` is its own output: no operand of its own)
        return not own or any(s == GRAPH_INPUT or not const[s] for s in own)

    out = set()
    for i, f in enumerate(sources):
        if not (const[i] or f.anchor):
            alive = [live(parts, i) for parts in (f.main, *f.operands)]
            if any(alive) and not all(alive):
                out.add(i)
    return out


def _fold(sources: Sequence[Sources], widths: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[bool]]:
    const = [False] * len(widths)
    out = []
    for i, ((ci, co), f) in enumerate(zip(widths, sources)):
        main_const = ci <= 0 or (bool(f.main) and all(s != GRAPH_INPUT and const[s] for s in f.main))
        side_const = all(s != GRAPH_INPUT and const[s] for s in f.side)
        const[i] = co <= 0 or (main_const and side_const)
        if const[i]:
            out.append((ci, 0))
        elif main_const and f.anchor:
            out.append((0, co))
        else:
            out.append((ci, co))
    return out, const
