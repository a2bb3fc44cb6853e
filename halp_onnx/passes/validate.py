"""Checks of a model before the load pass computes anything with it.

Each check refuses a bad input with one :class:`~halp_onnx.errors.HalpError` line naming the file and
the tensor, node, attribute or input at fault, before shape inference, constant folding or
verification could crash on it or allocate for it:

* tensors: a known data type, non-negative dims, data of exactly the size dims x type need
  (``raw_data`` or the typed field), no segments; sparse tensors with indices in range;
* the graph: unique input, initializer and node-output names, no node writing a graph input, outputs
  listed once;
* nodes: a domain the model imports, an op ONNX defines (default domain), attributes the op has with
  the type its schema gives, the inputs and outputs it requires; Conv / ConvTranspose / Gemm /
  BatchNormalization attributes and weight shapes consistent (the ops the channel analysis reads);
* memory: the bytes the declared or inferred shapes need (largest tensor, all inputs together, all
  weights) against a budget, a share of physical memory unless ``HALP_ONNX_MEMORY_BUDGET`` says.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator

import onnx
from onnx import TensorProto

from ..errors import HalpError

STAGE = "load"
MEMORY_ENV = "HALP_ONNX_MEMORY_BUDGET"
MEMORY_SHARE = 0.5  # of physical memory, when the environment does not say

# bits per element of the data types a tensor may hold here (STRING: no fixed size)
DTYPE_BITS: dict[int, int | None] = {
    TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16,
    TensorProto.INT16: 16, TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.STRING: None,
    TensorProto.BOOL: 8, TensorProto.FLOAT16: 16, TensorProto.DOUBLE: 64, TensorProto.UINT32: 32,
    TensorProto.UINT64: 64, TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128, TensorProto.BFLOAT16: 16,
}
for _name, _bits in (("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8), ("FLOAT8E5M2FNUZ", 8),
                     ("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("FLOAT8E8M0", 8)):
    if hasattr(TensorProto, _name):  # newer onnx releases only
        DTYPE_BITS[getattr(TensorProto, _name)] = _bits

# the typed field holding a tensor's values when it has no raw_data, and values per element
_TYPED_FIELD: dict[int, tuple[str, int]] = {
    TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1), TensorProto.STRING: ("string_data", 1),
}


def dtype_name(dtype: int) -> str:
    try:
        return TensorProto.DataType.Name(dtype).lower()
    except ValueError:
        return f"data type {dtype}"


def elem_bytes(dtype: int) -> float:
    """Bytes per element of ``dtype`` (4-bit types: 0.5); 8 for strings and unknown types (an estimate)."""
    bits = DTYPE_BITS.get(dtype)
    return bits / 8 if bits else 8.0


# ---------------------------------------------------------------------------------------- tensors
def iter_tensors(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """Every TensorProto of a model (initializers, sparse tensors' parts, node attributes, subgraphs,
    functions), with a description for messages."""
    yield from _graph_tensors(model.graph)
    for fn in model.functions:
        for node in fn.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    for t in graph.initializer:
        yield t, f"initializer '{t.name}'"
    for sp in graph.sparse_initializer:
        yield sp.values, f"values of sparse initializer '{sp.values.name}'"
        yield sp.indices, f"indices of sparse initializer '{sp.values.name}'"
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    for attr in node.attribute:
        where = f"attribute '{attr.name}' of node '{node.name}'"
        if attr.HasField("t"):
            yield attr.t, f"the tensor of {where}"
        for t in attr.tensors:
            yield t, f"a tensor of {where}"
        sparse = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors)
        for sp in sparse:
            yield sp.values, f"the sparse values of {where}"
            yield sp.indices, f"the sparse indices of {where}"
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def element_count(dims) -> int:
    return math.prod(int(d) for d in dims)  # Python ints: no int64 overflow on hostile dims


def expected_nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes of ``raw_data`` that the dims and data type need (None for strings)."""
    bits = DTYPE_BITS.get(t.data_type)
    return None if bits is None else (element_count(t.dims) * bits + 7) // 8


