"""Pass ``channel-groups``: partition every channel axis of a graph into channel groups.

Each node's semantics come from the op table (:mod:`halp_onnx.ops`). Rules propagate per-position
atom ids (:class:`~halp_onnx.labels.Labels`) from producers through the graph and merge atoms that
must be removed together. Afterwards each union-find class is one *channel*, and channels whose
atoms come from coupled producers form one *channel group*.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import networkx as nx
import numpy as np
import onnx

from ..errors import HalpError
from ..labels import Labels, UnionFind
from ..metrics import node_macs, param_count
from ..ops._rule import norm_axis
from ..ops.table import ANCHOR_OPS
from .dead_code import dead_with, reader_names
from .load import LoadedModel

STAGE = "channel-groups"


@dataclass(frozen=True)
class ChannelGroup:
    """A set of channels kept or removed together; channel ``i`` of the group is an index in ``range(size)``."""

    id: int
    size: int
    prunable: bool
    reasons: tuple[str, ...]
    producers: tuple[str, ...]  # nodes whose output channels shrink
    consumers: tuple[str, ...]  # nodes whose input channels shrink (reductions over the channels)
    nodes: tuple[str, ...]  # every node whose attributes, constants or shapes change
    tensors: tuple[str, ...]  # activations carrying the group's channels
    initializers: tuple[str, ...]  # initializers sliced along the group's channels
    params: int  # parameters that scale with the group's width
    macs: int  # multiply-accumulates of the producers and consumers
    removable: bool  # may be pruned to zero channels (its branch folds away)
    remove_reason: str = ""
    vanishes: tuple[str, ...] = ()  # removable: the nodes that disappear with it (not those left constant)
    shadow: tuple[int, ...] = ()  # removable: other groups whose producers all vanish or turn constant with it

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Consumer:
    """A node input that reduces over channels: the reference model masks it to remove channels."""

    node: str
    input_index: int
    tensor: str


@dataclass(frozen=True)
class ChannelAnalysis:
    """The frozen result of the pass; consumed by selection, rewrite, verification and the latency tables.

    ``labels[t].ids`` hold *global channel numbers*: channel ``c`` belongs to group
    ``channel_group[c]`` at index ``channel_index[c]``; ``-1`` marks a position no group owns.
    """

    groups: tuple[ChannelGroup, ...]
    labels: dict[str, Labels]
    init_slices: dict[str, tuple[Labels, ...]]
    consumers: tuple[Consumer, ...]
    channel_group: np.ndarray
    channel_index: np.ndarray
    total_params: int
    total_macs: int
    prunable_params: int = 0  # parameters in initializers that at least one prunable group slices
    node_macs: dict[str, int] = field(default_factory=dict)

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)

    def group(self, gid: int) -> ChannelGroup:
        return self.groups[gid]

    def channels_of(self, tensor: str) -> np.ndarray | None:
        """Per-position (group, index) pairs of a tracked tensor's span, shape (n, 2); None if untracked."""
        lab = self.labels.get(tensor)
        if lab is None:
            return None
        flat = lab.flat
        out = np.full((len(flat), 2), -1, dtype=np.int64)
        ok = flat >= 0
        out[ok, 0] = self.channel_group[flat[ok]]
        out[ok, 1] = self.channel_index[flat[ok]]
        return out

    def to_dict(self, *, with_labels: bool = False) -> dict:
        data = {
            "total_params": self.total_params,
            "prunable_params": self.prunable_params,
            "total_macs": self.total_macs,
            "groups": [g.to_dict() for g in self.groups],
        }
        if with_labels:
            data["labels"] = {k: {"axes": list(v.axes), "channels": v.ids.tolist()} for k, v in self.labels.items()}
            data["channel_group"] = self.channel_group.tolist()
            data["channel_index"] = self.channel_index.tolist()
        return data


