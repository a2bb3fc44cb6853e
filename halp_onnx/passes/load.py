"""Pass ``load``: read an ONNX file, check it, make its shapes static and fold constants.

The result is a :class:`LoadedModel` holding a normalised copy; the user's file and object are
never modified. The file and its external data are read by :mod:`.external_data` (regular files,
bounded reads, external locations inside the model's folder); :mod:`.validate` refuses malformed
tensors, names, nodes and attributes, and shapes over the memory budget, before inference or folding
allocates anything. Every refusal is one :class:`~halp_onnx.errors.HalpError` line.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import onnx

from ..errors import HalpError
from . import validate
from .external_data import read_model_file, resolve_external_data

STAGE = "load"
MIN_OPSET, MAX_OPSET = 9, 21


@dataclass(frozen=True)
class LoadedModel:
    """A checked, shape-inferred, constant-folded copy of a model, ready for analysis."""

    model: onnx.ModelProto
    source: str
    opset: int
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # the user's graph inputs as they were (shape with symbolic dims); used to report changes
    original_inputs: dict[str, tuple] = field(default_factory=dict)

    @functools.cached_property
    def constants(self) -> dict[str, np.ndarray]:
        """Initializer values (computed once; treat as read-only)."""
        return constant_values(self.model)

    @functools.cached_property
    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        """Static shape of every value (computed once)."""
        return tensor_shapes(self.model)

    def to_dict(self) -> dict:
        return {"source": self.source, "opset": self.opset,
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()}}


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME:1x3x224x224`` options."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise HalpError(f"--input-shape {spec!r}: expected NAME:DxDxD with positive integers, "
                            "e.g. input:1x3x224x224", stage=STAGE) from None
        shapes[name] = shape
    return shapes


def read_model(path: str | os.PathLike, *, memory_budget: int | None = None) -> onnx.ModelProto:
    """Read a model file and its external data, checked (:mod:`.external_data`): a regular file, bounded
    reads, every external location inside the model's folder, every tensor's data of the right size."""
    path = Path(path)
    budget = validate.memory_budget() if memory_budget is None else memory_budget
    model = read_model_file(path)
    if not model.graph.node and not model.graph.output:
        raise HalpError(f"{path}: not an ONNX model (no graph; truncated or another file type?)", stage=STAGE)
    resolve_external_data(model, path.parent, str(path), budget)
    return model


def load(source: str | os.PathLike | onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
         *, fold: bool = True, memory_budget: int | None = None) -> LoadedModel:
    """Load and normalise a model: check, static shapes, shape inference, constant folding.

    Every check that can refuse the model runs before anything is allocated for its shapes: file and
    external data, tensors, names, nodes and attributes, structure, the memory the shapes need
    (``memory_budget`` bytes, default :func:`.validate.memory_budget`)."""
    budget = validate.memory_budget() if memory_budget is None else memory_budget
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        name = model.graph.name or "<model>"
        if not model.graph.node and not model.graph.output:
            raise HalpError(f"{name}: the model has no graph", stage=STAGE)
        resolve_external_data(model, None, name, budget)
    else:
        name = str(source)
        model = read_model(source, memory_budget=budget)
    _check_ir_version(model, name)
    opset = _default_opset(model, name)
    validate.check_tensors(model, name, budget)
    validate.densify_sparse(model, name, budget)
    _densify_sparse_constants(model, name, budget)
    _name_nodes(model)
    validate.check_names(model, name)
    validate.check_nodes(model, name)
    _check_structure(model, name)
    original_inputs = {i.name: _dims(i) for i in _real_inputs(model)}
    real_inputs = set(original_inputs)
    validate.check_memory(model, name, budget, inputs=real_inputs)  # what the model declares
    shapes = _make_static(model, name, input_shapes or {})
    validate.check_memory(model, name, budget, inputs=real_inputs)  # with --input-shape applied
    model = _infer(model, name, check_type=True)
    validate.check_memory(model, name, budget, inputs=real_inputs)  # every inferred value, before folding
    validate.check_node_shapes(model, tensor_shapes(model), name)
    if fold:
        model = _fold_constants(model, name)
    _unshare_uniform_constants(model)
    _identity_gathers_to_reshapes(model)
    return LoadedModel(model=model, source=name, opset=opset, input_shapes=shapes, original_inputs=original_inputs)


def _unshare_uniform_constants(model: onnx.ModelProto, max_elems: int = 1 << 16) -> int:
    """Give each reader its own copy of a float initializer whose elements are all equal (an exporter's
    one array of ones or zeros behind every normalisation's scale or bias): it is not a shared weight,
    and sharing it would couple the channels of every layer that reads it. Returns the copies made."""
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for k, i in enumerate(node.input):
            readers.setdefault(i, []).append((node, k))
    made = 0
    taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    for init in list(model.graph.initializer):
        uses = readers.get(init.name, [])
        if len(uses) < 2 or init.data_type not in _FLOAT_TYPES or not 1 < _elems(init) <= max_elems:
            continue
        arr = onnx.numpy_helper.to_array(init)
        if not (arr == arr.flat[0]).all():
            continue
        for n_copy, (node, k) in enumerate(uses[1:], 1):
            new = f"{init.name}_copy{n_copy}"
            while new in taken:
                new += "_"
            taken.add(new)
            model.graph.initializer.append(onnx.numpy_helper.from_array(arr, new))
            node.input[k] = new
            made += 1
    return made


def _identity_gathers_to_reshapes(model: onnx.ModelProto) -> int:
    """A Gather that picks every element of a 1-D tensor in order (the dynamo exporter's ``as_strided``
    after a flatten: ``Gather(x.reshape(-1), arange(n).reshape(shape))``) is a Reshape to the indices'
    shape; written as one, its channels can be followed. Returns the nodes replaced."""
    inits = {t.name: t for t in model.graph.initializer}
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(model.graph.value_info) + list(model.graph.input)}
    done = 0
    for node in model.graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        data, idx = shapes.get(node.input[0]), inits.get(node.input[1])
        if axis != 0 or idx is None or data is None or len(data) != 1 or data[0] <= 0:
            continue
        values = onnx.numpy_helper.to_array(idx)
        if values.size != data[0] or not np.array_equal(values.reshape(-1), np.arange(data[0])):
            continue
        shape_name = f"{node.name or node.output[0]}_as_reshape"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(values.shape, np.int64), shape_name))
        node.op_type = "Reshape"
        node.input[1] = shape_name
        del node.attribute[:]
        done += 1
    return done


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def _elems(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return n


def _check_ir_version(model: onnx.ModelProto, name: str) -> None:
    if model.ir_version < 3:
        raise HalpError(f"{name}: the model declares IR version {model.ir_version}; ONNX files have 3 or newer "
                        "(a truncated or hand-made file?)", stage=STAGE)
    if model.ir_version > onnx.IR_VERSION:
        raise HalpError(f"{name}: IR version {model.ir_version} is newer than this onnx reads ({onnx.IR_VERSION}); "
                        "upgrade onnx or export with an older IR version", stage=STAGE)


def _densify_sparse_constants(model: onnx.ModelProto, name: str, budget: int) -> None:
    """Constant nodes holding a sparse tensor hold it dense (one representation of constants)."""
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "sparse_value" and attr.HasField("sparse_tensor"):
                holder = onnx.ModelProto()
                holder.graph.sparse_initializer.add().CopyFrom(attr.sparse_tensor)
                validate.densify_sparse(holder, f"{name}: node '{node.name}'", budget)
                dense = holder.graph.initializer[0]
                dense.name = ""
                replacement = onnx.helper.make_attribute("value", dense)
                attr.CopyFrom(replacement)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else ""


def _default_opset(model: onnx.ModelProto, name: str) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if not MIN_OPSET <= imp.version <= MAX_OPSET:
                raise HalpError(f"{name}: opset {imp.version} is not supported (supported: {MIN_OPSET} to {MAX_OPSET})",
                                stage=STAGE)
            return imp.version
    raise HalpError(f"{name}: the model imports no default-domain opset", stage=STAGE)


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dims(vi: onnx.ValueInfoProto) -> tuple:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return ()
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in vi.type.tensor_type.shape.dim)


def _check_structure(model: onnx.ModelProto, name: str) -> None:
    """Every input defined, outputs produced, no cycle; nodes put in topological order."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    available |= {i.values.name for i in graph.sparse_initializer}
    producer = {out: node.name for node in graph.node for out in node.output if out}
    dag = nx.DiGraph()
    position = {node.name: idx for idx, node in enumerate(graph.node)}
    for node in graph.node:
        dag.add_node(node.name)
        for inp in node.input:
            if inp in producer:
                dag.add_edge(producer[inp], node.name)
            elif inp and inp not in available:
                raise HalpError(f"{name}: node '{node.name}' ({node.op_type}) reads '{inp}', which is no graph input, "
                                "initializer or node output (missing initializer?)", stage=STAGE)
    for out in graph.output:
        if out.name not in producer and out.name not in available:
            raise HalpError(f"{name}: graph output '{out.name}' is produced by no node", stage=STAGE)
    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([e[0] for e in cycle] + [cycle[-1][1]])
        raise HalpError(f"{name}: the graph has a cycle: {path}", stage=STAGE)
    order = list(nx.lexicographical_topological_sort(dag, key=position.__getitem__))
    if order != [n.name for n in graph.node]:
        by_name = {n.name: n for n in graph.node}
        nodes = [onnx.NodeProto() for _ in order]
        for copy, key in zip(nodes, order):
            copy.CopyFrom(by_name[key])
        del graph.node[:]
        graph.node.extend(nodes)


def _make_static(model: onnx.ModelProto, name: str, overrides: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Give every real input a static shape: ``overrides`` (``--input-shape``) where given, else the
    declared one; a symbolic leading (batch) dim alone defaults to 1. An override may change a fixed
    leading dim where the graph allows another batch (:func:`batch_pin`); other contradictions refuse."""
    inputs = {i.name: i for i in _real_inputs(model)}
    for key in overrides:
        if key not in inputs:
            raise HalpError(f"--input-shape {key}: the model has no input '{key}' "
                            f"(inputs: {', '.join(inputs) or 'none'})", stage=STAGE)
    static: dict[str, tuple[int, ...]] = {}
    rebatch: dict[str, int] = {}
    for key, vi in inputs.items():
        dims = _dims(vi)
        if key in overrides:
            want = overrides[key]
            if dims and len(dims) != len(want):
                raise HalpError(f"--input-shape {key}: rank {len(want)} given, the model's input has rank {len(dims)}",
                                stage=STAGE)
            clash = [i for i, (have, new) in enumerate(zip(dims, want))
                     if isinstance(have, int) and have > 0 and have != new]
            if clash and (clash != [0] or len(dims) < 2):
                raise HalpError(f"--input-shape {key}: {'x'.join(map(str, want))} contradicts the model's static "
                                f"shape {'x'.join(map(str, dims))}", stage=STAGE)
            if clash:
                rebatch[key] = int(want[0])
            dims = want
        elif _batch_only_dynamic(dims):
            dims = (1, *dims[1:])
        elif not dims or any(not isinstance(d, int) or d <= 0 for d in dims):
            shown = "x".join(str(d) for d in dims) if dims else "unknown"
            raise HalpError(f"{name}: input '{key}' has dynamic shape {shown}; pass --input-shape "
                            f"{key}:{'x'.join(str(d) if isinstance(d, int) and d > 0 else '1' for d in dims) or '1x3x224x224'}",
                            stage=STAGE)
        static[key] = tuple(int(d) for d in dims)
    if rebatch:
        why = batch_pin(model, rebatch)
        if why is not None:
            key = next(iter(rebatch))
            raise HalpError(f"--input-shape {key}: {'x'.join(map(str, static[key]))} changes the model's fixed batch "
                            f"of {_dims(inputs[key])[0]}, which the graph does not allow: {why}", stage=STAGE)
    for key, vi in inputs.items():
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in static[key]:
            shape.dim.add().dim_value = d
    # output shapes are re-derived by inference from the (now static) inputs
    for vi in model.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return static


def _batch_only_dynamic(dims: tuple) -> bool:
    """A leading (batch) dim that is symbolic, every other dim static: the batch defaults to 1."""
    return (len(dims) >= 2 and isinstance(dims[0], str)
            and all(isinstance(d, int) and d > 0 for d in dims[1:]))


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def batch_pin(model: onnx.ModelProto, batches: dict[str, int]) -> str | None:
    """Why the fixed leading (batch) dim of the inputs in ``batches`` cannot be re-declared as the given
    sizes, in one line naming the node; None when the graph allows it.

    A copy with the new batch must pass strict shape inference, and every node that reads a float
    tensor carrying the batch (its leading dim follows the input's) must pass it on: an output that
    led with the old batch must lead with the new one (a Reshape to a constant ``1x...`` does not)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _name_nodes(copy)
    inputs = {i.name: i for i in _real_inputs(copy)}

    def inferred(sizes: dict[str, int], strict: bool = True) -> dict[str, tuple[int | None, ...]]:
        m = onnx.ModelProto()
        m.CopyFrom(copy)
        del m.graph.value_info[:]
        for vi in m.graph.output:
            vi.type.tensor_type.ClearField("shape")
        for vi in m.graph.input:
            if vi.name in sizes:
                vi.type.tensor_type.shape.dim[0].Clear()
                vi.type.tensor_type.shape.dim[0].dim_value = sizes[vi.name]
        m = infer_shapes(m) if strict else onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
        out: dict[str, tuple[int | None, ...]] = {}
        for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
            t = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and t.elem_type in _FLOATS and t.HasField("shape") and t.shape.dim:
                out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        return out

    old = {k: int(_dims(inputs[k])[0]) for k in batches if k in inputs}
    try:
        before = inferred(old)
    except Exception as err:  # onnx raises InferenceError / ValidationError subclasses
        return f"shape inference fails on the model as declared: {_first_line(err)}"
    new = {k: batches[k] for k in old}
    try:
        after = inferred(new)
    except Exception as err:  # the node that pins the batch, where lenient inference still shows it
        try:
            pin = _pinning_node(copy, before, inferred(new, strict=False))
        except Exception:
            pin = None
        return pin or f"shape inference fails with batch {', '.join(map(str, new.values()))}: {_first_line(err)}"
    return _pinning_node(copy, before, after)


def _pinning_node(model: onnx.ModelProto, before: dict, after: dict) -> str | None:
    """The first node that reads a float tensor whose leading dim changed with the batch, and writes one
    that led with the old batch but does not lead with the new one (a Reshape to a constant 1x..., say)."""
    for node in model.graph.node:
        carried = [(before[t][0], after[t][0]) for t in node.input
                   if t in before and t in after and before[t][0] != after[t][0]]
        for b0, b1 in carried:
            for out in node.output:
                if out in before and out in after and before[out][0] == b0 and after[out][0] not in (b1, None):
                    return (f"node '{node.name}' ({node.op_type}) pins the batch: its output '{out}' leads with "
                            f"{after[out][0]} where the batch is {b1}")
    return None


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed (or duplicate-named) nodes a stable unique name; unique names are kept."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.name] = counts.get(node.name, 0) + 1
    used = {name for name, n in counts.items() if name and n == 1}
    for idx, node in enumerate(model.graph.node):
        if node.name and counts[node.name] == 1:
            continue
        base = node.name or f"{node.op_type}_{idx}"
        cand, k = base, 0
        while cand in used:
            k += 1
            cand = f"{base}_{k}"
        node.name = cand
        used.add(cand)


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Turn remaining Constant nodes into initializers of the same name (one representation of constants)."""
    values = constant_values(model)
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] in values:
            model.graph.initializer.append(onnx.numpy_helper.from_array(values[node.output[0]], node.output[0]))
        else:
            keep.append(node)
    if len(keep) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)


PROTOBUF_LIMIT = 1_800_000_000  # a serialised model must stay under 2 GiB


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(i.raw_data) for i in model.graph.initializer)


def save_external(model: onnx.ModelProto, path: str | os.PathLike, location: str) -> None:
    """Save with all weights in one external file ``location`` beside ``path``. onnx's saver moves the
    weights out of the proto it is given, so it gets a copy and the caller's model stays whole."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location)


def infer_shapes(model: onnx.ModelProto, *, check_type: bool = False) -> onnx.ModelProto:
    """onnx shape inference (strict, with data propagation), also for models over 2 GiB: large
    initializers' bytes are set aside while it runs (inference reads only their dims)."""
    if weight_bytes(model) < PROTOBUF_LIMIT:
        return onnx.shape_inference.infer_shapes(model, check_type=check_type, strict_mode=True, data_prop=True)
    parked = {}
    for init in model.graph.initializer:
        if len(init.raw_data) > 1 << 16:
            parked[init.name] = init.raw_data
            init.ClearField("raw_data")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=check_type, strict_mode=True, data_prop=True)
    finally:
        for init in model.graph.initializer:
            if init.name in parked:
                init.raw_data = parked[init.name]
    for init in inferred.graph.initializer:
        if init.name in parked:
            init.raw_data = parked[init.name]
    return inferred


def _infer(model: onnx.ModelProto, name: str, *, check_type: bool = False) -> onnx.ModelProto:
    try:
        return infer_shapes(model, check_type=check_type)
    except Exception as err:  # onnx raises InferenceError / ValidationError subclasses
        raise HalpError(f"{name}: shape inference failed: {_first_line(err)}", stage=STAGE) from None


def _fold_constants(model: onnx.ModelProto, name: str, max_rounds: int = 12) -> onnx.ModelProto:
    """Fold constants and static shape computations; repeated while it still removes nodes (each
    round's shapes let the next fold more, e.g. window-attention index arithmetic)."""
    import onnx_graphsurgeon as gs
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # graphsurgeon folds with onnxruntime: keep its warnings quiet
    for _ in range(max_rounds):
        before = len(model.graph.node)
        graph = gs.import_onnx(model)
        try:
            graph.fold_constants(fold_shapes=True, error_ok=True).cleanup(remove_unused_graph_inputs=False)
        except Exception as err:  # pragma: no cover - graphsurgeon internals
            raise HalpError(f"{name}: constant folding failed: {_first_line(err)}", stage=STAGE) from None
        folded = gs.export_onnx(graph, do_type_check=False)
        folded.ir_version = model.ir_version
        del folded.graph.value_info[:]
        _constants_to_initializers(folded)
        model = _infer(folded, name)
        if len(model.graph.node) >= before:
            break
    return model


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """Static shapes of every value in a shape-inferred model (None where unknown or symbolic)."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
            shapes.setdefault(vi.name, None)
            continue
        dims = t.shape.dim
        shapes[vi.name] = tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims) else None
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs as numpy arrays."""
    values = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                values[node.output[0]] = onnx.numpy_helper.to_array(attr["value"].t)
            elif "value_float" in attr:
                values[node.output[0]] = np.array(attr["value_float"].f, dtype=np.float32)
            elif "value_floats" in attr:
                values[node.output[0]] = np.array(list(attr["value_floats"].floats), dtype=np.float32)
            elif "value_int" in attr:
                values[node.output[0]] = np.array(attr["value_int"].i, dtype=np.int64)
            elif "value_ints" in attr:
                values[node.output[0]] = np.array(list(attr["value_ints"].ints), dtype=np.int64)
    return values
