"""Pass ``rewrite``: build the physically smaller model for a choice of kept channels.

Initializers are sliced along the channel spans recorded by the analysis; op rules update the
attributes and constant inputs that name channel counts (``group``, pads, reshape targets, split
sizes, slice bounds, gather indices). Node and initializer names are kept.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from ..errors import HalpError
from ..labels import Labels
from ..metrics import model_params, node_macs
from ..ops.table import ANCHOR_OPS
from .channel_groups import ChannelAnalysis
from .dead_code import dead_with
from .load import PROTOBUF_LIMIT, LoadedModel, infer_shapes, save_external, tensor_shapes, weight_bytes

STAGE = "rewrite"


@dataclass(frozen=True)
class RewriteResult:
    model: onnx.ModelProto
    kept: np.ndarray  # bool per global channel
    widths: dict[int, tuple[int, int]]  # group id -> (before, after)
    params: tuple[int, int]  # before, after
    macs: tuple[int, int]
    node_macs: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"widths": {str(k): list(v) for k, v in self.widths.items()},
                "params": list(self.params), "macs": list(self.macs)}


def kept_channels(analysis: ChannelAnalysis, keep: Mapping[int, Sequence[int] | np.ndarray]) -> np.ndarray:
    """Validate a keep choice (group id -> kept channel indices) and expand it to a per-channel mask."""
    kept = np.ones(len(analysis.channel_group), dtype=bool)
    for gid, indices in keep.items():
        if not 0 <= int(gid) < len(analysis.groups):
            raise HalpError(f"there is no channel group {gid} (the model has {len(analysis.groups)})", stage=STAGE)
        group = analysis.groups[int(gid)]
        idx = np.asarray(list(indices), dtype=np.int64)
        if len(idx) == group.size:
            continue
        if not group.prunable:
            raise HalpError(f"channel group {gid} cannot be pruned: {'; '.join(group.reasons)}", stage=STAGE)
        if len(idx) == 0 and not group.removable:
            raise HalpError(f"channel group {gid} cannot lose all its channels: {group.remove_reason}", stage=STAGE)
        if len(np.unique(idx)) != len(idx) or (len(idx) and (idx.min() < 0 or idx.max() >= group.size)):
            raise HalpError(f"channel group {gid}: kept indices must be distinct and in 0..{group.size - 1}",
                            stage=STAGE)
        members = analysis.channel_group == int(gid)
        kept[members] = np.isin(analysis.channel_index[members], idx)
    return kept


class RewriteContext:
    """What an op rule's ``rewrite`` sees: masks of kept positions and setters for the node."""

    def __init__(self, loaded: LoadedModel, analysis: ChannelAnalysis, kept: np.ndarray):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(loaded.model)
        self.opset = loaded.opset
        self.analysis = analysis
        self.kept = kept
        self.consts = dict(loaded.constants)  # values are replaced, never mutated in place
        self.shapes = loaded.shapes
        self._inits = {i.name: i for i in self.model.graph.initializer}
        self._readers: dict[str, int] = {}
        for node in self.model.graph.node:
            for name in node.input:
                self._readers[name] = self._readers.get(name, 0) + 1

    def labels(self, name: str) -> Labels | None:
        return self.analysis.labels.get(name)

    def mask_of(self, lab: Labels) -> np.ndarray:
        ids = lab.ids
        return np.where(ids >= 0, self.kept[np.maximum(ids, 0)], True)

    def mask(self, name: str) -> np.ndarray | None:
        lab = self.labels(name)
        return None if lab is None else self.mask_of(lab)

    def new_dims(self, name: str) -> dict[int, int]:
        """New sizes of the axes carrying channels, for those that shrink."""
        lab = self.labels(name)
        if lab is None:
            return {}
        return {ax: n for ax, n, old in _axis_sizes(lab, self.mask_of(lab), name) if n != old}

    def const(self, name: str):
        return self.consts.get(name)

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.shapes[name]
        if shape is None:  # callers len() or index it: the TypeError they would raise, with the tensor named
            raise TypeError(f"the shape of tensor {name!r} is unknown")
        return shape

    def attr(self, node: onnx.NodeProto, key: str, default=None):
        for a in node.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default

    def set_attr(self, node: onnx.NodeProto, key: str, value) -> None:
        self.del_attr(node, key)
        node.attribute.append(onnx.helper.make_attribute(key, value))

    def del_attr(self, node: onnx.NodeProto, key: str) -> None:
        for i, a in enumerate(node.attribute):
            if a.name == key:
                del node.attribute[i]
                return

    def set_input(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Give a node a new constant input value (a private copy when the constant is shared)."""
        name = node.input[index] if index < len(node.input) else ""
        if name and name in self._inits and self._readers.get(name, 0) == 1:
            self._inits[name].CopyFrom(onnx.numpy_helper.from_array(value, name))
        else:
            name = self._fresh(f"{node.name}_input{index}")
            self.model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
            self._inits[name] = self.model.graph.initializer[-1]
            self._readers[name] = 1
            while len(node.input) <= index:
                node.input.append("")
            node.input[index] = name
        self.consts[name] = value

    def _fresh(self, base: str) -> str:
        name, k = base, 0
        taken = set(self._inits) | set(self.shapes)
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        return name


def _remove_empty_branches(rw: RewriteContext) -> set[str]:
    """Tensors left without a channel (a group pruned to zero, or a slice of a group whose kept channels
    all lie elsewhere): nodes whose outputs lost every channel disappear, consumers that lost every
    input channel become constants (their bias), and a Concat drops the inputs that have nothing left.
    Returns the names of the removed nodes."""
    graph = rw.model.graph
    empty = {name for name, lab in rw.analysis.labels.items() if lab.ids.size and not rw.mask_of(lab).any()}
    if not empty:
        return set()
    removed = {n.name for n in graph.node if [o for o in n.output if o] and all(o in empty for o in n.output if o)}
    # nodes whose outputs feed only removed nodes are dead with them (GRN's mean over the removed channels)
    removed = dead_with(graph, removed)
    for node in graph.node:
        if node.name in removed:
            continue
        if node.op_type == "Concat" and any(i in empty for i in node.input):
            left = [i for i in node.input if i not in empty]
            del node.input[:]
            node.input.extend(left)
        elif node.input and node.input[0] in empty and node.op_type not in ANCHOR_OPS:
            raise HalpError(f"node '{node.name}' ({node.op_type}) would read tensor '{node.input[0]}', "
                            "which keeps no channel; keep at least one of its channels", stage=STAGE)
        elif node.input and node.input[0] in empty:  # a consumer with no input channel left
            out = node.output[0]
            shape = list(rw.shape(out))
            mask = rw.mask(out)
            channel_axis = 1 if node.op_type != "MatMul" else len(shape) - 1
            if mask is not None:
                shape[channel_axis] = int(mask.sum())
            value = np.zeros(shape, dtype=np.float32)
            bias = node.input[2] if len(node.input) > 2 and node.op_type != "MatMul" else ""
            if bias:
                b = np.asarray(rw.consts[bias], dtype=np.float32)
                if node.op_type == "Gemm":
                    b = b * float(rw.attr(node, "beta", 1.0))
                    value = value + b
                else:
                    view = [1] * len(shape)
                    view[channel_axis] = b.size
                    value = value + b.reshape(view)
            graph.initializer.append(onnx.numpy_helper.from_array(value.astype(np.float32), out))
            removed.add(node.name)
    kept_nodes = [n for n in graph.node if n.name not in removed]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    return removed


def _fold_after_removal(rw: RewriteContext) -> None:
    """Fold the constants a removed branch leaves behind into the op that joins it (usually an Add)."""
    import onnx_graphsurgeon as gs

    rw.model.graph.ClearField("value_info")
    graph = gs.import_onnx(rw.model)
    graph.fold_constants(fold_shapes=False, error_ok=True).cleanup(remove_unused_graph_inputs=False).toposort()
    folded = gs.export_onnx(graph, do_type_check=False)
    folded.ir_version = rw.model.ir_version
    rw.model.CopyFrom(folded)


_BROADCAST_JOINS = ("Add", "Sub", "Mul", "Div")


def _shrink_folded_constants(rw: RewriteContext, original: set[str]) -> None:
    """A removed branch folds to a constant that is uniform over space (its bias through BN and
    activations); stored at full size it would count as parameters. Where it only feeds a
    broadcasting join whose other operand has the full shape, keep it as ``1 x C x 1 x 1``."""
    graph = rw.model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(rw.model)
    except Exception:  # the caller's shape inference reports problems
        return
    shapes = tensor_shapes(inferred)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for init in graph.initializer:
        if init.name in original:
            continue
        value = onnx.numpy_helper.to_array(init)
        users = readers.get(init.name, [])
        if value.ndim < 2 or value.size < 2 or not users or any(u.op_type not in _BROADCAST_JOINS for u in users):
            continue
        others = [shapes.get(i) for u in users for i in u.input if i != init.name]
        if any(o is None or len(o) != value.ndim or tuple(o) != value.shape for o in others):
            continue
        reduced = value
        for ax in range(value.ndim):
            first = np.take(reduced, [0], axis=ax)
            if np.array_equal(np.broadcast_to(first, reduced.shape), reduced):
                reduced = first
        if reduced.size < value.size:
            init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(reduced), init.name))


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Tensors the subgraphs of a node (If, Loop, Scan) read from the enclosing scope."""
    names: set[str] = set()
    for attr in node.attribute:
        for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
            inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | \
                {i.name for i in sub.initializer}
            for n in sub.node:
                names.update(i for i in list(n.input) + sorted(_subgraph_reads(n)) if i and i not in inner)
    return names


def _toposort(graph: onnx.GraphProto) -> None:
    """Put the nodes in topological order, as onnx.checker wants (a branch removed, inputs rewired).

    Stable: among the nodes ready at each step the earliest in the original order goes first, so a
    graph already in order is left exactly as it is. A node that reads a tensor nothing produces any
    more is named."""
    import networkx as nx

    nodes = list(graph.node)
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(nodes)))
    for k, node in enumerate(nodes):
        for name in node.input:
            if name in producer:
                dag.add_edge(producer[name], k)
            elif name and name not in available:
                raise HalpError(f"the rewritten model is broken: node '{node.name}' ({node.op_type}) reads tensor "
                                f"'{name}', which nothing produces any more", stage=STAGE)
        for name in _subgraph_reads(node):
            if name in producer:
                dag.add_edge(producer[name], k)
    try:
        order = list(nx.lexicographical_topological_sort(dag))
    except nx.NetworkXUnfeasible:
        raise HalpError("the rewritten model has a cycle", stage=STAGE) from None
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[k] for k in order)


