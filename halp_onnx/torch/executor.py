"""Differentiable torch executor of ONNX graphs (the torch bridge). Why not onnx2torch 1.5.15 (tried):
- TorchScript export, opset 17, random weights: resnet18, mobilenet_v3_small, efficientnet_b0 fail to
  convert (KeyError on a Conv bias: the exporter shares equal initializers through Identity nodes);
  swin_t and vit_b_16 convert and match onnxruntime (~1e-6).
- dynamo export, opset 18: resnet18/mobilenet_v3_small/convnext_tiny fail (no ReduceMean-18 converter),
  swin_t (no Pad-18), vit_b_16 (Reshape allowzero=1 not implemented).
- Names not kept: parameters become "conv1/Conv.weight" (0 ONNX initializer names); only Conv/Gemm
  weights are Parameters (vit_b_16: 4 of 80 float initializers, swin_t: 8 of 82; MatMul/LayerNorm
  weights, class_token are "onnx_initializer_k" buffers); no write-back into the ONNX graph.
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import onnx
import torch
from onnx import TensorProto
from torch import nn

from halp_onnx.errors import HalpError

from .lower import lowering_for, norm_domain
from .lower._common import FLOAT_TYPES, ONNX_TO_TORCH_DTYPE, UnsupportedOp, attrs_of, tensor_from_proto
from .lower.misc import constant_value

STAGE = "torch-bridge"

TensorHook = Callable[[torch.Tensor], torch.Tensor]


def _sanitize(name: str) -> str:
    key = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if not key or key[0].isdigit():
        key = "t_" + key
    return key


def _unique_key(name: str, taken: set[str], reserved: object) -> str:
    base = _sanitize(name)
    key, i = base, 1
    while key in taken or hasattr(reserved, key):
        key = f"{base}_{i}"
        i += 1
    taken.add(key)
    return key


def _node_label(node: onnx.NodeProto) -> str:
    name = node.name or "<unnamed>"
    out = next((o for o in node.output if o), "")
    return f"node '{name}' (op {node.domain + '::' if node.domain else ''}{node.op_type}, output '{out}')"


def _tensor_to_proto(value: torch.Tensor, like: onnx.TensorProto) -> onnx.TensorProto:
    """``value`` as a TensorProto with the name and data type of ``like``."""
    t = value.detach().to("cpu")
    dtype = like.data_type
    if dtype == TensorProto.BFLOAT16:
        raw = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    else:
        tt = ONNX_TO_TORCH_DTYPE.get(dtype)
        if tt is None:
            raise HalpError(f"cannot write back initializer {like.name!r} of dtype "
                            f"{TensorProto.DataType.Name(dtype)}", stage=STAGE)
        arr = t.to(tt).contiguous().numpy()
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    out = onnx.helper.make_tensor(like.name, dtype, list(t.shape), raw, raw=True)
    if like.doc_string:
        out.doc_string = like.doc_string
    return out


class OnnxModule(nn.Module):
    """Executes an ONNX graph node by node with torch ops, differentiably.

    * Every float initializer is an ``nn.Parameter`` in ``self.params`` (a ParameterDict keyed by a
      sanitized name; :meth:`named_onnx_parameters` maps back to the exact ONNX names). Scalar float
      initializers (0-d or one element: exporter constants such as ``sqrt(2)`` or ReLU6 bounds) are
      Parameters with ``requires_grad=False`` (PRelu slopes excepted), so fine-tuning leaves them be.
    * BatchNormalization running mean/var initializers, non-float initializers and Constant node
      values are buffers in ``self.consts``.
    * ``train_bn``: in ``train()`` mode BatchNormalization uses batch statistics and updates the
      running-stat buffers (ONNX momentum m: ``running = m * running + (1 - m) * batch``, batch var
      unbiased as in torch.nn.BatchNorm); ``train_bn=False`` keeps BN on running stats always.
    * :meth:`set_tensor_hook` replaces a named tensor by ``fn(tensor)`` when it is produced
      (channel gates for Taylor importance); :meth:`write_back` stores the current values into a
      copy of the ONNX model; :meth:`add_write_back_transform` adds edits to what it returns
      (:mod:`halp_onnx.torch.bn_reinsert` folds its re-inserted BatchNorms there).
    """

    def __init__(self, model: onnx.ModelProto, *, train_bn: bool = True):
        super().__init__()
        if not isinstance(model, onnx.ModelProto):
            raise HalpError(f"OnnxModule expects an onnx.ModelProto, got {type(model).__name__}", stage=STAGE)
        self.train_bn = train_bn
        self._source_model = model
        if len(model.functions):
            try:
                from onnx import inliner

                model = inliner.inline_local_functions(model)
            except Exception as exc:  # pragma: no cover - depends on onnx version
                raise HalpError(f"cannot inline the model's local functions: {exc}", stage=STAGE) from exc
        graph = model.graph
        self._opsets = {norm_domain(o.domain): o.version for o in model.opset_import}

        init_set = {t.name for t in graph.initializer}
        bn_stats = self._bn_stat_initializers(graph, init_set, train_bn)
        prelu_slopes = {n.input[1] for n in graph.node if n.op_type == "PRelu" and len(n.input) > 1}

        self.params = nn.ParameterDict()
        self.consts = nn.Module()
        self._param_keys: dict[str, str] = {}   # ONNX name -> key in self.params
        self._buffer_keys: dict[str, str] = {}  # ONNX name -> key in self.consts
        taken_p: set[str] = set()
        taken_b: set[str] = set()
        for t in graph.initializer:
            try:
                value = tensor_from_proto(t)
            except Exception as exc:
                raise HalpError(f"cannot load initializer {t.name!r}: {exc}", stage=STAGE) from exc
            if t.data_type in FLOAT_TYPES and t.name not in bn_stats:
                key = _unique_key(t.name, taken_p, self.params)
                # scalar constants of the graph (0-d / one element) are frozen; PRelu slopes are not
                trainable = value.numel() > 1 or t.name in prelu_slopes
                self.params[key] = nn.Parameter(value, requires_grad=trainable)
                self._param_keys[t.name] = key
            else:
                key = _unique_key(t.name, taken_b, self.consts)
                self.consts.register_buffer(key, value)
                self._buffer_keys[t.name] = key
        if len(graph.sparse_initializer):
            raise HalpError("sparse initializers are not supported", stage=STAGE)

        self.input_names = [i.name for i in graph.input if i.name not in init_set]
        self.output_names = [o.name for o in graph.output]

        # --- topological order (stable) and per-node runners, all errors at construction --------
        available = set(init_set) | set(self.input_names)
        producers: dict[str, int] = {}
        for idx, node in enumerate(graph.node):
            for o in node.output:
                if o:
                    producers[o] = idx
        order = self._toposort(graph, producers, available)

        self._steps: list[tuple[str, Callable, list[str | None], list[str]]] = []
        for idx in order:
            node = graph.node[idx]
            for a in node.attribute:
                if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                    raise HalpError(f"unsupported op {node.op_type} with subgraphs at {_node_label(node)}", stage=STAGE)
            domain = norm_domain(node.domain)
            version = self._opsets.get(domain)
            builder = lowering_for(domain, node.op_type, version)
            if builder is None:
                raise HalpError(f"unsupported op {node.op_type} at {_node_label(node)}", stage=STAGE)
            try:
                attrs = attrs_of(node)
                if node.op_type == "Constant" and domain == "":
                    value = constant_value(attrs)
                    out = node.output[0]
                    key = _unique_key(out, taken_b, self.consts)
                    self.consts.register_buffer(key, value)
                    self._buffer_keys[out] = key
                    continue
                run = builder(node, attrs, version if version is not None else 1)
            except UnsupportedOp as exc:
                raise HalpError(f"unsupported {node.op_type} at {_node_label(node)}: {exc}", stage=STAGE) from exc
            except HalpError:
                raise
            except Exception as exc:
                raise HalpError(f"cannot convert {_node_label(node)}: {exc}", stage=STAGE) from exc
            ins = [i if i else None for i in node.input]
            while ins and ins[-1] is None:
                ins.pop()
            self._steps.append((_node_label(node), run, ins, list(node.output)))

        known = set(init_set) | set(self.input_names) | set(producers)
        for o in self.output_names:
            if o not in known:
                raise HalpError(f"graph output {o!r} is never produced", stage=STAGE)

        # free intermediates after their last use (outputs and stored tensors are kept)
        keep = set(self.output_names) | set(self._param_keys) | set(self._buffer_keys)
        last_use: dict[str, int] = {}
        for s, (_, _, ins, _) in enumerate(self._steps):
            for i in ins:
                if i is not None:
                    last_use[i] = s
        self._free_after: list[list[str]] = [[] for _ in self._steps]
        for name, s in last_use.items():
            if name not in keep:
                self._free_after[s].append(name)

        self._tensor_hooks: dict[str, TensorHook] = {}
        self._all_tensor_names = known | set(self._buffer_keys)
        # set by halp_onnx.torch.bn_reinsert: BatchNorms re-inserted after folded layers, folded on write-back
        self.bn_reinsertion: Any = None
        self._write_back_transforms: list[Callable[[onnx.ModelProto], None]] = []

    @staticmethod
    def _bn_stat_initializers(graph: onnx.GraphProto, init_set: set[str], train_bn: bool) -> set[str]:
        """Initializers used only as BatchNormalization mean/var inputs (also through Identity chains:
        the TorchScript exporter shares equal initializers through Identity nodes). One that is also
        used otherwise (e.g. deduplicated with a BN bias of zeros) stays a Parameter, not updated."""
        identity_src = {n.output[0]: n.input[0] for n in graph.node
                        if n.op_type == "Identity" and n.domain in ("", "ai.onnx") and n.input and n.output}

        def root(name: str) -> str:
            seen = set()
            while name in identity_src and name not in seen:
                seen.add(name)
                name = identity_src[name]
            return name

        stat_users: dict[str, list[str]] = {}
        other_use: set[str] = set()
        for n in graph.node:
            if n.op_type == "Identity" and n.domain in ("", "ai.onnx"):
                continue
            is_bn = n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")
            for i, inp in enumerate(n.input):
                r = root(inp) if inp else inp
                if r not in init_set:
                    continue
                if is_bn and i in (3, 4):
                    stat_users.setdefault(r, []).append(n.name or n.output[0])
                else:
                    other_use.add(r)
        if train_bn:
            shared = {k: v for k, v in stat_users.items() if len(v) > 1 or k in other_use}
            if shared:
                name, nodes = next(iter(shared.items()))
                warnings.warn(f"torch-bridge: {len(shared)} BatchNormalization running-stat initializer(s) are "
                              f"shared (e.g. {name!r}, used by {nodes[:3]}{' and by other ops' if name in other_use else ''}); "
                              "shared statistics used elsewhere are not updated in train mode, others are updated "
                              "by every BN node that reads them", stacklevel=3)
        return {k for k in stat_users if k not in other_use}

    @staticmethod
    def _toposort(graph: onnx.GraphProto, producers: dict[str, int], available: set[str]) -> list[int]:
        n = len(graph.node)
        deps: list[set[int]] = []
        users: list[list[int]] = [[] for _ in range(n)]
        for idx, node in enumerate(graph.node):
            d = set()
            for i in node.input:
                if not i or i in available:
                    continue
                p = producers.get(i)
                if p is None:
                    raise HalpError(f"tensor {i!r} consumed by {_node_label(node)} is never produced", stage=STAGE)
                if p != idx:
                    d.add(p)
            deps.append(d)
            for p in d:
                users[p].append(idx)
        remaining = [len(d) for d in deps]
        import heapq

        ready = [i for i in range(n) if remaining[i] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for u in users[i]:
                remaining[u] -= 1
                if remaining[u] == 0:
                    heapq.heappush(ready, u)
        if len(order) != n:
            stuck = next(graph.node[i] for i in range(n) if remaining[i] > 0)
            raise HalpError(f"graph has a cycle through {_node_label(stuck)}", stage=STAGE)
        return order

    # ------------------------------------------------------------------------------------------
    # parameters / buffers

    def named_onnx_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(exact ONNX initializer name, Parameter) for every float initializer held as a Parameter."""
        for name, key in self._param_keys.items():
            yield name, self.params[key]

    def named_onnx_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(ONNX tensor name, buffer): BN running stats, non-float initializers, Constant outputs."""
        for name, key in self._buffer_keys.items():
            yield name, getattr(self.consts, key)

    def onnx_tensor(self, name: str) -> torch.Tensor:
        """The Parameter or buffer that holds initializer / Constant ``name``."""
        if name in self._param_keys:
            return self.params[self._param_keys[name]]
        if name in self._buffer_keys:
            return getattr(self.consts, self._buffer_keys[name])
        raise KeyError(name)

    @property
    def parameter_names(self) -> dict[str, str]:
        """Map ONNX initializer name -> key in ``self.params``."""
        return dict(self._param_keys)

    # ------------------------------------------------------------------------------------------
    # tensor hooks

    def set_tensor_hook(self, tensor_name: str, fn: TensorHook) -> None:
        """When ``tensor_name`` is produced during forward, replace it by ``fn(tensor)``."""
        if tensor_name not in self._all_tensor_names:
            raise HalpError(f"no tensor named {tensor_name!r} in the graph", stage=STAGE)
        self._tensor_hooks[tensor_name] = fn

    def clear_tensor_hooks(self) -> None:
        self._tensor_hooks.clear()

    # ------------------------------------------------------------------------------------------
    # execution

    def _feeds(self, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
            feeds = dict(args[0])
        else:
            if len(args) > len(self.input_names):
                raise HalpError(f"got {len(args)} inputs, the graph takes {len(self.input_names)} "
                                f"({', '.join(self.input_names)})", stage=STAGE)
            feeds = dict(zip(self.input_names, args))
            feeds.update(kwargs)
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise HalpError(f"missing graph input(s) {missing}", stage=STAGE)
        extra = [n for n in feeds if n not in self.input_names]
        if extra:
            raise HalpError(f"unknown graph input(s) {extra}; inputs are {self.input_names}", stage=STAGE)
        return {k: (torch.from_numpy(np.asarray(v)) if not isinstance(v, torch.Tensor) else v) for k, v in feeds.items()}

    def forward(self, *args: Any, **kwargs: Any):
        env: dict[str, Any] = {}
        for name, key in self._param_keys.items():
            env[name] = self.params[key]
        for name, key in self._buffer_keys.items():
            env[name] = getattr(self.consts, key)
        hooks = self._tensor_hooks
        for name, value in self._feeds(args, kwargs).items():
            env[name] = hooks[name](value) if name in hooks else value
        if hooks:
            for name in list(hooks):
                if name in self._param_keys or name in self._buffer_keys:
                    env[name] = hooks[name](env[name])

        for s, (label, run, ins, outs) in enumerate(self._steps):
            try:
                args_ = [env[i] if i is not None else None for i in ins]
                result = run(self, *args_)
            except HalpError:
                raise
            except Exception as exc:
                raise HalpError(f"{label} failed: {type(exc).__name__}: {exc}", stage=STAGE) from exc
            if isinstance(result, (tuple, list)):
                for o, v in zip(outs, result):
                    if o:
                        env[o] = hooks[o](v) if o in hooks else v
            else:
                o = outs[0]
                env[o] = hooks[o](result) if o in hooks else result
            for name in self._free_after[s]:
                env.pop(name, None)

        out = tuple(env[o] for o in self.output_names)
        return out[0] if len(out) == 1 else out

    # ------------------------------------------------------------------------------------------
    # write-back

    def write_back(self, model: onnx.ModelProto | None = None) -> onnx.ModelProto:
        """A copy of ``model`` (default: the model this module was built from) with every
        initializer replaced by the current Parameter/buffer value (same names, same dtypes).
        Initializers this module does not hold are copied unchanged; ``model`` is not modified."""
        src = self._source_model if model is None else model
        out = onnx.ModelProto()
        out.CopyFrom(src)
        for init in out.graph.initializer:
            if init.name in self._param_keys or init.name in self._buffer_keys:
                init.CopyFrom(_tensor_to_proto(self.onnx_tensor(init.name), init))
        for fn in self._write_back_transforms:
            fn(out)
        return out

    def add_write_back_transform(self, fn: Callable[[onnx.ModelProto], None]) -> None:
        """Call ``fn(model)`` on every model :meth:`write_back` returns, after the initializers are
        written (e.g. folding re-inserted BatchNorms into the layers' weights); ``fn`` edits in place."""
        self._write_back_transforms.append(fn)


def write_back(module: OnnxModule, model: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Function form of :meth:`OnnxModule.write_back`."""
    return module.write_back(model)