class AnalysisContext:
    """What an op rule sees while the pass walks the graph."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.opset = loaded.opset
        self.shapes = loaded.shapes
        self.consts = loaded.constants
        self.uf = UnionFind()
        self.sources: list[tuple[str, str, bool]] = []  # (node, tensor, is padding) that created each source
        self.source_uf = nx.utils.UnionFind()
        self._labels: dict[str, Labels] = {}
        self.freezes: list[tuple[np.ndarray, str]] = []
        self.follows: dict[str, list[tuple[Labels, str]]] = {}
        self.followers: dict[tuple[str, tuple[int, ...]], set[str]] = {}  # (constant, axes) -> reader nodes
        self.consumer_specs: list[tuple[str, int, str]] = []
        self.touched: dict[str, set[str]] = {}  # node -> tensors whose channels change in it
        self.dense_liveness: dict[str, frozenset | None] | None = None  # _liveness of the unpruned graph
        self.producer_of: dict[str, str] = {o: n.name for n in self.model.graph.node for o in n.output if o}
        self.readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.model.graph.node:
            for idx, name in enumerate(node.input):
                if name:
                    self.readers.setdefault(name, []).append((node, idx))

    # -- tensors -------------------------------------------------------------------------------
    def labels(self, name: str) -> Labels | None:
        return self._labels.get(name) if name else None

    def set(self, name: str, labels: Labels | None) -> None:
        if name and labels is not None and labels.ids.size:
            self._labels[name] = labels

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.shapes.get(name)
        if shape is None:
            node = self.producer_of.get(name, "?")
            origin = self._unknown_origin(name)
            why = (f"shape inference stops at node '{origin.name}' ({origin.domain + '::' if origin.domain else ''}"
                   f"{origin.op_type}), whose output shape onnx cannot infer"
                   if origin is not None and origin.name != node else "give static input shapes with --input-shape")
            raise HalpError(f"the shape of tensor '{name}' (output of node '{node}') is unknown; {why}", stage=STAGE)
        return shape

    def _unknown_origin(self, name: str) -> onnx.NodeProto | None:
        """The first node (walking back from ``name``) whose output shape is unknown although its inputs'
        shapes are known: where shape inference stopped (a custom op, a data-dependent shape)."""
        by_name = {n.name: n for n in self.model.graph.node}
        seen: set[str] = set()
        origin = None
        while name in self.producer_of and name not in seen:
            seen.add(name)
            origin = by_name.get(self.producer_of[name])
            if origin is None:
                return None
            unknown = [i for i in origin.input if i and self.shapes.get(i) is None and i in self.producer_of]
            if not unknown:
                return origin
            name = unknown[0]
        return origin

    # -- atoms ---------------------------------------------------------------------------------
    def new_source(self, node: onnx.NodeProto, tensor: str, shape: tuple[int, ...], *, constant: bool = False) -> np.ndarray:
        self.sources.append((node.name, tensor, constant))
        sid = len(self.sources) - 1
        self.source_uf[sid]  # noqa: B018 - registers the source
        return self.uf.new(int(np.prod(shape)), sid, constant).reshape(shape)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a).reshape(-1)
        b = np.asarray(b).reshape(-1)
        self.uf.union(a, b)
        if len(a):
            for sa, sb in set(zip(self.uf.source[a].tolist(), self.uf.source[b].tolist())):
                self.source_uf.union(sa, sb)

    def freeze(self, ids, reason: str) -> None:
        if isinstance(ids, Labels):
            ids = ids.ids
        ids = np.asarray(ids).reshape(-1)
        if ids.size:
            self.freezes.append((ids, reason))

    def follow(self, const_name: str, labels: Labels, node: onnx.NodeProto) -> None:
        """Constant ``const_name`` is sliced along ``labels.axes`` with the channels of ``labels.ids``.

        A constant read by several nodes (a detection head's convolution applied at every pyramid level)
        is sliced once: every reader that follows it along the same axes couples its channels with the
        others' (the heads' output channels form one group across the levels, and so do the levels'
        input channels); a reader that does not follow it along those axes freezes them
        (:func:`_freeze_shared_constants`)."""
        self.followers.setdefault((const_name, labels.axes), set()).add(node.name)
        self.touch(node, const_name)
        for prev, _ in self.follows.get(const_name, []):
            if prev.axes == labels.axes:
                if prev.ids.shape != labels.ids.shape:
                    self.freeze(prev, f"constant '{const_name}' is read by {node.op_type} node '{node.name}' "
                                      "with channels of another shape")
                    self.freeze(labels, f"constant '{const_name}' is read by {node.op_type} node '{node.name}' "
                                        "with channels of another shape")
                    return
                self.unify(prev.ids, labels.ids)  # a shared weight couples its readers' channels
                return
        self.follows.setdefault(const_name, []).append((labels, node.name))

    def consumer(self, node: onnx.NodeProto, input_index: int) -> None:
        self.consumer_specs.append((node.name, input_index, node.input[input_index]))
        self.touch(node, node.input[input_index])

    def touch(self, node: onnx.NodeProto, tensor: str) -> None:
        self.touched.setdefault(node.name, set()).add(tensor)

    def attr(self, node: onnx.NodeProto, key: str, default=None):
        for a in node.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default


def analyze(loaded: LoadedModel) -> ChannelAnalysis:
    """Run the channel-group pass over a loaded model."""
    from ..ops import rule_for  # the op table

    ctx = AnalysisContext(loaded)
    graph = loaded.model.graph
    for node in graph.node:
        rule = rule_for(node, ctx.opset)
        channels = rule.channels if rule is not None else None  # rule_for only returns rules with channels
        if channels is None:
            reason = (f"node '{node.name}' has op {node.domain + '::' if node.domain else ''}{node.op_type}, "
                      "which halp-onnx does not know")
            for name in node.input:
                ctx.freeze(ctx.labels(name) or np.zeros(0, np.int64), reason)
            continue
        channels(node, ctx)
        _freeze_subgraph_reads(node, ctx)
    for out in graph.output:
        lab = ctx.labels(out.name)
        if lab is not None:
            ctx.freeze(lab, f"tensor '{out.name}' is a graph output")
    _freeze_shared_constants(ctx)
    return _finalize(ctx)


def _freeze_subgraph_reads(node: onnx.NodeProto, ctx: AnalysisContext) -> None:
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for sub in graphs:
            for inner in sub.node:
                for name in inner.input:
                    lab = ctx.labels(name)
                    if lab is not None:
                        ctx.freeze(lab, f"tensor '{name}' is read inside the subgraph of node '{node.name}' ({node.op_type})")


def _freeze_shared_constants(ctx: AnalysisContext) -> None:
    """A constant sliced along some axes and also read by a node that does not follow it along those
    axes cannot shrink there (readers that all follow it were coupled by :meth:`AnalysisContext.follow`)."""
    for name, follows in ctx.follows.items():
        for lab, _ in follows:
            followers = ctx.followers.get((name, lab.axes), set())
            for reader, _ in ctx.readers.get(name, []):
                if reader.name not in followers:
                    ctx.freeze(lab, f"constant '{name}' is shared with node '{reader.name}' ({reader.op_type}), "
                               "which does not follow its channels")
                    break


def _finalize(ctx: AnalysisContext) -> ChannelAnalysis:
    uf = ctx.uf
    n_atoms = len(uf)
    roots = uf.roots() if n_atoms else np.zeros(0, np.int64)
    # channels: one per class that has at least one computed (non-constant) atom, or a pure pad class
    class_ids, atom_channel = np.unique(roots, return_inverse=True)
    n_channels = len(class_ids)
    source_group_root = {sid: ctx.source_uf[sid] for sid in range(len(ctx.sources))}
    # group of a channel = the source set of its root atom
    chan_source = uf.source[class_ids] if n_channels else np.zeros(0, np.int64)
    root_sources = sorted({source_group_root[int(s)] for s in chan_source.tolist()},
                          key=lambda s: int(s))
    group_of_root = {s: i for i, s in enumerate(root_sources)}
    channel_group = np.array([group_of_root[source_group_root[int(s)]] for s in chan_source.tolist()], dtype=np.int64)
    channel_index = np.zeros(n_channels, dtype=np.int64)
    sizes = np.bincount(channel_group, minlength=len(root_sources)) if n_channels else np.zeros(0, np.int64)
    counters = np.zeros(len(root_sources), dtype=np.int64)
    for c, g in enumerate(channel_group.tolist()):  # class ids are sorted by first atom: canonical order
        channel_index[c] = counters[g]
        counters[g] += 1

    def to_channels(ids: np.ndarray) -> np.ndarray:
        return atom_channel[ids] if ids.size else ids

    labels = {name: Labels(lab.axes, to_channels(lab.ids)) for name, lab in ctx._labels.items()}
    init_slices = {name: tuple(Labels(l.axes, to_channels(l.ids)) for l, _ in follows)
                   for name, follows in ctx.follows.items()}

    reasons: list[list[str]] = [[] for _ in root_sources]
    for ids, reason in ctx.freezes:
        for g in np.unique(channel_group[to_channels(ids)]).tolist():
            if reason not in reasons[g] and len(reasons[g]) < 8:
                reasons[g].append(reason)
    # a group made only of padding atoms carries no computed channel
    constant_only = np.ones(len(root_sources), dtype=bool)
    if n_atoms:
        computed = ~uf.constant
        constant_only[np.unique(channel_group[atom_channel[computed]])] = False
    for g in np.nonzero(constant_only)[0].tolist():
        reasons[g].append("only constant padding channels")

    shapes = ctx.shapes
    macs = {node.name: node_macs(node, shapes) for node in ctx.model.graph.node}
    groups_of_node: dict[str, set[int]] = {}
    group_tensors: list[set[str]] = [set() for _ in root_sources]
    for name, lab in labels.items():
        for g in _groups_in(lab, channel_group):
            group_tensors[g].add(name)
    for node in ctx.model.graph.node:
        for t in list(node.input) + list(node.output):
            t_lab = labels.get(t)
            if t_lab is not None:
                for g in _groups_in(t_lab, channel_group):
                    groups_of_node.setdefault(node.name, set()).add(g)
        for t in ctx.touched.get(node.name, ()):
            for g in _groups_in(labels.get(t) or (init_slices.get(t) or (None,))[0], channel_group):
                groups_of_node.setdefault(node.name, set()).add(g)
    producers: list[list[str]] = [[] for _ in root_sources]
    for sid, (node_name, _, padding) in enumerate(ctx.sources):
        g = group_of_root.get(source_group_root[sid], -1)  # -1: no channel (a zero-width pad side)
        if g >= 0 and not padding and node_name not in producers[g]:
            producers[g].append(node_name)
    consumers: list[list[str]] = [[] for _ in root_sources]
    for node_name, _, tensor in ctx.consumer_specs:
        for g in _groups_in(labels.get(tensor), channel_group):
            if node_name not in consumers[g]:
                consumers[g].append(node_name)
    # parameters: elements of float constants of any width (bf16, fp16, fp32, fp64), one rule for the
    # groups, the prunable share and the total, so a share can never exceed 100%
    params = np.zeros(len(root_sources), dtype=np.int64)
    for name, slices in init_slices.items():
        size = param_count(ctx.consts[name]) if name in ctx.consts else 0
        for g in {g for lab in slices for g in _groups_in(lab, channel_group)}:
            params[g] += size
    total_params = int(sum(param_count(v) for v in ctx.consts.values()))
    group_macs = np.zeros(len(root_sources), dtype=np.int64)
    for node_name, gs_ in groups_of_node.items():
        for g in gs_:
            if node_name in producers[g] or node_name in consumers[g]:
                group_macs[g] += macs.get(node_name, 0)
    groups = []
    for g in range(len(root_sources)):
        node_list = tuple(n.name for n in ctx.model.graph.node if g in groups_of_node.get(n.name, ()))
        groups.append(ChannelGroup(
            id=g, size=int(sizes[g]), prunable=not reasons[g], reasons=tuple(reasons[g]),
            producers=tuple(producers[g]), consumers=tuple(consumers[g]), nodes=node_list,
            tensors=tuple(sorted(group_tensors[g])),
            initializers=tuple(sorted(n for n, sl in init_slices.items()
                                      if any(g in _groups_in(l, channel_group) for l in sl))),
            params=int(params[g]), macs=int(group_macs[g]), removable=False,
            remove_reason=""))
    readers = reader_names(ctx.model.graph)
    outputs_of = {n.name: [o for o in n.output if o] for n in ctx.model.graph.node}
    for g, group in enumerate(groups):
        reason, gone, live = _removal_blocker(ctx, group, labels, channel_group, readers) if group.prunable \
            else ("it is frozen", (), {})
        groups[g] = replace(group, removable=not reason, remove_reason=reason, vanishes=gone,
                            shadow=_shadow(groups, g, live, outputs_of) if not reason else ())
    consumers_out = tuple(Consumer(n, i, t) for n, i, t in ctx.consumer_specs)
    prunable_inits = {name for g in groups if g.prunable for name in g.initializers}
    prunable_params = int(sum(param_count(ctx.consts[n]) for n in prunable_inits if n in ctx.consts))
    return ChannelAnalysis(groups=tuple(groups), labels=labels, init_slices=init_slices,
                           consumers=consumers_out, channel_group=channel_group, channel_index=channel_index,
                           total_params=total_params, total_macs=int(sum(macs.values())),
                           prunable_params=prunable_params, node_macs=macs)


_CONSTANT_WHEN_EMPTY = ANCHOR_OPS  # a consumer that lost every input channel becomes its bias


def _removal_blocker(ctx: AnalysisContext, group: ChannelGroup, labels: dict[str, Labels],
                     channel_group: np.ndarray, readers: Mapping[str, Sequence[str]]
                     ) -> tuple[str, tuple[str, ...], Mapping]:
    """Why the group cannot go to zero channels ("" if it can), the nodes that vanish with it, and which
    tensors still depend on the inputs then (:func:`_liveness`).

    Its branch must vanish, its consumers become constants, and every graph output must still depend on a
    graph input - all of it, where it did: a branch whose constant reaches an output without joining a
    live tensor (a detection head's branch at one level, concatenated with the other levels along the
    anchors axis) must stay. A tensor that also carries other groups' channels (a channel Concat, the
    Split of a CSP block) only loses this group's: a Concat along the channels drops the inputs left
    empty, and a Split keeps an empty output that nothing reads."""
    own: set[str] = set()  # tensors that carry only this group's channels: they disappear
    for t in group.tensors:
        others = set(_groups_in(labels[t], channel_group)) - {group.id}
        if not others:
            if (labels[t].ids < 0).any():
                return f"tensor '{t}' also carries channels no group owns", (), {}
            own.add(t)
    tensors = own
    # a consumer becomes a constant (its bias) only where every channel it reads is this group's
    consumers = {n for n, _, t in ctx.consumer_specs if t in own}
    vanished = set()
    for node in ctx.model.graph.node:
        outs = [o for o in node.output if o]
        if node.name not in consumers and outs and all(o in tensors for o in outs):
            vanished.add(node.name)
    # a node whose every output feeds only vanished nodes (GRN's mean over the channels, a statistic
    # used inside the branch) is dead code once the branch is gone
    vanished = dead_with(ctx.model.graph, vanished, keep=consumers, readers=readers)
    for node in ctx.model.graph.node:
        if node.name in vanished or not any(i in tensors for i in node.input):
            continue
        if node.name in consumers and node.op_type in _CONSTANT_WHEN_EMPTY:
            continue
        if node.op_type == "Concat" and _concat_on_channels(ctx, node, labels) and \
                any(i not in tensors for i in node.input):
            continue  # drops the empty inputs
        return f"node '{node.name}' ({node.op_type}) would be left without input", (), {}
    live = _liveness(ctx, vanished | consumers, labels)
    dense = ctx.dense_liveness = ctx.dense_liveness or _liveness(ctx, set(), labels)
    if any(o.name not in live for o in ctx.model.graph.output):
        return "without it the graph outputs would no longer depend on the inputs", (), {}
    for o in ctx.model.graph.output:
        if _rank(live[o.name]) < _rank(dense.get(o.name)):
            return (f"without it part of graph output '{o.name}' would no longer depend on the inputs "
                    "(a branch that reaches the output without joining a live one)"), (), {}
    order = {n.name: i for i, n in enumerate(ctx.model.graph.node)}
    return "", tuple(sorted(vanished, key=lambda n: order.get(n, -1))), live


def _shadow(groups: Sequence[ChannelGroup], g: int, live: Mapping,
            outputs_of: Mapping[str, Sequence[str]]) -> tuple[int, ...]:
    """The other prunable groups whose every producer is gone or computes a constant once group ``g`` is
    removed (``live``: :func:`_liveness` then): their channels go with it (their value must not count
    when ``g`` is removed)."""
    return tuple(w.id for w in groups if w.id != g and w.prunable and w.producers and
                 all(not any(o in live for o in outputs_of.get(p, ())) for p in w.producers))


def _concat_on_channels(ctx: AnalysisContext, node: onnx.NodeProto, labels: dict[str, Labels]) -> bool:
    """Whether a Concat joins its inputs along the axis its output's channels are labelled on."""
    out = node.output[0]
    shape, lab = ctx.shapes.get(out), labels.get(out)
    return shape is not None and lab is not None and \
        lab.axes == (norm_axis(int(ctx.attr(node, "axis", 1)), len(shape)),)