def check_tensor_header(t: onnx.TensorProto, what: str, name: str) -> None:
    """A known, supported data type and non-negative dims."""
    if t.data_type not in DTYPE_BITS:
        raise HalpError(f"{name}: {what} has {dtype_name(t.data_type)}, which halp-onnx does not support",
                        stage=STAGE)
    if any(d < 0 for d in t.dims):
        raise HalpError(f"{name}: {what} has negative dims {list(t.dims)}", stage=STAGE)
    if t.HasField("segment"):
        raise HalpError(f"{name}: {what} is a segment of a larger tensor, which halp-onnx does not support",
                        stage=STAGE)


def check_tensor_data(t: onnx.TensorProto, what: str, name: str) -> int:
    """Refuse data of the wrong size for the dims and type; returns the tensor's bytes in memory."""
    check_tensor_header(t, what, name)
    shape = "x".join(str(d) for d in t.dims) or "scalar"
    n = element_count(t.dims)
    if t.data_location == TensorProto.EXTERNAL:
        raise HalpError(f"{name}: {what} keeps its data in an external file; give the model's path "
                        "so the file can be found beside it", stage=STAGE)
    need = expected_nbytes(t)
    if t.raw_data or (need is not None and need == 0 and not _typed_count(t)):
        if need is None:
            raise HalpError(f"{name}: {what} is a string tensor with raw_data", stage=STAGE)
        if len(t.raw_data) != need:
            raise HalpError(f"{name}: {what} has {len(t.raw_data):,} bytes of raw_data, but its shape {shape} "
                            f"of {dtype_name(t.data_type)} needs {need:,} (truncated or corrupt weights?)",
                            stage=STAGE)
        return need
    field, per = _TYPED_FIELD.get(t.data_type, ("int32_data", 1))
    have = len(getattr(t, field))
    bits = DTYPE_BITS[t.data_type]
    # sub-byte types pack their elements into bytes, one packed byte per int32_data value
    want = (n * bits + 7) // 8 if field == "int32_data" and bits is not None and bits < 8 else n * per
    if have != want:
        if have == 0:
            raise HalpError(f"{name}: {what} (shape {shape}, {dtype_name(t.data_type)}) has no data", stage=STAGE)
        raise HalpError(f"{name}: {what} has {have:,} values in {field}, but its shape {shape} needs {want:,}",
                        stage=STAGE)
    if field == "string_data":
        return sum(len(s) for s in t.string_data)
    return need or 0


def _typed_count(t: onnx.TensorProto) -> int:
    return sum(len(getattr(t, f)) for f in ("float_data", "double_data", "int32_data", "int64_data",
                                             "uint64_data", "string_data"))


def check_tensors(model: onnx.ModelProto, name: str, budget: int) -> None:
    """Every tensor's data matches its dims and type; all weights together fit the memory budget."""
    total = 0
    for t, what in iter_tensors(model):
        total += check_tensor_data(t, what, name)
        if total > budget:
            raise HalpError(f"{name}: not enough memory for the model's weights: {what} brings them to "
                            f"{_gib(total)} (memory budget {_gib(budget)}; set {MEMORY_ENV} in bytes to change it)",
                            stage=STAGE)


