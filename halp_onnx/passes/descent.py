"""Pass ``descent``: block-wise descent of the refitted pruned model towards the dense one, where the
ends of its blocks are and how many steps it gets (the training itself: :mod:`halp_onnx.torch.blockwise`).

* **Points** (:func:`descent_points`): every residual junction of the pruned model (the ``Add``, or
  the ``Relu`` that alone reads it) is the end of a block, a removed block's included (its branch is a
  constant there, trained too); a graph without junctions (a plain chain) has a point after every
  disturbed layer instead. The dense and pruned tensors there share a name; the pruned one keeps the
  channels the channel analysis says, on the axis it labels.
* **Steps** (:func:`descent_steps`): :data:`STEPS` per block (400), fewer where the forward MACs
  over all of them (a block's step runs the model up to its end: half of it on average) would exceed
  :data:`MAC_BUDGET` (at batch 32: ResNet-56 compiled to 0.5 gets 190 per block, a ResNet-50 at 224
  px too few to run); under :data:`MIN_STEPS` it is not run.
* torch is optional: without it the pass is skipped and says so.
* **Carried in the output** (:func:`annotate`, :func:`block_ends_of`): ``prune`` and ``compile`` write the
  points into the pruned model's ``metadata_props`` (key :data:`METADATA_KEY`: per point its tensor, channel
  axis and the dense channels kept there as a hex bit mask), so that ``finetune --teacher <dense model>``
  can run the same descent on its training data before the end-to-end steps
  (:mod:`halp_onnx.torch.finetune.blocks`).

The caller (:func:`.reconstruct.reconstruct_and_repair`) holds calibration batches out of it: half
decide, block by block, whether its steps are kept (a block that does no better there keeps its
weights), the other half whether the result is kept at all (only where it brings the output closer to the dense model's than the refit alone).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from ..errors import HalpError
from .channel_groups import ChannelAnalysis
from .dead_code import reader_nodes, residual_junctions
from .load import LoadedModel
from .repair import _kept_positions, _Runner

STAGE = "reconstruct"
METADATA_KEY = "halp_onnx.block_ends"
STEPS = 400  # per block, the default; the tests run fewer
MAC_BUDGET = 4e12  # forward multiply-accumulates over all steps
MIN_STEPS = 20


@dataclass(frozen=True)
class DescentOutcome:
    """What the caller reports: the trained model (None when it did not run) and why / how."""

    model: onnx.ModelProto | None
    note: str
    summary: dict | None = None


def descent_points(loaded: LoadedModel, model: onnx.ModelProto, analysis: ChannelAnalysis, kept: np.ndarray,
                   fitted: Sequence[tuple[str, str | None, bool]]) -> dict[str, tuple[np.ndarray | None, int]]:
    """Point tensor -> (kept dense channels there, channel axis): every residual junction of the dense
    model (the ``Add`` of a branch and a skip, computed and of one shape, or the ``Relu`` that alone
    reads it) that the pruned ``model`` still has, a removed block's included; in a graph without junctions, every disturbed layer's output
    instead (``fitted``: per disturbed layer, its output, the junction it writes into or None, channels
    on the last axis); the channel axis is the one the channel analysis labels."""
    readers = reader_nodes(model.graph)
    outputs = {o.name for o in model.graph.output}
    dense_ends = {add for add, _ in residual_junctions(loaded.model, loaded.shapes).values()}
    ends = [n.output[0] for n in model.graph.node if n.op_type == "Add" and n.output[0] in dense_ends]
    ends = ends or [y for y, _, _ in fitted]
    out: dict[str, tuple[np.ndarray | None, int]] = {}
    for t in ends:
        rs = readers.get(t, [])
        if len(rs) == 1 and rs[0].op_type == "Relu":
            t = rs[0].output[0]
        shape = loaded.shapes.get(t)
        if t in outputs or t in out or shape is None or len(shape) < 2:
            continue
        lab = analysis.labels.get(t)
        if lab is None:  # no group owns its channels: all kept
            out[t] = (None, 1)
            continue
        if len(lab.axes) != 1:
            continue
        axis = int(lab.axes[0])
        keep = _kept_positions(analysis, kept, t, int(shape[axis]), axis)
        if keep is not None and keep.any():
            out[t] = (keep, axis)
    return out


def _mask_hex(keep: np.ndarray) -> str:
    return np.packbits(keep.astype(np.uint8)).tobytes().hex()


def annotate(model: onnx.ModelProto, points: dict[str, tuple[np.ndarray | None, int]], output: str,
             macs: int) -> onnx.ModelProto:
    """A copy of ``model`` whose ``metadata_props`` carry the block ends ``points``, the dense model's
    ``output`` and the pruned model's forward ``macs`` (see the module docstring; an earlier entry under
    :data:`METADATA_KEY` is replaced; no points: the copy has none)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep_props = [(p.key, p.value) for p in out.metadata_props if p.key != METADATA_KEY]
    del out.metadata_props[:]
    for k, v in keep_props:
        out.metadata_props.add(key=k, value=v)
    if points:
        rows = [[t, int(axis), None if keep is None else [int(keep.size), _mask_hex(keep)]]
                for t, (keep, axis) in points.items()]
        out.metadata_props.add(key=METADATA_KEY, value=json.dumps({"version": 1, "output": output, "macs": int(macs), "points": rows},
                                                                  separators=(",", ":")))
    return out


