"""Pass ``importance``: one importance score per global channel, for channel selection.

* :func:`taylor_importance` (HALP): first-order Taylor estimate of the loss change when a channel is
  removed, ``|sum dL/dgate|`` of a per-channel gate on its producers' outputs (after BatchNorm),
  summed with sign over every coupled producer of the channel's group, averaged over calibration
  batches. Runs the ONNX graph itself in torch (the torch bridge, BN on running statistics); the
  loss is cross-entropy against the labels, or against the model's own predictions when a batch has
  no labels ("self-prediction", label-free).
* :func:`magnitude_importance`: the L2 norm of each channel's weights across its group, divided by
  the group's mean so that groups are comparable (the fallback without calibration data).

torch is imported lazily: only :func:`taylor_importance` needs it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from ..errors import HalpError
from .channel_groups import ChannelAnalysis
from .load import LoadedModel
from .select import l2_scores

STAGE = "importance"

Batch = tuple["Mapping[str, np.ndarray] | np.ndarray", "np.ndarray | None"]


@dataclass(frozen=True)
class Importance:
    scores: np.ndarray  # float64 per global channel
    method: str  # "taylor" | "magnitude"
    loss: str | None  # "cross-entropy" | "self-prediction" | None
    batches: int
    samples: int
    seconds: float
    note: str

    def to_dict(self) -> dict:
        s = np.asarray(self.scores, dtype=np.float64)
        stats = ({"min": float(s.min()), "mean": float(s.mean()), "max": float(s.max()),
                  "nonzero": int(np.count_nonzero(s))} if s.size else {})
        return {"method": self.method, "loss": self.loss, "batches": self.batches, "samples": self.samples,
                "seconds": round(float(self.seconds), 3), "note": self.note, "channels": int(s.size),
                "scores": stats}


def normalize_per_group(analysis: ChannelAnalysis, scores: np.ndarray) -> np.ndarray:
    """Divide each group's scores by the group's mean score (a group whose scores are all 0 stays 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    out = scores.copy()
    if not len(analysis.channel_group):
        return out
    sums = np.bincount(analysis.channel_group, weights=scores, minlength=len(analysis.groups))
    counts = np.bincount(analysis.channel_group, minlength=len(analysis.groups))
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    per_channel = means[analysis.channel_group]
    ok = per_channel > 0
    out[ok] = scores[ok] / per_channel[ok]
    out[~ok] = 0.0
    return out


def magnitude_importance(loaded: LoadedModel, analysis: ChannelAnalysis, *,
                         note: str = "magnitude: L2 norm of each channel's weights, normalised per group") -> Importance:
    """L2 norm of each channel's weights across its group (:func:`select.l2_scores`), divided by the
    group's mean score (mean 1 in every group with any weight)."""
    t0 = time.perf_counter()
    scores = normalize_per_group(analysis, l2_scores(loaded, analysis))
    return Importance(scores=scores, method="magnitude", loss=None, batches=0, samples=0,
                      seconds=time.perf_counter() - t0, note=note)


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise HalpError(f"Taylor importance needs PyTorch ({exc}); install the torch extra: "
                        "pip install 'halp-onnx[torch]'", stage=STAGE) from None
    return torch


def _logits_output(loaded: LoadedModel) -> int:
    """Index of the first graph output that is a float tensor of shape N x classes."""
    import onnx

    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                   onnx.TensorProto.BFLOAT16}
    described = []
    for i, out in enumerate(loaded.model.graph.output):
        elem = out.type.tensor_type.elem_type if out.type.HasField("tensor_type") else 0
        shape = loaded.shapes.get(out.name)
        described.append(f"'{out.name}' {onnx.TensorProto.DataType.Name(elem) if elem else '?'} "
                         f"{'x'.join(map(str, shape)) if shape else '?'}")
        if elem in float_types and shape is not None and len(shape) == 2 and shape[1] >= 2:
            return i
    raise HalpError("Taylor importance needs a classifier: no graph output is a float tensor of shape "
                    f"N x classes (outputs: {', '.join(described) or 'none'})", stage=STAGE)