def densify_sparse(model: onnx.ModelProto, name: str, budget: int) -> None:
    """Sparse initializers become dense initializers of the same name (checked indices), so every later
    pass sees one representation of constants."""
    graph = model.graph
    if not graph.sparse_initializer:
        return
    import numpy as np
    from onnx import numpy_helper

    for sp in graph.sparse_initializer:
        what = f"sparse initializer '{sp.values.name}'"
        dims = list(sp.dims)
        if any(d < 0 for d in dims):
            raise HalpError(f"{name}: {what} has negative dims {dims}", stage=STAGE)
        n = element_count(dims)
        if n * elem_bytes(sp.values.data_type) > budget:
            raise HalpError(f"{name}: not enough memory for {what}: dense it needs "
                            f"{_gib(n * elem_bytes(sp.values.data_type))} (memory budget {_gib(budget)})", stage=STAGE)
        values = numpy_helper.to_array(sp.values).reshape(-1)
        indices = numpy_helper.to_array(sp.indices).astype(np.int64)
        if indices.ndim == 2 and indices.shape[1] == len(dims) and len(dims) > 1:
            if ((indices < 0) | (indices >= np.array(dims, dtype=np.int64))).any():
                raise HalpError(f"{name}: {what} has indices outside its shape {dims}", stage=STAGE)
            flat = np.ravel_multi_index(tuple(indices.T), dims) if n else indices[:, 0]
        else:
            flat = indices.reshape(-1)
        if flat.size != values.size:
            raise HalpError(f"{name}: {what} has {values.size} values but {flat.size} indices", stage=STAGE)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise HalpError(f"{name}: {what} has an index outside its {n} elements (shape {dims})", stage=STAGE)
        dense = np.zeros(n, dtype=values.dtype)
        dense[flat] = values
        graph.initializer.append(numpy_helper.from_array(dense.reshape(dims), sp.values.name))
    del graph.sparse_initializer[:]


# ---------------------------------------------------------------------------------------- the graph
def check_names(model: onnx.ModelProto, name: str) -> None:
    """Unique inputs, initializers and node outputs; no node writes a graph input; outputs listed once."""
    graph = model.graph
    if not graph.output:
        raise HalpError(f"{name}: the graph has no outputs", stage=STAGE)
    _unique([i.name for i in graph.input], "graph input", name)
    _unique([i.name for i in graph.initializer], "initializer", name)
    _unique([o.name for o in graph.output], "graph output", name)
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    producer: dict[str, str] = {}
    for node in graph.node:
        for out in node.output:
            if not out:
                continue
            if out in producer:
                raise HalpError(f"{name}: tensor '{out}' is produced twice, by node '{producer[out]}' and node "
                                f"'{node.name}' (the graph must assign every tensor once)", stage=STAGE)
            if out in defined:
                raise HalpError(f"{name}: node '{node.name}' ({node.op_type}) writes '{out}', which is already a "
                                "graph input or initializer", stage=STAGE)
            producer[out] = node.name


def _unique(names: list[str], kind: str, name: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise HalpError(f"{name}: {kind} '{n}' is listed twice", stage=STAGE)
        seen.add(n)


# ---------------------------------------------------------------------------------------- nodes
_ATTR_KIND: dict[int, str] = {
    onnx.AttributeProto.FLOAT: "a float", onnx.AttributeProto.INT: "an int", onnx.AttributeProto.STRING: "a string",
    onnx.AttributeProto.TENSOR: "a tensor", onnx.AttributeProto.GRAPH: "a graph",
    onnx.AttributeProto.SPARSE_TENSOR: "a sparse tensor", onnx.AttributeProto.TYPE_PROTO: "a type",
    onnx.AttributeProto.FLOATS: "a list of floats", onnx.AttributeProto.INTS: "a list of ints",
    onnx.AttributeProto.STRINGS: "a list of strings", onnx.AttributeProto.TENSORS: "a list of tensors",
    onnx.AttributeProto.GRAPHS: "a list of graphs", onnx.AttributeProto.SPARSE_TENSORS: "a list of sparse tensors",
    onnx.AttributeProto.TYPE_PROTOS: "a list of types",
}


def _kind(attr_type: int) -> str:
    return _ATTR_KIND.get(attr_type, "an attribute of no type")


def _imports(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if imp.domain == "ai.onnx" else imp.domain): imp.version for imp in model.opset_import}