def _axis_sizes(lab: Labels, mask: np.ndarray, name: str):
    """(axis, new size, old size) per channel axis; the kept positions must form a box."""
    sizes = []
    for k, ax in enumerate(lab.axes):
        other = tuple(i for i in range(mask.ndim) if i != k)
        sizes.append((ax, int(mask.any(axis=other).sum()) if other else int(mask.sum()), mask.shape[k]))
    if int(np.prod([s for _, s, _ in sizes])) != int(mask.sum()):
        raise HalpError(f"the kept channels of tensor '{name}' do not form a rectangle", stage=STAGE)
    return sizes


def rewrite(loaded: LoadedModel, analysis: ChannelAnalysis,
            keep: Mapping[int, Sequence[int] | np.ndarray] | np.ndarray, *, check: bool = True) -> RewriteResult:
    """Produce the smaller model. ``keep`` maps group ids to kept channel indices (or is a channel mask)."""
    from ..ops import rule_for

    kept = keep if isinstance(keep, np.ndarray) else kept_channels(analysis, keep)
    rw = RewriteContext(loaded, analysis, kept)
    graph = rw.model.graph
    for name, slices in analysis.init_slices.items():
        init = rw._inits.get(name)
        if init is None:
            continue
        value = rw.consts[name]
        for lab in slices:
            mask = rw.mask_of(lab)
            if mask.all():
                continue
            for k, ax in enumerate(lab.axes):
                other = tuple(i for i in range(mask.ndim) if i != k)
                axis_keep = mask.any(axis=other) if other else mask
                value = np.compress(axis_keep, value, axis=ax)
        if value.shape != rw.consts[name].shape:
            init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
            rw.consts[name] = value
    removed = _remove_empty_branches(rw)
    for node in graph.node:
        rule = rule_for(node, rw.opset)
        if rule is not None and rule.rewrite is not None and node.name not in removed:
            rule.rewrite(node, rw)
    if removed:
        original = {i.name for i in loaded.model.graph.initializer}
        _fold_after_removal(rw)
        _shrink_folded_constants(rw, original)
    _toposort(graph)
    del graph.value_info[:]
    try:
        model = infer_shapes(rw.model, check_type=True)
    except Exception as err:
        raise HalpError(f"the rewritten model fails shape inference: {str(err).splitlines()[0][:300]}",
                        stage=STAGE) from None
    if check:
        try:
            check_model(model)
        except Exception as err:
            raise HalpError(f"the rewritten model fails onnx.checker: {str(err).splitlines()[0][:300]}",
                            stage=STAGE) from None
    shapes = tensor_shapes(model)  # static shapes, before a symbolic batch dim comes back
    macs = {n.name: node_macs(n, shapes) for n in model.graph.node}
    model = restore_symbolic_dims(model, loaded)
    widths = {}
    for g in analysis.groups:
        members = analysis.channel_group == g.id
        widths[g.id] = (g.size, int(kept[members].sum()))
    return RewriteResult(model=model, kept=kept, widths=widths,
                         params=(model_params(loaded.model), model_params(model)),
                         macs=(analysis.total_macs, int(sum(macs.values()))), node_macs=macs)


