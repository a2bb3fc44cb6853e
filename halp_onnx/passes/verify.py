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
    """The original model with every consumer's reading of a removed channel zeroed."""
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    types = _elem_types(model)
    shapes = loaded.shapes
    nodes = {n.name: n for n in model.graph.node}
    insert_before: dict[str, list[onnx.NodeProto]] = {}
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
    if insert_before:
        ordered = []
        for node in model.graph.node:
            ordered.extend(insert_before.get(node.name, []))
            ordered.append(node)
        del model.graph.node[:]
        model.graph.node.extend(ordered)
    return model


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
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dtype)
    return feeds


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
