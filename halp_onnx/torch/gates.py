"""Channel gates for Taylor importance (HALP): a multiplicative gate per channel of every prunable group.

For each prunable channel group and each of its producer nodes, the *gate tensor* is the producer's
output, moved past a BatchNormalization that is its single reader (so the gate sits where HALP's
BN gamma/beta score sits; in BN-folded graphs it is the Conv output). The tensor is replaced by
``x * gate`` with the gate broadcast along the tensor's channel axes (``analysis.labels[t].axes``);
``gate = ones (a leaf with requires_grad) * mask`` (0/1 per global channel).

After ``loss.backward()``, :meth:`ChannelGates.accumulate` adds, per global channel, the absolute
value of the *signed* sum of ``dL/dgate`` over every gate position of that channel (all coupled
producers of a residual group, batch and spatial positions included), i.e. HALP's first-order
Taylor estimate ``|sum_k g_k * w_k|`` of the loss change when the channel is removed.

With :meth:`ChannelGates.set_mask` removed channels are held at zero: their gates are 0, and every
input that reduces over channels (the analysis' consumers) reads them as 0, exactly as
:func:`halp_onnx.passes.verify.masked_reference`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from halp_onnx.errors import HalpError

from .executor import OnnxModule

STAGE = "importance"

_AFFINE_FOLLOWERS = ("BatchNormalization",)


class ChannelGates:
    """Per-channel gates on the producer outputs of every prunable channel group of ``analysis``.

    ``module`` must execute ``loaded.model`` (the graph the analysis was made on). Attributes:
    ``tensors`` (gate tensor names, in graph order), ``ids[t]`` (global channel per gate position,
    -1 where no prunable channel) and ``axes[t]`` (the tensor's channel axes).
    """

    def __init__(self, module: OnnxModule, loaded, analysis):
        if not isinstance(module, OnnxModule):
            raise HalpError(f"ChannelGates needs an OnnxModule, got {type(module).__name__}", stage=STAGE)
        self.module = module
        self.analysis = analysis
        self.n_channels = len(analysis.channel_group)
        prunable = np.zeros(max(len(analysis.groups), 1), dtype=bool)
        for g in analysis.prunable:
            prunable[g.id] = True
        self._prunable_channel = (prunable[analysis.channel_group] if self.n_channels
                                  else np.zeros(0, dtype=bool))

        graph = loaded.model.graph
        by_name = {n.name: n for n in graph.node}
        readers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    readers.setdefault(name, []).append(node)
        outputs = {o.name for o in graph.output}
        order = {o: i for i, n in enumerate(graph.node) for o in n.output if o}

        chosen: set[str] = set()
        for group in analysis.prunable:
            for producer in group.producers:
                node = by_name.get(producer)
                if node is None:
                    continue
                for out in node.output:
                    lab = analysis.labels.get(out)
                    if not out or lab is None or not np.any(analysis.channel_group[lab.ids[lab.ids >= 0]] == group.id):
                        continue
                    chosen.add(self._past_affine(out, readers, outputs, analysis))
        self.tensors: list[str] = sorted(chosen, key=lambda t: order.get(t, -1))
        self.ids: dict[str, np.ndarray] = {}
        self.axes: dict[str, tuple[int, ...]] = {}
        for t in self.tensors:
            lab = analysis.labels[t]
            ids = np.asarray(lab.ids, dtype=np.int64)
            ids = np.where((ids >= 0) & self._prunable_channel[np.maximum(ids, 0)], ids, -1)
            self.ids[t] = ids
            self.axes[t] = tuple(lab.axes)

        # tensors read by channel reductions (for masked forwards): name -> (ids, axes)
        self._consumer_tensors: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}
        for c in analysis.consumers:
            lab = analysis.labels.get(c.tensor)
            if lab is not None and c.tensor not in self._consumer_tensors:
                self._consumer_tensors[c.tensor] = (np.asarray(lab.ids, dtype=np.int64), tuple(lab.axes))

        params = list(module.parameters())
        device = params[0].device if params else torch.device("cpu")
        # float64 gates for a float64 module (exact gradients), float32 otherwise (also for half models)
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
        self._leaves: dict[str, torch.Tensor] = {
            t: torch.ones(self.ids[t].shape, dtype=dtype, device=device, requires_grad=True)
            for t in self.tensors}
        self._kept = np.ones(self.n_channels, dtype=bool)
        self._gate_masks: dict[str, torch.Tensor] = {}
        self._read_masks: dict[str, torch.Tensor] = {}
        self._score_sum = np.zeros(self.n_channels, dtype=np.float64)
        self._batches = 0
        self._last: dict[str, np.ndarray] = {}
        self._installed: dict[str, Callable] = {}
        self._previous: dict[str, Callable | None] = {}
        self._install()

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _past_affine(name: str, readers, outputs, analysis) -> str:
        """Follow single-reader per-channel affine ops (BatchNormalization) after ``name``."""
        seen = set()
        while name not in outputs and name not in seen:
            seen.add(name)
            rs = readers.get(name, [])
            if len(rs) != 1 or rs[0].op_type not in _AFFINE_FOLLOWERS or rs[0].domain not in ("", "ai.onnx"):
                break
            node = rs[0]
            if list(node.input[:1]) != [name] or not node.output or node.output[0] not in analysis.labels:
                break
            name = node.output[0]
        return name

    @staticmethod
    def _view(x: torch.Tensor, vec: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        shape = [1] * x.dim()
        for i, ax in enumerate(axes):
            shape[ax] = vec.shape[i]
        return vec.reshape(shape)

    def _make_hook(self, name: str):
        gated = name in self._leaves
        axes = self.axes[name] if gated else self._consumer_tensors[name][1]

        def hook(x: torch.Tensor) -> torch.Tensor:
            prev = self._previous.get(name)
            if prev is not None:
                x = prev(x)
            if gated:
                gate = self._leaves[name].to(device=x.device, dtype=x.dtype)
                mask = self._gate_masks.get(name)
                if mask is not None:
                    gate = gate * mask.to(device=x.device, dtype=x.dtype)
                x = x * self._view(x, gate, axes)
            read = self._read_masks.get(name)
            if read is not None:
                x = x * self._view(x, read.to(device=x.device, dtype=x.dtype), axes)
            return x

        return hook

    def _install(self) -> None:
        wanted = list(self.tensors) + [t for t in self._read_masks if t not in self._leaves]
        hooks = self.module._tensor_hooks
        for name in list(self._installed):
            if name not in wanted:
                self._uninstall_one(name)
        for name in wanted:
            if name in self._installed:
                continue
            current = hooks.get(name)
            self._previous[name] = current
            hook = self._make_hook(name)
            self.module.set_tensor_hook(name, hook)
            self._installed[name] = hook

    def _uninstall_one(self, name: str) -> None:
        hooks = self.module._tensor_hooks
        hook = self._installed.pop(name)
        prev = self._previous.pop(name, None)
        if hooks.get(name) is hook:
            if prev is not None:
                hooks[name] = prev
            else:
                hooks.pop(name, None)

    def remove(self) -> None:
        """Uninstall the gate hooks (hooks that were set on those tensors before are restored)."""
        for name in list(self._installed):
            self._uninstall_one(name)

    # ------------------------------------------------------------------------------------------
    def set_mask(self, kept: np.ndarray | None) -> None:
        """Hold the channels with ``kept[c] == False`` at zero (None or all True: no mask)."""
        if kept is None:
            kept = np.ones(self.n_channels, dtype=bool)
        kept = np.asarray(kept, dtype=bool).reshape(-1)
        if kept.shape != (self.n_channels,):
            raise HalpError(f"set_mask: expected {self.n_channels} booleans (one per global channel), "
                            f"got {kept.shape[0]}", stage=STAGE)
        self._kept = kept.copy()
        self._gate_masks.clear()
        self._read_masks.clear()
        if not kept.all():
            device = next(iter(self._leaves.values())).device if self._leaves else torch.device("cpu")
            for t in self.tensors:
                ids = self.ids[t]
                m = np.where(ids >= 0, kept[np.maximum(ids, 0)], True)
                if not m.all():
                    self._gate_masks[t] = torch.from_numpy(m.astype(np.float32)).to(device)
            for t, (ids, _) in self._consumer_tensors.items():
                m = np.where(ids >= 0, kept[np.maximum(ids, 0)], True)
                if not m.all():
                    self._read_masks[t] = torch.from_numpy(m.astype(np.float32)).to(device)
        self._install()

    @property
    def kept(self) -> np.ndarray:
        return self._kept.copy()

    # ------------------------------------------------------------------------------------------
    def zero_grad(self) -> None:
        for leaf in self._leaves.values():
            leaf.grad = None

    def accumulate(self) -> None:
        """Add this batch's |signed sum of dL/dgate| per global channel (call after ``loss.backward()``),
        then zero the gate gradients."""
        if self._leaves and all(leaf.grad is None for leaf in self._leaves.values()):
            raise HalpError("no gradient reached the channel gates: call loss.backward() on a loss computed "
                            "by a forward pass of the gated module before accumulate()", stage=STAGE)
        signed = np.zeros(self.n_channels, dtype=np.float64)
        last = {}
        for t, leaf in self._leaves.items():
            g = (leaf.grad.detach().to("cpu", torch.float64).numpy() if leaf.grad is not None
                 else np.zeros(leaf.shape, np.float64))
            last[t] = g.copy()
            ids = self.ids[t].reshape(-1)
            ok = ids >= 0
            np.add.at(signed, ids[ok], g.reshape(-1)[ok])
        signed[~self._kept] = 0.0
        self._last = last
        self._last_signed = signed
        self._score_sum += np.abs(signed)
        self._batches += 1
        self.zero_grad()

    def contributions(self) -> dict[str, np.ndarray]:
        """Signed dL/dgate per position of every gate tensor, for the last accumulated batch."""
        return {t: v.copy() for t, v in self._last.items()}

    def signed(self) -> np.ndarray:
        """Signed per-channel sum of dL/dgate of the last accumulated batch."""
        return getattr(self, "_last_signed", np.zeros(self.n_channels)).copy()

    @property
    def batches(self) -> int:
        return self._batches

    def scores(self) -> np.ndarray:
        """float64 per global channel: the accumulated |sum dL/dgate| averaged over batches
        (0 for channels of non-prunable groups and for masked channels)."""
        out = self._score_sum / max(self._batches, 1)
        out[~self._kept] = 0.0
        return out

    def reset(self) -> None:
        self._score_sum[:] = 0.0
        self._batches = 0
        self._last = {}
        self._last_signed = np.zeros(self.n_channels)
        self.zero_grad()