def check_nodes(model: onnx.ModelProto, name: str) -> None:
    """Every node: an imported domain, an op ONNX defines (default and ai.onnx.ml domains), attributes
    of the schema's names and types, the inputs and outputs the op requires (subgraphs included)."""
    imports = _imports(model)
    functions = {(f.domain, f.name) for f in model.functions}
    _check_graph_nodes(model.graph, name, imports, functions)


def _check_graph_nodes(graph: onnx.GraphProto, name: str, imports: dict[str, int],
                       functions: set[tuple[str, str]]) -> None:
    for node in graph.node:
        _check_node(node, name, imports, functions)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _check_graph_nodes(sub, name, imports, functions)


def _check_node(node: onnx.NodeProto, name: str, imports: dict[str, int], functions: set[tuple[str, str]]) -> None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    label = f"node '{node.name}' ({node.domain + '::' if node.domain else ''}{node.op_type})"
    if domain not in imports:
        raise HalpError(f"{name}: {label} uses domain '{node.domain}', which the model does not import "
                        "(no opset_import entry)", stage=STAGE)
    if (node.domain, node.op_type) in functions:
        return
    try:
        schema = onnx.defs.get_schema(node.op_type, imports[domain], domain)
    except Exception:  # onnx.defs.SchemaError: no such op at this opset
        if domain in ("", "ai.onnx.ml"):
            raise HalpError(f"{name}: {label} is not an ONNX op at opset {imports[domain]}", stage=STAGE) from None
        return  # a custom op: the channel analysis freezes what it touches
    if schema.deprecated:
        raise HalpError(f"{name}: {label} is deprecated at opset {imports[domain]} (onnxruntime does not run it)",
                        stage=STAGE)
    attrs = schema.attributes
    seen: set[str] = set()
    for attr in node.attribute:
        if attr.name in seen:
            raise HalpError(f"{name}: {label} has attribute '{attr.name}' twice", stage=STAGE)
        seen.add(attr.name)
        if attr.ref_attr_name:
            continue  # inside a function body: bound at the call
        spec = attrs.get(attr.name)
        if spec is None:
            raise HalpError(f"{name}: {label} has attribute '{attr.name}', which {node.op_type} "
                            f"(opset {imports[domain]}) does not have", stage=STAGE)
        kind: Any = spec.type  # an OpSchema.AttrType, numbered as AttributeProto.AttributeType
        want = int(kind.value) if hasattr(kind, "value") else int(kind)
        if attr.type != want:
            raise HalpError(f"{name}: {label}: attribute '{attr.name}' must be {_kind(want)}, "
                            f"not {_kind(attr.type)}", stage=STAGE)
    for key, spec in attrs.items():
        if spec.required and key not in seen:
            raise HalpError(f"{name}: {label} lacks the required attribute '{key}'", stage=STAGE)
    _check_arity(node, schema, label, name)
    check = _OP_ATTRS.get(node.op_type) if domain == "" else None
    if check is not None:
        check(node, label, name)


def _check_arity(node: onnx.NodeProto, schema, label: str, name: str) -> None:
    n_in, n_out = len(node.input), len(node.output)
    if not schema.min_input <= n_in <= schema.max_input:
        raise HalpError(f"{name}: {label} has {n_in} inputs; {node.op_type} takes "
                        f"{_range(schema.min_input, schema.max_input)}", stage=STAGE)
    if not schema.min_output <= n_out <= schema.max_output:
        raise HalpError(f"{name}: {label} has {n_out} outputs; {node.op_type} makes "
                        f"{_range(schema.min_output, schema.max_output)}", stage=STAGE)
    single = onnx.defs.OpSchema.FormalParameterOption.Single
    for idx, formal in enumerate(schema.inputs):
        if formal.option == single and idx < n_in and not node.input[idx]:
            raise HalpError(f"{name}: {label} leaves its required input {idx} ({formal.name}) empty", stage=STAGE)
    for idx, formal in enumerate(schema.outputs):
        if formal.option == single and idx < n_out and not node.output[idx]:
            raise HalpError(f"{name}: {label} leaves its required output {idx} ({formal.name}) unnamed", stage=STAGE)


