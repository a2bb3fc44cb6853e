"""Block-wise descent: the pruned model's weights trained by gradient descent so that each block
reproduces the dense model's tensor at its end from what the pruned model feeds it, on calibration data.

This is the block reconstruction of post-training compression (Li et al., 2021, "BRECQ"; the
layer-wise least-squares refit of :mod:`halp_onnx.passes.reconstruct` is its linear, one-layer
special case). The caller names the *points* where blocks end (a residual stream after each junction)
and the channels the pruned tensor keeps there. The blocks are trained **in turn**, in graph order:
block ``b`` is everything between the previous point (detached there) and its own (where the forward
stops), trained for ``steps`` Adam steps on the squared error to the dense tensor at the kept
channels, over that tensor's variance; the last block, the head, on the KL divergence to the dense
softmax (``N x classes`` logits) or the squared error of the first graph output. Each block's input is
the pruned stream as the blocks before it left it, so the error one block leaves is what the next is
trained to absorb, and a block never chases an input that is still moving. With held-out *stopping*
batches, a block that does no better there after its steps gets its weights back.

Adam at lr 1e-3 with a tenth of the steps of linear warm-up, then cosine decay; the calibration batches
in a shuffled order each epoch. Measured on the BN-folded CIFAR ResNet-20 compiled to 0.5 (the tuning
model), one-shot, top-1 exact / JPEG: after the least-squares refit 81.02% / 72.68%; then in turn, 200
steps per block 83.28% / 75.45% (lr 3e-4 82.50%, 3e-3 84.37%), 400 steps 84.96% / 75.46% (the default,
where the MAC budget of :mod:`halp_onnx.passes.descent` allows; 40 s on one thread). Trained side by side
instead (every point detached, one loss over all, 2,000 steps at lr 1e-3): 85.25% / 76.13% on ResNet-20,
but on the held-out ResNet-56 the output error on held-out batches rose from 0.44 to 1.8 within 600
steps and ended at 0.54: a deep model's blocks chase each other's moving inputs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
import torch

from ..errors import HalpError
from .executor import OnnxModule

STAGE = "reconstruct"
CACHE_BYTES = 512 << 20  # a block end's dense tensors over all batches are kept in memory up to this

Targets = Callable[[dict[str, np.ndarray], str], np.ndarray]  # (batch, point or output) -> the dense tensor


@dataclass(frozen=True)
class DescentResult:
    model: onnx.ModelProto
    points: int
    steps: int
    seconds: float
    loss_first: float  # each block's mean loss over its first tenth of the steps, averaged over the blocks
    loss_last: float  # and over its last tenth
    kept_back: int = 0  # blocks whose steps did no better on the held-out batches (their weights stay)
    checked: tuple[tuple[int, float], ...] = ()  # (block, its error on the held-out batches after)
    note: str = ""

    def to_dict(self) -> dict:
        return {"points": self.points, "steps": self.steps, "seconds": round(self.seconds, 3),
                "loss_first": round(self.loss_first, 6), "loss_last": round(self.loss_last, 6),
                "kept_back": self.kept_back, "checked": [[k, round(e, 6)] for k, e in self.checked],
                "note": self.note}


def _as_index(keep: np.ndarray | None) -> torch.Tensor | None:
    if keep is None or bool(np.all(keep)):
        return None
    return torch.from_numpy(np.flatnonzero(keep).astype(np.int64))


class _Stop(Exception):
    """Raised by the hook at the block end being trained: nothing after it needs computing."""


def _ordered(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    produced = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    return sorted(names, key=lambda t: produced.get(t, -1))


def block_descent(model: onnx.ModelProto, points: Mapping[str, tuple[np.ndarray | None, int]],
                  feeds: Sequence[dict[str, np.ndarray]], targets: Targets, output: str, *, steps: int = 200,
                  lr: float = 1e-3, threads: int = 0, seed: int = 0, stopping: Sequence[dict[str, np.ndarray]] = (),
                  warmup: float = 0.1) -> DescentResult:
    """Train ``model``'s float weights (a copy; ``model`` is not modified) by block-wise descent.

    ``points``: tensor name -> (the dense channels the pruned tensor keeps, a bool mask or None for all;
    the channel axis); ``feeds``: calibration batches (input name -> array); ``targets(feed, name)``: the dense
    model's tensor at a point or at ``output`` for that batch (asked for one point after another); ``output``: the graph output the
    last block (the head) is trained on; ``steps``: per block. ``stopping``: batches held out of the
    training, on which each block's error is measured before and after its steps; a block that ends no
    better there keeps its weights. See the module docstring."""
    if not feeds:
        raise HalpError("block descent got no calibration batch", stage=STAGE)
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    module = OnnxModule(model, train_bn=False)
    module.eval()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise HalpError("block descent: the model has no trainable weights", stage=STAGE)
    index = {t: (_as_index(keep), axis) for t, (keep, axis) in points.items()}
    phases = [*_ordered(model, list(points)), output]
    out_pos = module.output_names.index(output)

    def dense_of(feed: dict[str, np.ndarray], name: str) -> torch.Tensor:
        v = torch.from_numpy(np.ascontiguousarray(targets(feed, name), dtype=np.float32))
        idx = index[name][0] if name in index else None
        return v if idx is None else v.index_select(index[name][1], idx)

    def scale_of(name: str, head: list[torch.Tensor]) -> float:
        """The dense tensor's variance per channel, averaged, on the first 16 batches."""
        v = torch.cat(head)
        axis = index[name][1] if name in index else 1
        dims = [d for d in range(v.dim()) if d != axis] if v.dim() > 1 else [0]
        var = float(v.var(dim=dims, correction=0).mean())
        return var if var > 1e-12 else float(v.square().mean()) + 1e-12

    first_out = dense_of(feeds[0], output)
    logits = first_out.dim() == 2 and first_out.shape[1] >= 2
    held = [{k: torch.from_numpy(np.asarray(v)) for k, v in f.items()} for f in stopping]
    as_tensors = [{k: torch.from_numpy(np.asarray(v)) for k, v in f.items()} for f in feeds]
    got: dict[str, torch.Tensor] = {}

    def run_to(x: dict[str, torch.Tensor], end: str) -> torch.Tensor:
        """The pruned tensor at ``end`` (everything before the block detached)."""
        got.clear()
        try:
            out = module(x)
        except _Stop:
            return got[end]
        return (out[out_pos] if isinstance(out, tuple) else out).float()

    def error(value: torch.Tensor, want: torch.Tensor, end: str, scale: float) -> torch.Tensor:
        if end == output and logits:
            return torch.nn.functional.kl_div(torch.log_softmax(value, 1), torch.log_softmax(want, 1),
                                              log_target=True, reduction="batchmean")
        return torch.mean((value - want) ** 2) / scale

    def held_error(end: str, wants: list[torch.Tensor], scale: float) -> float:
        with torch.no_grad():
            return float(np.mean([float(error(run_to(x, end), w, end, scale)) for x, w in zip(held, wants)]))

    rng = np.random.default_rng(seed)
    losses: list[list[float]] = []  # per block
    checked: list[tuple[int, float]] = []
    kept_back = 0
    try:
        for b, end in enumerate(phases):
            module.clear_tensor_hooks()
            for before in phases[:b]:
                module.set_tensor_hook(before, lambda x: x.detach())
            if end != output:
                def stop(x: torch.Tensor, end: str = end) -> torch.Tensor:
                    got[end] = x
                    raise _Stop
                module.set_tensor_hook(end, stop)
            # the dense tensor at this block's end: every batch's at once where that fits CACHE_BYTES, else per step
            first = dense_of(feeds[0], end)
            cached = ([first] + [dense_of(f, end) for f in feeds[1:]]
                      if first.numel() * 4 * len(feeds) <= CACHE_BYTES else None)
            scale = scale_of(end, cached[:16] if cached is not None else
                             [first] + [dense_of(f, end) for f in feeds[1:16]])
            held_wants = [dense_of(f, end) for f in stopping]
            err0 = held_error(end, held_wants, scale) if held else math.inf
            live: list[torch.nn.Parameter] = []
            snapshot: list[torch.Tensor] = []
            optimizer = schedule = None
            warm = max(1, int(steps * warmup))
            order: list[int] = []
            losses.append([])
            for step in range(steps):
                if not order:
                    order = list(rng.permutation(len(feeds)))
                i = order.pop()
                want = cached[i] if cached is not None else dense_of(feeds[i], end)
                loss = error(run_to(as_tensors[i], end), want, end, scale)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise HalpError(f"block descent: the loss is {value} at step {step} of block {b}", stage=STAGE)
                for p in params:
                    p.grad = None
                if not loss.requires_grad:
                    break  # nothing trainable in this block
                loss.backward()
                if optimizer is None:
                    live = [p for p in params if p.grad is not None]
                    snapshot = [p.detach().clone() for p in live]
                    optimizer = torch.optim.Adam(live, lr=lr)
                    schedule = torch.optim.lr_scheduler.LambdaLR(
                        optimizer, lambda s: (s + 1) / warm if s < warm else
                        0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
                optimizer.step()
                assert schedule is not None
                schedule.step()
                losses[-1].append(value)
            if held and live:
                err1 = held_error(end, held_wants, scale)
                if not err1 < err0:  # no better on the held-out batches: the block keeps its weights
                    with torch.no_grad():
                        for p, v in zip(live, snapshot):
                            p.copy_(v)
                    kept_back += 1
                checked.append((b, min(err0, err1)))
    finally:
        module.clear_tensor_hooks()
    ran = [v for v in losses if v]

    def tenths(first: bool) -> float:  # each block's first (last) tenth of the steps, averaged over the blocks
        return float(np.mean([np.mean(v[:max(1, len(v) // 10)] if first else v[-max(1, len(v) // 10):])
                              for v in ran])) if ran else 0.0

    with torch.no_grad():
        out = module.write_back()
    note = f"{kept_back} of {len(phases)} block(s) no better on the held-out batches, left as they were" if held else ""
    return DescentResult(out, len(points), sum(len(v) for v in ran), time.perf_counter() - t0, tenths(True),
                         tenths(False), kept_back, tuple(checked), note)
