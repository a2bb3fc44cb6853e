"""Pass ``verify``: prove the rewritten model computes the original minus the removed channels.

Reference = the normalised original with every reading of a removed channel zeroed (a 0/1 mask
multiplied into each input that reduces over channels: convolutions, Gemm, MatMul). Candidate = the
rewritten model. Both run in onnxruntime on fresh random inputs; outputs must agree to ``rtol``
relative to each output's largest magnitude.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import HalpError
from .channel_groups import ChannelAnalysis
from .load import PROTOBUF_LIMIT, LoadedModel, save_external, weight_bytes

STAGE = "verify"

_NP_TYPES: dict[int, type[np.generic]] = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}


@dataclass(frozen=True)
class VerifyResult:
    passed: bool
    max_rel_error: float
    per_output: dict[str, float]
    trials: int
    tolerance: float
    input_sensitive: bool = True  # False: the outputs did not change with the inputs (a weak check)
    candidate_input_sensitive: bool = True  # False: the rewritten model's outputs ignore its inputs

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def masked_reference(loaded: LoadedModel, analysis: ChannelAnalysis, kept: np.ndarray) -> onnx.ModelProto:
    """The original model computing what the pruned model computes, at the original widths.

    * Every consumer's reading of a removed channel is zeroed: a 0/1 mask multiplied into each input
      that reduces over channels (convolutions, Gemm, MatMul).
    * Every normalisation over channels runs over the kept channels only, as in the pruned model.
      Pruning a LayerNormalization's channels changes its function: on the kept set ``K`` it computes
      ``y_c = (x_c - mean_K(x)) / sqrt(var_K(x) + eps) * scale_c + bias_c`` with mean and variance over
      the ``|K|`` kept channels instead of all ``C``. The reference replaces such a node by
      ``Gather`` (kept channels of x, scale and bias) -> the same LayerNormalization ->
      ``Concat`` with a zero slice + ``Gather`` back to full width: kept channels in place, zeros at
      the removed ones (which nothing but masked consumers reads). A reduction over channel axes (a
      normalisation's mean written out with ReduceMean / ReduceSum..., ConvNeXt-V2's mean over
      channels) reads the ``Gather`` of its kept channels: ``mean_K`` instead of ``mean_C``.
      Normalisations whose groups are removed whole (GroupNormalization, InstanceNormalization)
      keep their function and are left as they are.
    """
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    types = _elem_types(model)
    shapes = loaded.shapes
    nodes = {n.name: n for n in model.graph.node}
    insert_before: dict[str, list[onnx.NodeProto]] = {}
    insert_after: dict[str, list[onnx.NodeProto]] = {}
    for k, consumer in enumerate(analysis.consumers):
        lab = analysis.labels.get(consumer.tensor)
        if lab is None:
            continue
        mask = np.where(lab.ids >= 0, kept[np.maximum(lab.ids, 0)], True)
        if mask.all():
            continue
        shape = shapes[consumer.tensor]
        if shape is None:  # same exception type as len() of the unknown shape would raise
            raise TypeError(f"tensor {consumer.tensor!r} read by {consumer.node} has no static shape")
        rank = len(shape)
        view = [1] * rank
        for i, ax in enumerate(lab.axes):
            view[ax] = mask.shape[i]
        dtype = _NP_TYPES.get(types.get(consumer.tensor, onnx.TensorProto.FLOAT), np.float32)
        mask_name = f"halp_mask_{k}"
        masked_name = f"{consumer.tensor}__halp_masked_{k}"
        model.graph.initializer.append(onnx.numpy_helper.from_array(mask.reshape(view).astype(dtype), mask_name))
        mul = onnx.helper.make_node("Mul", [consumer.tensor, mask_name], [masked_name], name=f"halp_mask_mul_{k}")
        insert_before.setdefault(consumer.node, []).append(mul)
        nodes[consumer.node].input[consumer.input_index] = masked_name
    _normalise_kept(model, loaded, analysis, kept, types, insert_before, insert_after)
    if insert_before or insert_after:
        ordered = []
        for node in model.graph.node:
            ordered.extend(insert_before.get(node.name, []))
            ordered.append(node)
            ordered.extend(insert_after.get(node.name, []))
        del model.graph.node[:]
        model.graph.node.extend(ordered)
    return model


def _kept_positions(analysis: ChannelAnalysis, kept: np.ndarray, tensor: str, axes: set[int]) -> dict[int, np.ndarray]:
    """Per channel axis of ``tensor`` among ``axes`` that loses positions: the kept positions."""
    lab = analysis.labels.get(tensor)
    if lab is None:
        return {}
    mask = np.where(lab.ids >= 0, kept[np.maximum(lab.ids, 0)], True)
    out = {}
    for k, ax in enumerate(lab.axes):
        other = tuple(i for i in range(mask.ndim) if i != k)
        along = mask.any(axis=other) if other else mask
        if ax in axes and not along.all():
            out[ax] = np.nonzero(along)[0].astype(np.int64)
    return out


def _reduced_axes(node: onnx.NodeProto, loaded: LoadedModel, rank: int) -> set[int]:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = loaded.constants.get(node.input[1])
    if axes is None or not len(axes):
        return set() if attrs.get("noop_with_empty_axes", 0) else set(range(rank))
    return {int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1)}


def _normalise_kept(model: onnx.ModelProto, loaded: LoadedModel, analysis: ChannelAnalysis, kept: np.ndarray,
                    types: dict[str, int], before: dict[str, list[onnx.NodeProto]],
                    after: dict[str, list[onnx.NodeProto]]) -> None:
    """Normalisations and reductions over channels run over the kept channels (see masked_reference)."""
    shapes, graph = loaded.shapes, model.graph
    count = 0

    def const(value: np.ndarray, base: str) -> str:
        name = f"halp_norm_{count}_{base}"
        graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        return name

    def gather(node: onnx.NodeProto, index: int, positions: dict[int, np.ndarray], shift: int = 0) -> None:
        name = node.input[index]
        for ax, idx in positions.items():
            out = f"{name}__halp_kept_{count}_{index}_{ax}"
            before.setdefault(node.name, []).append(onnx.helper.make_node(
                "Gather", [name, const(idx, f"idx{index}_{ax}")], [out], axis=ax - shift,
                name=f"halp_norm_gather_{count}_{index}_{ax}"))
            name = out
        node.input[index] = name

    for node in graph.node:
        if node.op_type != "LayerNormalization" and not node.op_type.startswith("Reduce"):
            continue
        x = node.input[0]
        shape = shapes.get(x)
        if shape is None or analysis.labels.get(x) is None:
            continue
        rank = len(shape)
        if node.op_type.startswith("Reduce"):
            positions = _kept_positions(analysis, kept, x, _reduced_axes(node, loaded, rank))
            if positions and all(len(idx) for idx in positions.values()):  # else only removed values read it
                gather(node, 0, positions)
                count += 1
            continue
        axis = next((int(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "axis"), -1)
        axis = axis + rank if axis < 0 else axis
        positions = _kept_positions(analysis, kept, x, set(range(axis, rank)))
        if not positions or not all(len(idx) for idx in positions.values()):
            continue  # nothing removed, or everything: its output is read by masked consumers only
        gather(node, 0, positions)
        for index in (1, 2):
            param = node.input[index] if len(node.input) > index else ""
            value = loaded.constants.get(param) if param else None
            if value is None:
                continue
            off = rank - value.ndim
            per_channel = {ax: idx for ax, idx in positions.items() if ax - off >= 0 and value.shape[ax - off] > 1}
            if per_channel:
                gather(node, index, per_channel, shift=off)
        y = node.output[0]
        current = f"{y}__halp_kept_{count}"
        node.output[0] = current
        cur_shape = list(shape)
        for ax, idx in positions.items():
            cur_shape[ax] = len(idx)
        for ax, idx in reversed(list(positions.items())):
            zero_shape = list(cur_shape)
            zero_shape[ax] = 1
            dtype = _NP_TYPES.get(types.get(x, onnx.TensorProto.FLOAT), np.float32)
            back = np.full(shape[ax], len(idx), dtype=np.int64)
            back[idx] = np.arange(len(idx))
            padded, full = f"{current}_pad{ax}", (y if ax == next(iter(positions)) else f"{current}_full{ax}")
            after.setdefault(node.name, []).extend([
                onnx.helper.make_node("Concat", [current, const(np.zeros(zero_shape, dtype), f"zero{ax}")], [padded],
                                      axis=ax, name=f"halp_norm_concat_{count}_{ax}"),
                onnx.helper.make_node("Gather", [padded, const(back, f"back{ax}")], [full], axis=ax,
                                      name=f"halp_norm_scatter_{count}_{ax}")])
            current = full
            cur_shape[ax] = shape[ax]
        count += 1


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    types = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def random_inputs(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    inits = {i.name for i in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        dtype = _NP_TYPES.get(vi.type.tensor_type.elem_type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer) and vi.name in (bound := _index_bounds(model)):
            # token ids and the like: random valid rows of every table they index (zeros would make the
            # check input-insensitive)
            feeds[vi.name] = rng.integers(0, max(bound[vi.name], 1), size=shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs used (directly, or through Cast) as Gather indices into constant tables: the smallest
    table's row count, so random indices stay valid."""
    consts = {i.name: list(i.dims) for i in model.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast" and n.input and n.output}
    bounds: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type != "Gather" or len(n.input) < 2 or n.input[0] not in consts:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        dims = consts[n.input[0]]
        if not dims:
            continue
        rows = int(dims[axis if axis >= 0 else axis + len(dims)])
        src = n.input[1]
        while src in alias:
            src = alias[src]
        bounds[src] = min(bounds.get(src, rows), rows)
    return bounds


def session(model: onnx.ModelProto):
    """An onnxruntime CPU session for an in-memory model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        if weight_bytes(model) < PROTOBUF_LIMIT:
            return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        with tempfile.TemporaryDirectory() as tmp:  # over 2 GiB: through an external-data file
            path = Path(tmp) / "model.onnx"
            save_external(model, path, "model.onnx.data")
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise HalpError(f"onnxruntime cannot load the model: {str(err).splitlines()[0][:300]}", stage=STAGE) from None


def _run_all(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> tuple[list[str], list[list[np.ndarray]]]:
    """Outputs of one model on every input set; one session alive at a time (large models)."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    outputs = [sess.run(None, f) for f in feeds]
    del sess
    return names, outputs


def compare(reference: onnx.ModelProto, candidate: onnx.ModelProto, *, trials: int = 3, seed: int = 0,
            rtol: float = 1e-4) -> VerifyResult:
    """Run both models on the same random inputs and compare every output."""
    rng = np.random.default_rng(seed)
    feeds = [random_inputs(reference, rng) for _ in range(trials)]
    names, ref_outs = _run_all(reference, feeds)
    cand_names, cand_outs = _run_all(candidate, feeds)
    if names != cand_names:
        raise HalpError("the rewritten model's outputs differ from the original's", stage=STAGE)
    sensitive = any(not np.array_equal(x, y) for later in ref_outs[1:] for x, y in zip(ref_outs[0], later))
    cand_sensitive = any(not np.array_equal(x, y) for later in cand_outs[1:] for x, y in zip(cand_outs[0], later))
    errors = {n: 0.0 for n in names}
    for ref_out, cand_out in zip(ref_outs, cand_outs):
        for name, a, b in zip(names, ref_out, cand_out):
            a = np.asarray(a, dtype=np.float64)
            b = np.asarray(b, dtype=np.float64)
            if a.shape != b.shape:
                raise HalpError(f"output '{name}' has shape {b.shape}, expected {a.shape}", stage=STAGE)
            scale = float(np.abs(a).max()) if a.size else 0.0
            err = float(np.abs(a - b).max()) / scale if scale > 0 else float(np.abs(b).max() if b.size else 0.0)
            errors[name] = max(errors[name], err)
    worst = max(errors.values()) if errors else 0.0
    return VerifyResult(passed=bool(worst <= rtol), max_rel_error=worst, per_output=errors, trials=trials,
                        tolerance=rtol, input_sensitive=sensitive or trials < 2,
                        candidate_input_sensitive=cand_sensitive or trials < 2)


def verify(loaded: LoadedModel, analysis: ChannelAnalysis, kept: np.ndarray, candidate: onnx.ModelProto, *,
           trials: int = 3, seed: int = 0, rtol: float = 1e-4, strict: bool = True) -> VerifyResult:
    """Compare the candidate with the masked original; a mismatch raises when ``strict``."""
    result = compare(masked_reference(loaded, analysis, kept), candidate, trials=trials, seed=seed, rtol=rtol)
    if strict and not result.passed:
        worst = max(result.per_output, key=result.per_output.__getitem__)
        raise HalpError(f"the pruned model differs from the masked original: output '{worst}' relative error "
                        f"{result.per_output[worst]:.3g} > {rtol:g}", stage=STAGE)
    return result