def _range(lo: int, hi: int) -> str:
    if hi >= 2 ** 31 - 1:
        return f"at least {lo}"
    return f"{lo}" if lo == hi else f"{lo} to {hi}"


def _attr(node: onnx.NodeProto, key: str):
    for a in node.attribute:
        if a.name == key:
            return onnx.helper.get_attribute_value(a)
    return None


def _check_conv_attrs(node: onnx.NodeProto, label: str, name: str) -> None:
    group = _attr(node, "group")
    if group is not None and group < 1:
        raise HalpError(f"{name}: {label}: attribute 'group' is {group}; it must be at least 1", stage=STAGE)
    kernel = _attr(node, "kernel_shape")
    spatial = len(kernel) if kernel is not None else None
    for key, factor, least in (("kernel_shape", 1, 1), ("strides", 1, 1), ("dilations", 1, 1), ("pads", 2, 0),
                               ("output_padding", 1, 0)):
        value = _attr(node, key)
        if value is None:
            continue
        if any(v < least for v in value):
            raise HalpError(f"{name}: {label}: attribute '{key}' {list(value)} has values below {least}", stage=STAGE)
        if spatial is None:
            spatial = len(value) // factor
        if len(value) != spatial * factor or not value:
            basis = "the weight's kernel" if kernel is None else f"'kernel_shape' {list(kernel)}"
            raise HalpError(f"{name}: {label}: attribute '{key}' has {len(value)} values, but {basis} has "
                            f"{spatial} spatial dims (expected {spatial * factor})", stage=STAGE)


_OP_ATTRS = {"Conv": _check_conv_attrs, "ConvTranspose": _check_conv_attrs}


def check_node_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...] | None], name: str) -> None:
    """After shape inference: Conv / ConvTranspose / Gemm / BatchNormalization weights agree with their
    inputs and attributes (what the channel analysis and the rewrite rely on)."""
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        check = _SHAPE_CHECKS.get(node.op_type)
        if check is None:
            continue
        ins = [shapes.get(i) if i else None for i in node.input]
        label = f"node '{node.name}' ({node.op_type})"
        problem = check(node, ins)
        if problem:
            raise HalpError(f"{name}: {label}: {problem}", stage=STAGE)


