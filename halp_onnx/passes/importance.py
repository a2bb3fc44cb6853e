"""Pass ``importance``: one importance score per global channel, for channel selection.

* :func:`taylor_importance`: Taylor estimate of the loss change when a channel is removed, from a
  per-channel gate on its producers' outputs (after BatchNorm; per sample, the signed ``dL/dgate``
  summed over every coupled producer of the channel's group, since removal zeroes them together):
  by default the second-order (Fisher) ``1/2 mean_n s_n^2``, or HALP's first-order ``|sum_n s_n|``
  per batch (``estimator="halp"``). Runs the ONNX graph itself in torch (the torch bridge, BN on
  running statistics); the loss is cross-entropy against the labels, or, without labels, against the
  model's own predictions ("self-prediction") or the KL to its own softmax ("distillation").
  Scores are not normalised per group: they are loss changes, comparable across groups of any size.
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


ESTIMATORS = ("fisher", "halp")
LABEL_FREE = ("self-prediction", "distillation")


class _SampleGates:
    """Per-sample gates on the gate tensors of :class:`~halp_onnx.torch.gates.ChannelGates`: the tensor
    ``x`` becomes ``x * g`` with ``g`` of shape ``N x channels`` (ones, a leaf), so one backward pass
    gives every sample's signed ``dL/dgate`` per channel and gate tensor."""

    def __init__(self, module, gates, n_channels: int):
        self.module, self.gates, self.n_channels = module, gates, n_channels
        self.leaves: dict = {}
        self._flat = {t: np.asarray(gates.ids[t]).reshape(-1) for t in gates.tensors}
        for t in gates.tensors:
            module.set_tensor_hook(t, self._hook(t))

    def _hook(self, t: str):
        torch = _import_torch()
        axes = self.gates.axes[t]
        ids_shape = tuple(self.gates.ids[t].shape)

        def hook(x):
            leaf = torch.ones((x.shape[0], *ids_shape), dtype=x.dtype, device=x.device, requires_grad=True)
            self.leaves[t] = leaf
            view = [x.shape[0]] + [1] * (x.dim() - 1)
            for i, ax in enumerate(axes):
                view[ax] = ids_shape[i]
            return x * leaf.reshape(view)

        return hook

    def per_sample(self, n: int) -> np.ndarray:
        """``n x channels``: each sample's signed dL/dgate summed over every coupled gate of a channel."""
        out = np.zeros((self.n_channels, n), dtype=np.float64)
        for t, leaf in self.leaves.items():
            if leaf.grad is None:
                continue
            g = leaf.grad.detach().to("cpu", copy=True).double().numpy().reshape(n, -1)
            ids = self._flat[t]
            ok = ids >= 0
            np.add.at(out, ids[ok], g[:, ok].T)
        self.leaves.clear()
        return out.T

    def remove(self) -> None:
        self.module.clear_tensor_hooks()