def restore_symbolic_dims(model: onnx.ModelProto, loaded: LoadedModel) -> onnx.ModelProto:
    """Give back the inputs' symbolic dims (e.g. a dynamic batch) that ``--input-shape`` fixed.

    Kept only if the model still runs with another value of those dims (no shape was baked in).
    """
    symbolic = {name: dims for name, dims in loaded.original_inputs.items()
                if any(not isinstance(d, int) or d <= 0 for d in dims)}
    if not symbolic:
        return model
    relaxed = onnx.ModelProto()
    relaxed.CopyFrom(model)
    for vi in relaxed.graph.input:
        if vi.name in symbolic:
            for d, orig in zip(vi.type.tensor_type.shape.dim, symbolic[vi.name]):
                if not isinstance(orig, int) or orig <= 0:
                    d.Clear()
                    d.dim_param = str(orig) if orig not in ("?", None) else f"{vi.name}_dim"
    for vi in relaxed.graph.output:
        vi.type.tensor_type.ClearField("shape")
    del relaxed.graph.value_info[:]
    try:
        relaxed = infer_shapes(relaxed)
        from .verify import random_inputs, session

        feeds = random_inputs(model, np.random.default_rng(0))
        for vi in relaxed.graph.input:
            if vi.name in symbolic and vi.name in feeds:
                shape = [2 if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
                feeds[vi.name] = np.resize(feeds[vi.name], shape)
        session(relaxed).run(None, feeds)
    except Exception:  # a dim was baked into a constant: keep the static model
        return model
    return relaxed


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker with full_check; a model over 2 GiB is checked from a temporary external-data file."""
    if weight_bytes(model) < PROTOBUF_LIMIT:
        onnx.checker.check_model(model, full_check=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        save_external(model, path, "model.onnx.data")
        onnx.checker.check_model(str(path), full_check=True)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, data_name: str | None = None,
               data_path: str | os.PathLike | None = None, atomic: bool = True) -> Path:
    """Write ``model`` to ``path``. Over the protobuf limit its weights go to one external-data file,
    which the model names ``data_name`` (default ``<file name>.data``) and which is written to
    ``data_path`` (default: ``data_name`` beside ``path``; it must be in the same folder).

    ``atomic``: stage both in hidden temporary files of the same folder (``.<name>.halp-tmp-<pid>-<hex>``,
    the pattern :mod:`halp_onnx.cli_io` cleans up after a killed run), then rename: the data file
    first, the model last. ``atomic=False`` writes straight to ``path`` and ``data_path`` (the caller
    staged them, e.g. :class:`halp_onnx.cli_io.OutputPlan`)."""
    import secrets

    path = Path(path)
    data_name = data_name or f"{path.name}.data"
    data_file = Path(data_path) if data_path is not None else path.parent / data_name
    if not atomic:
        if weight_bytes(model) > PROTOBUF_LIMIT:
            save_external(model, path, data_file.name)
            if data_file.name != data_name:
                _relocate_external(str(path), data_name)
        else:
            onnx.save_model(model, str(path))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    def temp(dest: Path) -> Path:
        return dest.with_name(f".{dest.name}.halp-tmp-{os.getpid()}-{secrets.token_hex(4)}")

    tmp, data_tmp = temp(path), temp(data_file)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the permissions of a normal file
        save_model(model, tmp, data_name=data_name, data_path=data_tmp, atomic=False)
        if data_tmp.exists():
            os.replace(data_tmp, data_file)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, data_tmp):
            leftover.unlink(missing_ok=True)
    return path


def _relocate_external(model_path: str, data_name: str) -> None:
    model = onnx.load(model_path, load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = data_name
    onnx.save_model(model, model_path)