def _fmt(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _conv_problem(node: onnx.NodeProto, ins: list) -> str:
    x, w = ins[0], ins[1] if len(ins) > 1 else None
    if w is None:
        return ""
    group = _attr(node, "group") or 1
    if len(w) < 3:
        return f"weight '{node.input[1]}' has shape {_fmt(w)}; a convolution weight has rank 3 or more"
    if x is not None and len(x) != len(w):
        return f"input '{node.input[0]}' has rank {len(x)} but the weight '{node.input[1]}' rank {len(w)}"
    kernel = _attr(node, "kernel_shape")
    if kernel is not None and list(kernel) != list(w[2:]):
        return f"attribute 'kernel_shape' {list(kernel)} does not match the weight's kernel {list(w[2:])}"
    if node.op_type == "Conv":
        if w[0] % group:
            return f"attribute 'group' {group} does not divide the {w[0]} output channels"
        if x is not None and x[1] != w[1] * group:
            return (f"input '{node.input[0]}' has {x[1]} channels, the weight '{node.input[1]}' "
                    f"({_fmt(w)}, group {group}) expects {w[1] * group}")
        out_c = w[0]
    else:
        if w[0] % group:
            return f"attribute 'group' {group} does not divide the {w[0]} input channels"
        if x is not None and x[1] != w[0]:
            return f"input '{node.input[0]}' has {x[1]} channels, the weight '{node.input[1]}' expects {w[0]}"
        out_c = w[1] * group
    b = ins[2] if len(ins) > 2 else None
    if b is not None and list(b) != [out_c]:
        return f"bias '{node.input[2]}' has shape {_fmt(b)}, expected {out_c}"
    return ""


def _gemm_problem(node: onnx.NodeProto, ins: list) -> str:
    a, b = ins[0], ins[1] if len(ins) > 1 else None
    if a is None or b is None:
        return ""
    if len(a) != 2 or len(b) != 2:
        return f"inputs have shapes {_fmt(a)} and {_fmt(b)}; Gemm takes matrices"
    k_a = a[0] if _attr(node, "transA") else a[1]
    k_b = b[1] if _attr(node, "transB") else b[0]
    if k_a != k_b:
        return f"inner dimensions differ: {k_a} of '{node.input[0]}' vs {k_b} of '{node.input[1]}'"
    return ""


def _bn_problem(node: onnx.NodeProto, ins: list) -> str:
    x = ins[0]
    if x is None or len(x) < 2:
        return ""
    for idx, p in enumerate(ins[1:5], start=1):
        if p is not None and list(p) != [x[1]]:
            return f"parameter '{node.input[idx]}' has shape {_fmt(p)}, expected {x[1]} (the input's channels)"
    return ""


_SHAPE_CHECKS = {"Conv": _conv_problem, "ConvTranspose": _conv_problem, "Gemm": _gemm_problem,
                 "BatchNormalization": _bn_problem}


# ---------------------------------------------------------------------------------------- memory
def memory_budget() -> int:
    """Bytes one model may need: ``HALP_ONNX_MEMORY_BUDGET`` (bytes, or with a K/M/G/T suffix), else a
    quarter of physical memory (or of the address-space limit, when one is set)."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
        scale = units.get(text[-1].lower(), 1)
        try:
            value = float(text[:-1] if scale > 1 else text) * scale
            if not math.isfinite(value) or value <= 0:
                raise ValueError
        except ValueError:
            raise HalpError(f"{MEMORY_ENV}={text!r}: expected a positive number of bytes, e.g. 8000000000 or 8G",
                            stage=STAGE) from None
        return int(value)
    total = _physical_memory()
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
            total = min(total, soft)
    except (ImportError, OSError, ValueError):
        pass
    return int(total * MEMORY_SHARE)


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 16 << 30  # no sysconf (Windows): assume 16 GiB


def _gib(n: float) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):,.1f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):,.1f} MiB"
    return f"{int(n):,} bytes"


def _value_bytes(vi: onnx.ValueInfoProto) -> tuple[int, str] | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = vi.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    shape = [d.dim_value for d in dims]
    return int(element_count(shape) * elem_bytes(vi.type.tensor_type.elem_type)), _fmt(shape)


def check_memory(model: onnx.ModelProto, name: str, budget: int, *, inputs: set[str]) -> None:
    """Refuse shapes (declared or inferred) whose tensors would not fit the budget: the largest one, and
    the graph inputs together (what verification feeds at once)."""
    graph = model.graph
    total_inputs = 0
    for vi in graph.input:
        got = _value_bytes(vi)
        if got is None or vi.name not in inputs:
            continue
        size, shape = got
        total_inputs += size
        if size > budget or total_inputs > budget:
            raise HalpError(f"{name}: not enough memory for input '{vi.name}' of shape {shape}: it needs "
                            f"{_gib(size)}{'' if size > budget else f' ({_gib(total_inputs)} with the other inputs)'}"
                            f" (memory budget {_gib(budget)}; set {MEMORY_ENV} in bytes to change it)", stage=STAGE)
    producer = {o: n.name for n in graph.node for o in n.output}
    for vi in list(graph.value_info) + list(graph.output):
        got = _value_bytes(vi)
        if got is not None and got[0] > budget:
            where = f" (output of node '{producer[vi.name]}')" if vi.name in producer else ""
            raise HalpError(f"{name}: not enough memory for tensor '{vi.name}'{where} of shape {got[1]}: it needs "
                            f"{_gib(got[0])} (memory budget {_gib(budget)}; set {MEMORY_ENV} in bytes to change it)",
                            stage=STAGE)