def block_ends_of(model: onnx.ModelProto) -> tuple[dict[str, tuple[np.ndarray | None, int]], str, int] | None:
    """What :func:`annotate` wrote into ``model`` (the block ends, the dense model's output name, the
    MACs), or None when it carries none; a malformed entry is an error naming the key."""
    raw = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        points: dict[str, tuple[np.ndarray | None, int]] = {}
        for t, axis, mask in d["points"]:
            keep = None
            if mask is not None:
                n, hexed = int(mask[0]), str(mask[1])
                keep = np.unpackbits(np.frombuffer(bytes.fromhex(hexed), dtype=np.uint8))[:n].astype(bool)
                if keep.size != n:
                    raise ValueError(f"{t}: mask of {keep.size} bits for {n} channels")
            points[str(t)] = (keep, int(axis))
        return points, str(d["output"]), int(d["macs"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise HalpError(f"the model's metadata '{METADATA_KEY}' is malformed ({exc})", stage=STAGE) from None


def with_block_ends(loaded: LoadedModel, analysis: ChannelAnalysis, kept: np.ndarray, model: onnx.ModelProto,
                    macs: int) -> onnx.ModelProto:
    """``model`` (pruned from ``loaded``, keeping ``kept``; ``macs`` forward) annotated with its residual
    junctions' block ends (:func:`annotate`; a graph without junctions carries none)."""
    return annotate(model, descent_points(loaded, model, analysis, kept, ()), loaded.model.graph.output[0].name,
                    macs)


class DenseTargets:
    """``(batch, tensor) -> the dense model's tensor``, by onnxruntime on the part of the graph that tensor
    needs; the session of the last tensor asked for is kept (the descent asks for one block end after
    another), so a block's targets cost the dense model up to that block, not all of it."""

    def __init__(self, model: onnx.ModelProto, threads: int = 0):
        self.model, self.threads = model, threads
        self._name: str | None = None
        self._runner: _Runner | None = None

    def __call__(self, feed: dict[str, np.ndarray], name: str) -> np.ndarray:
        if name != self._name or self._runner is None:
            self._runner = _Runner(self.model, [name], self.threads, only_extra=True)
            self._name = name
        return self._runner.run(feed)[name]


def descent_steps(macs: int, batch: int, blocks: int, steps: int | None = None) -> int:
    """The steps per block a model of ``macs`` forward MACs per sample and ``blocks`` blocks (the head
    included) gets at ``batch`` (see the module docstring)."""
    per_step = max(1.0, float(macs) * max(batch, 1) * max(blocks, 1) / 2)
    return int(min(STEPS if steps is None else steps, MAC_BUDGET // per_step))


def run_descent(loaded: LoadedModel, model: onnx.ModelProto, analysis: ChannelAnalysis, kept: np.ndarray,
                fitted: Sequence[tuple[str, str | None, bool]], feeds: Sequence[dict[str, np.ndarray]],
                macs: int, *, stopping: Sequence[dict[str, np.ndarray]] = (), steps: int | None = None,
                lr: float = 1e-3, threads: int = 0, seed: int = 0) -> DescentOutcome:
    """Block-wise descent of ``model`` on ``feeds``, or the reason it did not run; with ``stopping``
    batches (held out of ``feeds``) a block whose steps do no better there keeps its weights."""
    points = descent_points(loaded, model, analysis, kept, fitted)
    if not points:
        return DescentOutcome(None, "block descent: no block end to train towards")
    batch = max(len(next(iter(f.values()))) for f in feeds) if feeds else 0
    n = descent_steps(macs, batch, len(points) + 1, steps)
    if n < MIN_STEPS:
        return DescentOutcome(None, f"block descent: skipped, {n} step(s) within its {MAC_BUDGET:.0e} MAC budget")
    try:
        from ..torch.blockwise import block_descent
    except ImportError as exc:
        return DescentOutcome(None, f"block descent: skipped, it needs PyTorch ({exc})")
    output = loaded.model.graph.output[0].name
    try:
        res = block_descent(model, points, feeds, DenseTargets(loaded.model, threads), output, steps=n, lr=lr,
                            threads=threads, seed=seed, stopping=stopping)
    except HalpError as exc:
        return DescentOutcome(None, f"block descent: left out, {exc}")
    back = f", {res.note}" if res.note else ""
    note = (f"block descent: {res.points + 1} block(s) in turn, {n} Adam steps each towards the dense model "
            f"on {len(feeds)} batch(es){back} ({res.seconds:.1f}s)")
    if stopping and res.kept_back == res.points + 1:
        return DescentOutcome(None, note + ": nothing changed", res.to_dict())
    return DescentOutcome(res.model, note, res.to_dict())