_UNKNOWN = frozenset({-1})  # some positions are constants, which ones is not followed


def _rank(state) -> int:
    return 2 if state is None else 1


def _liveness(ctx: AnalysisContext, constant: set[str], labels: dict[str, Labels]) -> dict[str, frozenset | None]:
    """Which tensors depend on the graph inputs when the nodes in ``constant`` output constants.

    A tensor absent from the result is a constant; ``None``: every position depends on the inputs;
    a set: the channels that are constants (the rest depend on the inputs), e.g. a Concat of a live
    tensor and a removed branch, until an op that mixes the channels; ``_UNKNOWN``: some positions are
    constants (a Concat along another axis, such as the anchors axis of a detection head whose one
    level lost its branch), which no later op revives."""
    state: dict[str, frozenset | None] = {i.name: None for i in ctx.model.graph.input}

    def ids(name: str) -> frozenset | None:
        lab = labels.get(name)
        return frozenset(lab.flat[lab.flat >= 0].tolist()) if lab is not None else None

    for node in ctx.model.graph.node:
        if node.name in constant:
            continue
        names = [i for i in node.input if i]
        acts = [state[i] for i in names if i in state]
        if not acts:
            continue
        outs = [o for o in node.output if o]
        dead: frozenset | None
        if node.op_type == "Concat":
            dead = None if all(i in state and state[i] is None for i in names) else _UNKNOWN
            if dead is not None and _concat_on_channels(ctx, node, labels):
                parts = [state[i] if i in state else ids(i) for i in names]  # a constant: all its channels
                if all(p is not _UNKNOWN and (p is not None or i in state) for p, i in zip(parts, names)):
                    dead = frozenset().union(*(p for p in parts if p is not None))
        elif node.op_type in ANCHOR_OPS and int(ctx.attr(node, "group", 1)) == 1:
            dead = None if any(a is not _UNKNOWN for a in acts) else _UNKNOWN  # mixes every channel
        elif any(a is None for a in acts):
            dead = None
        elif any(a is _UNKNOWN for a in acts):
            dead = _UNKNOWN
        else:
            dead = frozenset.intersection(*(a for a in acts if a is not None))
        for o in outs:
            if dead is None or dead is _UNKNOWN:
                state[o] = dead
                continue
            carried = ids(o)
            if carried is None:
                state[o] = _UNKNOWN
            elif not carried <= dead:  # else every channel it carries is a constant: absent
                state[o] = (dead & carried) or None
    return state


def _groups_in(lab: Labels | None, channel_group: np.ndarray) -> list[int]:
    if lab is None:
        return []
    flat = lab.flat
    flat = flat[flat >= 0]
    return np.unique(channel_group[flat]).tolist() if flat.size else []