def taylor_importance(loaded: LoadedModel, analysis: ChannelAnalysis, batches: Iterable[Batch], *,
                      device: str = "cpu", max_batches: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Importance:
    """HALP's Taylor importance over calibration ``batches`` of ``(inputs, labels)``.

    ``inputs``: a dict input name -> array (batch first), or a bare array for a single-input model;
    ``labels``: int class per sample, or None (the loss then uses the model's own argmax
    predictions). ``progress(batches_done, samples_done)`` is called after every batch.
    """
    torch = _import_torch()
    from ..torch.executor import OnnxModule
    from ..torch.gates import ChannelGates

    t0 = time.perf_counter()
    out_index = _logits_output(loaded)
    module = OnnxModule(loaded.model, train_bn=False)
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        module = module.to(device)
    except Exception as exc:
        raise HalpError(f"cannot move the model to device {device!r}: {exc}", stage=STAGE) from None
    module.eval()
    gates = ChannelGates(module, loaded, analysis)
    names = module.input_names
    static_batch = {n: (loaded.input_shapes.get(n) or (0,))[0] for n in names}

    def feeds_of(inputs) -> dict:
        if isinstance(inputs, Mapping):
            unknown = [k for k in inputs if k not in names]
            missing = [n for n in names if n not in inputs]
            if unknown or missing:
                raise HalpError(f"calibration batch inputs {sorted(inputs)} do not match the model's inputs "
                                f"{names}", stage=STAGE)
            arrays = dict(inputs)
        else:
            if len(names) != 1:
                raise HalpError(f"the model has {len(names)} inputs ({', '.join(names)}): give each calibration "
                                "batch as a dict name -> array", stage=STAGE)
            arrays = {names[0]: inputs}
        return {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in arrays.items()}

    def run(feeds: dict, labels, n: int, weight: float):
        out = module(feeds)
        if isinstance(out, tuple):
            out = out[out_index]
        if out.dim() != 2 or out.shape[0] != n:
            raise HalpError(f"the model's output has shape {tuple(out.shape)} for a batch of {n}; "
                            "Taylor importance needs N x classes logits", stage=STAGE)
        logits = out.float()
        target = labels if labels is not None else logits.detach().argmax(dim=1)
        loss = torch.nn.functional.cross_entropy(logits, target) * weight
        loss.backward()
        return float(loss.detach())

    n_batches = samples = labelled = 0
    chunked = False
    for batch in batches:
        if max_batches is not None and n_batches >= max_batches:
            break
        try:
            inputs, labels = batch
        except (TypeError, ValueError):
            raise HalpError("each calibration batch must be a pair (inputs, labels or None)", stage=STAGE) from None
        feeds = feeds_of(inputs)
        n = int(next(iter(feeds.values())).shape[0]) if feeds else 0
        if n == 0:
            continue
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels).reshape(-1).astype(np.int64)).to(device)
            if labels.shape[0] != n:
                raise HalpError(f"calibration batch has {n} samples but {labels.shape[0]} labels", stage=STAGE)
            labelled += 1
        gates.zero_grad()
        if not chunked:
            try:
                run(feeds, labels, n, 1.0)
            except HalpError:
                # a batch size baked into the graph (e.g. a folded Reshape): go sample by sample
                if not all(b == 1 for b in static_batch.values()) or n == 1:
                    raise
                gates.zero_grad()
                chunked = True
        if chunked:
            for i in range(n):
                run({k: v[i:i + 1] for k, v in feeds.items()}, None if labels is None else labels[i:i + 1],
                    1, 1.0 / n)
        gates.accumulate()
        n_batches += 1
        samples += n
        if progress is not None:
            progress(n_batches, samples)
    gates.remove()
    if n_batches == 0:
        raise HalpError("Taylor importance got no calibration batch", stage=STAGE)
    if labelled == n_batches:
        loss_name, how = "cross-entropy", "cross-entropy against the labels"
    elif labelled == 0:
        loss_name, how = "self-prediction", "cross-entropy against the model's own predictions (no labels)"
    else:
        loss_name, how = "cross-entropy", (f"cross-entropy against the labels ({labelled} of {n_batches} batches), "
                                           "else against the model's own predictions")
    note = (f"taylor: |sum dL/dgate| per channel over coupled producers, {how}, "
            f"{n_batches} batch(es), {samples} sample(s)" + (", one sample at a time" if chunked else ""))
    return Importance(scores=gates.scores(), method="taylor", loss=loss_name, batches=n_batches, samples=samples,
                      seconds=time.perf_counter() - t0, note=note)
