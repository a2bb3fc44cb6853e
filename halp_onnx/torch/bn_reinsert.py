"""BatchNorm re-insertion for fine-tuning BN-folded graphs (the torch bridge).

An exporter in eval mode folds every BatchNormalization into the preceding convolution. Fine-tuning
such a graph trains convolutions whose per-channel scales differ by orders of magnitude with nothing
to renormalise them, and after pruning the activations drift; with the default learning rate it
diverges. :class:`BNReinsertion` puts a BatchNorm back on the output of every such Conv (and hidden
Gemm) of an :class:`~halp_onnx.torch.executor.OnnxModule`, as a tensor hook, and folds it back into
the layer's weights and bias when the module writes its ONNX model back:

* **init** (:meth:`BNReinsertion.calibrate`): per-channel mean ``m`` and variance ``v`` of each
  layer's output are measured on training images (the function is unchanged while measuring); the
  BN gets ``running_mean = m``, ``running_var = v``, ``weight = sqrt(v + eps)``, ``bias = m``, so it is
  the identity in eval mode and, up to batch noise, in train mode: training starts from the input
  model's function. Until calibrated a re-inserted BN passes its input through.
* **training**: an ordinary BN (batch statistics in train mode, running statistics updated with
  ``momentum``; weight and bias trained, without weight decay).
* **write-back** (:meth:`BNReinsertion.fold`): ``s = weight / sqrt(running_var + eps)``;
  ``W' = W * s`` (per output channel), ``b' = (b - running_mean) * s + bias``. The written model has
  the input's nodes and op types (a Conv without a bias gets a bias initializer as its third input);
  it computes what the module computes in eval mode.

Which layers (``select``): ``"auto"`` re-inserts only in a graph without any BatchNormalization node
(an exported, folded model), on every Conv; and on every Gemm whose output is not a graph output;
``"all"`` also in graphs that have some BN, on the layers whose output no BN reads. A layer is left
alone when its weight or bias is not an initializer of its own (shared), or its output is a graph
output.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

from halp_onnx.errors import HalpError

from .executor import OnnxModule

STAGE = "finetune"

ATTR = "reinserted_bn"


class ReinsertedBN(nn.Module):
    """A BatchNorm over axis 1 of ``N x C (x ...)`` tensors; identity until :meth:`init_from`."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.group: Any = None  # the process group of the synchronised batch statistics (data parallel)

    def init_from(self, mean: torch.Tensor, var: torch.Tensor, *, out_mean: torch.Tensor | None = None,
                  out_std: torch.Tensor | None = None) -> None:
        """Identity at these statistics of its input: running stats = (mean, var), weight =
        sqrt(var + eps), bias = mean; or, given the output's ``out_mean`` / ``out_std`` (the layer's
        weights were divided by ``out_std``), weight = out_std * sqrt(var + eps) and bias = out_mean."""
        with torch.no_grad():
            mean = mean.to(self.running_mean)
            var = var.to(self.running_var).clamp_min(0)
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
            scale = torch.sqrt(var + self.eps)
            self.weight.copy_(scale if out_std is None else scale * out_std.to(scale))
            self.bias.copy_(mean if out_mean is None else out_mean.to(mean))
            self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            return x
        w, b = self.weight, self.bias
        rm, rv = self.running_mean, self.running_var
        dtype = x.dtype
        xf = x.float() if dtype != w.dtype else x  # autocast: normalise in float32, return the input's dtype
        if self.training and self.group is not None and _world() > 1:
            y = self._synced(xf)
        else:
            y = F.batch_norm(xf, rm, rv, w, b, self.training, self.momentum, self.eps)
        return y.to(dtype) if y.dtype != dtype else y

    def _synced(self, x: torch.Tensor) -> torch.Tensor:
        """Train mode under data parallelism: batch statistics over every rank's batch (as one process
        with the whole batch), differentiable through the all-reduce."""
        dims = [d for d in range(x.dim()) if d != 1]
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=x.dtype, device=x.device)
        part = torch.cat([count, x.sum(dims), (x * x).sum(dims)])
        total = _AllReduceSum.apply(part, self.group)
        c = x.shape[1]
        n, mean = total[0], total[1:1 + c] / total[0]
        var = (total[1 + c:] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * (n / max(float(n) - 1, 1.0)))
        shape = [1] * x.dim()
        shape[1] = c
        inv = torch.rsqrt(var + self.eps) * self.weight
        return (x - mean.reshape(shape)) * inv.reshape(shape) + self.bias.reshape(shape)

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode ``y = s * x + t`` per channel, float64."""
        w = self.weight.detach().double().cpu().numpy()
        b = self.bias.detach().double().cpu().numpy()
        rm = self.running_mean.detach().double().cpu().numpy()
        rv = self.running_var.detach().double().cpu().numpy()
        s = w / np.sqrt(rv + self.eps)
        return s, b - rm * s


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the backward sums the gradients over the ranks too (as SyncBatchNorm)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        import torch.distributed as dist

        out = grad.contiguous().clone()
        dist.all_reduce(out, group=ctx.group)  # its own group: DDP's gradient buckets run on the default one
        return out, None


def _destroy_group(group: Any) -> None:
    import torch.distributed as dist

    try:
        if dist.is_initialized():
            dist.destroy_process_group(group)
    except Exception:  # noqa: BLE001 - shutting down
        pass


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _attr(node: onnx.NodeProto, key: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == key:
            return onnx.helper.get_attribute_value(a)
    return default


def _key(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^0-9A-Za-z_]", "_", name) or "t"
    key, i = base, 1
    while key in taken:
        key = f"{base}_{i}"
        i += 1
    taken.add(key)
    return key


def candidate_layers(model: onnx.ModelProto, select: str = "auto") -> list[tuple[onnx.NodeProto, int]]:
    """(Conv / Gemm node, output channels) that get a re-inserted BN (see the module docstring)."""
    if select not in ("auto", "all", "off"):
        raise HalpError(f"reinsert_bn {select!r}: expected auto, all or off", stage=STAGE)
    graph = model.graph
    has_bn = any(n.op_type == "BatchNormalization" for n in graph.node)
    if select == "off" or (select == "auto" and has_bn):
        return []
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            if i:
                uses[i] = uses.get(i, 0) + 1
                readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    out: list[tuple[onnx.NodeProto, int]] = []
    for n in graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in ("Conv", "Gemm") or len(n.input) < 2:
            continue
        y = n.output[0]
        if y in outputs or not readers.get(y):
            continue
        if any(r.op_type == "BatchNormalization" for r in readers[y]):
            continue
        w = inits.get(n.input[1])
        if w is None or uses.get(w.name, 0) != 1 or len(w.dims) < 2:
            continue
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if bias is not None and (bias not in inits or uses.get(bias, 0) != 1):
            continue
        if n.op_type == "Gemm":
            if _attr(n, "transA", 0) not in (0, 1) or len(w.dims) != 2:
                continue
            channels = int(w.dims[0] if _attr(n, "transB", 0) else w.dims[1])
            if bias is not None:
                size = int(np.prod(inits[bias].dims)) if len(inits[bias].dims) else 1
                if size not in (1, channels):
                    continue
        else:
            channels = int(w.dims[0])
        if bias is not None and n.op_type == "Conv" and int(np.prod(inits[bias].dims)) != channels:
            continue
        out.append((n, channels))
    return out


class BNReinsertion:
    """Re-inserted BatchNorms on an :class:`OnnxModule` (see the module docstring).

    The BNs are a ``ModuleDict`` submodule of the module (``module.reinserted_bn``: moved, saved and
    restored with it); their hooks run before any hook already set on the same tensor (channel gates
    see the normalised output); the module's :meth:`~OnnxModule.write_back` folds them.
    """

    def __init__(self, module: OnnxModule, *, select: str = "auto", eps: float = 1e-5, momentum: float = 0.1,
                 unit: bool = True):
        if not isinstance(module, OnnxModule):
            raise HalpError(f"BN re-insertion needs an OnnxModule, got {type(module).__name__}", stage=STAGE)
        if module.bn_reinsertion is not None:
            raise HalpError("this module already has re-inserted BatchNorms", stage=STAGE)
        self.module = module
        self.unit = unit
        self.layers: dict[str, str] = {}  # output tensor -> key in the ModuleDict
        self.nodes: dict[str, str] = {}  # output tensor -> node name
        self.weights: dict[str, tuple[str, str | None, int]] = {}  # output tensor -> (weight, bias, out axis)
        bns = nn.ModuleDict()
        taken: set[str] = set()
        for node, channels in candidate_layers(module._source_model, select):
            key = _key(node.name or node.output[0], taken)
            bns[key] = ReinsertedBN(channels, eps, momentum)
            self.layers[node.output[0]] = key
            self.nodes[node.output[0]] = node.name
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            axis = (0 if _attr(node, "transB", 0) else 1) if node.op_type == "Gemm" else 0
            self.weights[node.output[0]] = (node.input[1], bias, axis)
        self.bns = bns
        self.by_tensor: dict[str, ReinsertedBN] = {}
        for t, k in self.layers.items():
            bn = bns[k]
            assert isinstance(bn, ReinsertedBN)
            self.by_tensor[t] = bn
        if not self.layers:
            return
        params = [p for p in module.parameters()]
        if params:
            bns.to(device=params[0].device)
        module.add_module(ATTR, bns)
        module.bn_reinsertion = self
        for tensor, key in self.layers.items():
            prev = module._tensor_hooks.get(tensor)
            module.set_tensor_hook(tensor, self._hook(self.by_tensor[tensor], prev))
        module.add_write_back_transform(self.fold)

    def __len__(self) -> int:
        return len(self.layers)

    @staticmethod
    def _hook(first: Callable[[torch.Tensor], torch.Tensor], prev: Callable[[torch.Tensor], torch.Tensor] | None
              ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``first`` (the BN), then the hook that was set on the tensor before (e.g. a channel gate)."""
        if prev is None:
            return first

        def hook(x: torch.Tensor) -> torch.Tensor:
            return prev(first(x))

        return hook

    def synchronise(self) -> None:
        """Under data parallelism: train-mode batch statistics over every rank's batch (as one process
        with the whole batch), through a process group of their own. Call on every rank."""
        import torch.distributed as dist

        if _world() > 1:
            group = dist.new_group()
            for bn in self.by_tensor.values():
                bn.group = group

    def release(self) -> None:
        """Destroy the process group of :meth:`synchronise` (call on every rank when training is done;
        left to the interpreter's exit, its threads may outlive it)."""
        groups = {id(bn.group): bn.group for bn in self.by_tensor.values() if bn.group is not None}
        for bn in self.by_tensor.values():
            bn.group = None
        for group in groups.values():
            _destroy_group(group)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.bns.parameters())

    @property
    def initialized(self) -> bool:
        return all(bool(bn.initialized) for bn in self.by_tensor.values())

    # -- init -----------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor], reduce=None) -> int:
        """Initialise every BN from the per-channel mean / variance of its layer's output over
        ``batches`` (prepared float inputs of the module, single-input). ``reduce(tensor)`` sums a
        float64 tensor over processes (data parallel), so every rank gets the same statistics.
        Returns the number of samples seen."""
        sums: dict[str, torch.Tensor] = {}
        bns = self.by_tensor
        if any(bool(bn.initialized) for bn in bns.values()):
            raise HalpError("the re-inserted BatchNorms are initialised already (calibrate once, before "
                            "training)", stage=STAGE)

        def recorder(t: str, bn: ReinsertedBN):
            def record(x: torch.Tensor) -> torch.Tensor:
                xd = x.detach().double()
                dims = [d for d in range(xd.dim()) if d != 1]
                n = torch.tensor([float(xd.numel() // xd.shape[1])], dtype=torch.float64, device=xd.device)
                part = torch.cat([n, xd.sum(dims), (xd * xd).sum(dims)])
                sums[t] = sums[t] + part if t in sums else part
                return x
            return record

        saved = dict(self.module._tensor_hooks)
        was_training = self.module.training
        self.module.eval()
        try:
            for t, bn in bns.items():
                prev = saved.get(t)
                rec = recorder(t, bn)
                self.module._tensor_hooks[t] = rec if prev is None else self._hook(rec, prev)
            samples = 0
            for x in batches:
                self.module(x)
                samples += int(x.shape[0])
        finally:
            self.module._tensor_hooks.clear()
            self.module._tensor_hooks.update(saved)
            self.module.train(was_training)
        for t, bn in bns.items():
            if t not in sums:
                raise HalpError(f"BN re-insertion: layer output {t!r} was not computed", stage=STAGE)
            v = sums[t]
            if reduce is not None:
                v = reduce(v)
            c = bn.running_mean.numel()
            n, s, q = v[0], v[1:1 + c], v[1 + c:]
            mean = s / n
            var = (q / n - mean * mean).clamp_min(0)
            if not self.unit:
                bn.init_from(mean.float(), var.float())
                continue
            # the layer's output to unit variance (the BN's weight carries the scale): the default LR
            # then moves these weights as it moves those of a graph that kept its BN
            std = torch.sqrt(var)
            ok = std > 1e-8 * (float(std.max()) + 1e-30)
            div = torch.where(ok, std, torch.ones_like(std))
            w_name, b_name, axis = self.weights[t]
            w = self.module.onnx_tensor(w_name)
            b = self.module.onnx_tensor(b_name) if b_name is not None else None
            if b is not None and b.numel() != c:  # a broadcast Gemm bias: leave the weights as they are
                bn.init_from(mean.float(), var.float())
                continue
            view = [1] * w.dim()
            view[axis] = c
            w.mul_((1.0 / div).to(w).reshape(view))
            if b is not None:
                b.mul_((1.0 / div).to(b).reshape(b.shape))
            bn.init_from((mean / div).float(), torch.ones_like(var).float(), out_mean=mean.float(), out_std=div.float())
        return samples

    # -- write-back -----------------------------------------------------------------------------
    def fold(self, model: onnx.ModelProto) -> None:
        """Fold every initialised BN into its layer's weight and bias in ``model`` (in place)."""
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        by_output = {n.output[0]: n for n in graph.node if n.output}
        taken = set(inits) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
        for tensor, key in self.layers.items():
            bn = self.by_tensor[tensor]
            node = by_output.get(tensor)
            if node is None or not bool(bn.initialized):
                continue
            s, t = bn.scale_shift()
            w_init = inits[node.input[1]]
            w = numpy_helper.to_array(w_init).astype(np.float64)
            dtype = w_init.data_type
            np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
            beta = 1.0
            if node.op_type == "Gemm":
                axis = 0 if _attr(node, "transB", 0) else 1
                beta = float(_attr(node, "beta", 1.0))
            else:
                axis = 0
            view = [1] * w.ndim
            view[axis] = len(s)
            w_init.CopyFrom(numpy_helper.from_array((w * s.reshape(view)).astype(np_dtype), w_init.name))
            bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if bias_name is not None and beta != 0.0:
                b_init = inits[bias_name]
                b = numpy_helper.to_array(b_init).astype(np.float64)
                shape = b.shape
                full = np.broadcast_to(b.reshape(-1), (len(s),)) * beta if b.size in (1, len(s)) else None
                if full is None:
                    raise HalpError(f"cannot fold the BN of {node.name}: bias shape {shape}", stage=STAGE)
                new = (full * s + t) / beta
                b_init.CopyFrom(numpy_helper.from_array(
                    new.reshape(shape if b.size == len(s) else (len(s),)).astype(np_dtype), bias_name))
            else:
                name = f"{node.name or tensor}_bias"
                k = 0
                while name in taken:
                    k += 1
                    name = f"{node.name or tensor}_bias_{k}"
                taken.add(name)
                graph.initializer.append(numpy_helper.from_array(t.astype(np_dtype), name))
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2] = name
                if node.op_type == "Gemm" and beta == 0.0:
                    for a in node.attribute:
                        if a.name == "beta":
                            a.f = 1.0


def reinsert_bn(module: OnnxModule, select: str = "auto", **kwargs: Any) -> BNReinsertion | None:
    """Re-insert BatchNorms on ``module`` (None when no layer qualifies)."""
    r = BNReinsertion(module, select=select, **kwargs)
    return r if len(r) else None