def taylor_importance(loaded: LoadedModel, analysis: ChannelAnalysis, batches: Iterable[Batch], *,
                      device: str = "cpu", max_batches: int | None = None,
                      progress: Callable[[int, int], None] | None = None, estimator: str = "fisher",
                      label_free: str = "self-prediction", temperature: float = 2.0, seed: int = 0) -> Importance:
    """Taylor importance over calibration ``batches`` of ``(inputs, labels)``.

    ``inputs``: a dict input name -> array (batch first), or a bare array for a single-input model;
    ``labels``: int class per sample, or None (label-free, see ``label_free``). ``progress(batches_done,
    samples_done)`` is called after every batch.

    A channel's removal sets its gate to 0 at every coupled producer at once (all members of a residual
    group), so each estimate is taken along that joint direction: per sample, the signed ``dL/dgate``
    summed over every gate of the channel (``s_n``), then

    * ``estimator="fisher"`` (default): ``1/2 * mean_n s_n^2``, the second-order (Fisher) estimate of
      the loss increase (group Fisher pruning, Liu et al. 2021; measured on the BN-folded CIFAR
      ResNet-20, compile 0.8: 48% top-1 one-shot vs 25% with ``"halp"``);
    * ``estimator="halp"``: HALP's first-order ``|sum_n s_n| / n`` per batch, averaged over batches.

    Without labels, ``label_free="self-prediction"`` uses the cross-entropy against the model's own
    argmax; ``"distillation"`` the KL divergence to the model's own softmax at ``temperature``: its
    gradient is zero at the dense model, so it is always scored to second order, with targets drawn from
    the tempered softmax (an unbiased estimate of the KL's Hessian along the removal; seeded by ``seed``).
    """
    torch = _import_torch()
    from ..torch.executor import OnnxModule
    from ..torch.gates import ChannelGates

    if estimator not in ESTIMATORS:
        raise HalpError(f"Taylor estimator {estimator!r}: expected one of {', '.join(ESTIMATORS)}", stage=STAGE)
    if label_free not in LABEL_FREE:
        raise HalpError(f"label-free loss {label_free!r}: expected one of {', '.join(LABEL_FREE)}", stage=STAGE)
    if not temperature > 0:
        raise HalpError(f"temperature {temperature!r}: must be positive", stage=STAGE)
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
    gates.remove()
    n_channels = len(analysis.channel_group)
    sample_gates = _SampleGates(module, gates, n_channels)
    names = module.input_names
    static_batch = {n: (loaded.input_shapes.get(n) or (0,))[0] for n in names}
    gen = torch.Generator().manual_seed(int(seed))

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

    def run(feeds: dict, labels, n: int) -> np.ndarray:
        out = module(feeds)
        if isinstance(out, tuple):
            out = out[out_index]
        if out.dim() != 2 or out.shape[0] != n:
            raise HalpError(f"the model's output has shape {tuple(out.shape)} for a batch of {n}; "
                            "Taylor importance needs N x classes logits", stage=STAGE)
        logits = out.float()
        if labels is not None:
            target = labels
        elif label_free == "distillation":
            probs = torch.softmax(logits.detach().cpu().double() / temperature, dim=1)
            target = torch.multinomial(probs, 1, generator=gen).reshape(-1).to(logits.device)
            logits = logits / temperature
        else:
            target = logits.detach().argmax(dim=1)
        torch.nn.functional.cross_entropy(logits, target, reduction="sum").backward()
        return sample_gates.per_sample(n)

    n_batches = samples = labelled = 0
    first_sum = np.zeros(n_channels, dtype=np.float64)
    second_sum = np.zeros(n_channels, dtype=np.float64)
    chunked = False
    try:
        for batch in batches:
            if max_batches is not None and n_batches >= max_batches:
                break
            try:
                inputs, labels = batch
            except (TypeError, ValueError):
                raise HalpError("each calibration batch must be a pair (inputs, labels or None)",
                                stage=STAGE) from None
            feeds = feeds_of(inputs)
            n = int(next(iter(feeds.values())).shape[0]) if feeds else 0
            if n == 0:
                continue
            if labels is not None:
                labels = torch.as_tensor(np.asarray(labels).reshape(-1).astype(np.int64)).to(device)
                if labels.shape[0] != n:
                    raise HalpError(f"calibration batch has {n} samples but {labels.shape[0]} labels",
                                    stage=STAGE)
                labelled += 1
            per: np.ndarray | None = None
            if not chunked:
                try:
                    per = run(feeds, labels, n)
                except HalpError:
                    # a batch size baked into the graph (e.g. a folded Reshape): go sample by sample
                    if not all(b == 1 for b in static_batch.values()) or n == 1:
                        raise
                    sample_gates.leaves.clear()
                    chunked = True
            if per is None:
                per = np.concatenate([run({k: v[i:i + 1] for k, v in feeds.items()},
                                          None if labels is None else labels[i:i + 1], 1) for i in range(n)])
            first_sum += np.abs(per.sum(axis=0)) / n
            kd = labels is None and label_free == "distillation"
            second_sum += np.square(per).sum(axis=0) * (temperature ** 2 if kd else 1.0)
            n_batches += 1
            samples += n
            if progress is not None:
                progress(n_batches, samples)
    finally:
        sample_gates.remove()
    if n_batches == 0:
        raise HalpError("Taylor importance got no calibration batch", stage=STAGE)
    prunable = np.zeros(max(len(analysis.groups), 1), dtype=bool)
    for g in analysis.prunable:
        prunable[g.id] = True
    mask = prunable[analysis.channel_group] if n_channels else np.zeros(0, dtype=bool)
    distilled = label_free == "distillation" and labelled < n_batches
    if estimator == "fisher" or distilled:
        scores = 0.5 * second_sum / samples
        how_score = "1/2 mean over samples of (sum dL/dgate over coupled producers)^2 (Fisher)"
    else:
        scores = first_sum / n_batches
        how_score = "|sum dL/dgate| per batch over coupled producers (first order, HALP)"
    scores = np.where(mask, scores, 0.0)
    unlabeled = ("the model's own predictions" if label_free == "self-prediction"
                 else f"KL to the model's own softmax at T={temperature:g}")
    if labelled == n_batches:
        loss_name, how = "cross-entropy", "cross-entropy against the labels"
    elif labelled == 0:
        loss_name = label_free
        how = (f"cross-entropy against {unlabeled} (no labels)" if label_free == "self-prediction"
               else f"{unlabeled} (no labels)")
    else:
        loss_name, how = "cross-entropy", (f"cross-entropy against the labels ({labelled} of {n_batches} batches), "
                                           f"else {unlabeled}")
    note = (f"taylor: {how_score}, {how}, {n_batches} batch(es), {samples} sample(s)"
            + (", one sample at a time" if chunked else ""))
    return Importance(scores=scores, method="taylor", loss=loss_name, batches=n_batches, samples=samples,
                      seconds=time.perf_counter() - t0, note=note)
