"""Model and data sources for tests and tools.

* torchvision classification models exported to ONNX (:func:`export_torchvision`,
  :func:`export_torch_module`, :func:`list_classification_models`);
* the CIFAR-10 ResNets of He et al. (2016) with "option A" shortcuts, exactly as described in
  ``../shared/README.md`` (:func:`cifar_resnet`, :func:`load_cifar_resnet`,
  :func:`export_cifar_resnet`);
* CIFAR-10 data helpers on numpy + Pillow only (:func:`load_cifar_jpeg`,
  :func:`load_cifar_exact1017`, :func:`normalize_cifar`) and an onnxruntime top-1 evaluator
  (:func:`top1_onnx`).

torch / torchvision / Pillow / onnxruntime are imported lazily inside the functions that need them,
so ``import bench.zoo`` works with only onnx and numpy installed.

Exported files carry ``metadata_props`` (keys prefixed ``halp_onnx.``) naming the exporter, the
source, the input shape, the seed and the requested opset; :func:`export_torchvision` reuses an
existing file only when those match and ``onnx.checker`` accepts it.

Files are always written as one self-contained ``.onnx`` file (local functions inlined, small
constant subgraphs folded so that e.g. every Pad has constant pads) that passes ``onnx.checker``.
Only a model whose weights do not fit in one protobuf (2 GiB; in torchvision ``regnet_y_128gf`` and
``vit_h_14``) gets a single external data file ``<name>.onnx.data`` beside it.

Input/output conventions: input ``"input"``, output ``"logits"``. torchvision exports have a fixed
batch of 1. The CIFAR ResNets are exported with a *dynamic batch*: axis 0 of ``input``
(``N x 3 x 32 x 32``) and ``logits`` (``N x 10``) is the symbolic dimension ``"N"``, so
:func:`top1_onnx` can evaluate them in large batches (it also handles fixed-batch models).
"""
from __future__ import annotations

import dataclasses
import functools
import io
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import onnx

from halp_onnx.errors import HalpError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "EXPORTERS",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CIFAR_CLASSES",
    "ExportResult",
    "export_torch_module",
    "export_torchvision",
    "list_classification_models",
    "torchvision_input_size",
    "cifar_resnet",
    "cifar_resnet_weights",
    "load_cifar_resnet",
    "export_cifar_resnet",
    "shared_dir",
    "load_cifar_jpeg",
    "load_cifar_exact1017",
    "normalize_cifar",
    "top1_onnx",
]

EXPORTERS = ("torchscript", "dynamo")
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_META = "halp_onnx."
# Above this many bytes of weights the model cannot be one protobuf (hard limit 2 GiB).
_SINGLE_FILE_LIMIT = 1_900_000_000
_STAGE = "zoo"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_torchvision` produced.

    ``seconds`` is the wall time of the export that wrote the file (model construction, export,
    post-processing), also when the file was reused (``cached=True``). ``fallback_reason`` says why
    the TorchScript exporter was not used when ``exporter == "dynamo"`` in automatic mode.
    """

    path: Path
    exporter: str
    seconds: float
    opset: int = 0
    cached: bool = False
    fallback_reason: str | None = None

    @property
    def external_data(self) -> bool:
        return Path(str(self.path) + ".data").exists()


# --------------------------------------------------------------------------------------------
# generic export


def _short_error(exc: BaseException, limit: int = 300) -> str:
    """One line: exception type and the first informative line of its message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    msg = lines[0] if lines else ""
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    try:
        item = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # pragma: no cover - exotic types
        item = 4
    return n * item


def _weights_nbytes(model: onnx.ModelProto) -> int:
    total = sum(_tensor_nbytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                total += _tensor_nbytes(a.t)
    return total


def _set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for k, v in keep + sorted(metadata.items()):
        p = model.metadata_props.add()
        p.key, p.value = k, str(v)


def _read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _name_batch_dim(model: onnx.ModelProto, names: Sequence[str], dim_name: str = "N") -> None:
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name in names and vi.type.tensor_type.shape.dim:
            d = vi.type.tensor_type.shape.dim[0]
            if not d.HasField("dim_value"):
                d.dim_param = dim_name


_NO_FOLD = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
            "Multinomial", "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty"}


def _used_names(graph: onnx.GraphProto, acc: set[str]) -> set[str]:
    """Every name read by a node of ``graph`` or of its subgraphs, and every graph output."""
    acc.update(o.name for o in graph.output)
    for node in graph.node:
        acc.update(node.input)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _used_names(a.g, acc)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    _used_names(g, acc)
    return acc


def _fold_small_constants(model: onnx.ModelProto, max_elems: int = 4096) -> int:
    """Evaluate nodes of the main graph whose inputs are all small constants (Constant nodes or
    initializers) and replace them by Constant nodes; drop Constant nodes left unused.

    The TorchScript exporter computes ``F.pad``'s pads with a ConstantOfShape/Concat/Slice/
    Transpose/Reshape/Cast chain that its own constant folding leaves alone; after this pass the
    pads of every Pad are a plain constant. Returns the number of nodes folded."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    opsets = list(model.opset_import)
    known: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        small = int(np.prod(t.dims)) <= max_elems if len(t.dims) else True
        if small and t.data_location != onnx.TensorProto.EXTERNAL:
            known[t.name] = numpy_helper.to_array(t)
    graph_outputs = {o.name for o in graph.output}
    new_nodes: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            try:
                known[node.output[0]] = _constant_value(node)
            except Exception:  # noqa: BLE001 - sparse or string constants are simply not folded
                pass
            new_nodes.append(node)
            continue
        inputs = [i for i in node.input if i]
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NO_FOLD and inputs
                    and all(i in known for i in inputs)
                    and not any(o in graph_outputs for o in node.output)
                    and all(known[i].size <= max_elems for i in inputs))
        if foldable:
            try:
                sub = helper.make_graph(
                    [node], "fold",
                    [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(known[i].dtype),
                                                   known[i].shape) for i in dict.fromkeys(inputs)],
                    [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o])
                outs = ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets)).run(
                    None, {i: known[i] for i in inputs})
                if all(np.asarray(v).size <= max_elems for v in outs):
                    names = [o for o in node.output if o]
                    for name, val in zip(names, outs):
                        val = np.asarray(val)
                        known[name] = val
                        new_nodes.append(helper.make_node(
                            "Constant", [], [name], name=f"{node.name or name}_folded",
                            value=numpy_helper.from_array(val, name)))
                    folded += 1
                    continue
            except Exception:
                pass
        new_nodes.append(node)
    if folded:
        del graph.node[:]
        graph.node.extend(new_nodes)
        # drop Constant nodes (and initializers) nothing reads any more, until stable
        while True:
            used = _used_names(graph, set())
            keep = [n for n in graph.node
                    if not (n.op_type == "Constant" and not any(o in used for o in n.output))]
            if len(keep) == len(graph.node):
                break
            del graph.node[:]
            graph.node.extend(keep)
        used = _used_names(graph, set())
        graph_inputs = {i.name for i in graph.input}
        inits = [t for t in graph.initializer if t.name in used or t.name in graph_inputs]
        if len(inits) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(inits)
    return folded


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    from onnx import numpy_helper

    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name == "value_float":
        return np.array(a.f, np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), np.float32)
    if a.name == "value_int":
        return np.array(a.i, np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), np.int64)
    raise ValueError(f"unsupported Constant attribute {a.name}")


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _save_checked(model: onnx.ModelProto, path: Path, work_dir: Path) -> None:
    """Save ``model`` as ``path`` (one file, or one ``.data`` file when over 2 GiB), check it with
    ``onnx.checker`` and move it into place."""
    tmp = work_dir / path.name
    data_name = path.name + ".data"
    external = _weights_nbytes(model) > _SINGLE_FILE_LIMIT
    if external:
        onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    else:
        onnx.save_model(model, str(tmp))
    onnx.checker.check_model(str(tmp))
    _remove(path)
    if external:
        shutil.move(str(work_dir / data_name), str(path.parent / data_name))
    else:
        _remove(path.parent / data_name)
    shutil.move(str(tmp), str(path))


def _export(module: Any, args: tuple, path: Path, exporter: str, *, opset: int,
            input_names: Sequence[str], output_names: Sequence[str], dynamic_batch: bool,
            metadata: dict[str, str] | None, t0: float | None) -> tuple[Path, int]:
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter() if t0 is None else t0
    input_names, output_names = list(input_names), list(output_names)
    with tempfile.TemporaryDirectory(prefix=".halp_export_", dir=path.parent) as tmpd:
        work = Path(tmpd)
        raw = work / "raw" / path.name
        raw.parent.mkdir()
        # Grad enabled on purpose: under no_grad nn.MultiheadAttention takes its fused fast path
        # (aten::_native_multi_head_attention), which the TorchScript exporter cannot export.
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                kw: dict[str, Any] = {}
                if dynamic_batch:
                    kw["dynamic_axes"] = {n: {0: "N"} for n in input_names + output_names}
                torch.onnx.export(module, args, str(raw), dynamo=False, opset_version=opset,
                                  input_names=input_names, output_names=output_names,
                                  do_constant_folding=True, **kw)
            else:
                kw = {}
                if dynamic_batch:
                    batch = torch.export.Dim("N", min=1)
                    kw["dynamic_shapes"] = tuple({0: batch} for _ in args)
                    # torch.export specialises a batch of 1: trace with a batch of 2
                    args = tuple(a.expand(2, *a.shape[1:]).contiguous()
                                 if a.shape[0] == 1 else a for a in args)
                # the dynamo exporter has no implementations below opset 18
                prog = torch.onnx.export(module, args, dynamo=True, opset_version=max(opset, 18),
                                         input_names=input_names, output_names=output_names,
                                         external_data=True, optimize=True, verbose=False, **kw)
                prog.save(str(raw), external_data=True)
                del prog
        model = onnx.load(str(raw))  # pulls any external data into memory
        shutil.rmtree(raw.parent)
        if len(model.functions):
            from onnx import inliner

            model = inliner.inline_local_functions(model)
            del model.functions[:]
        _fold_small_constants(model)
        if dynamic_batch:
            _name_batch_dim(model, input_names + output_names)
        meta = {f"{_META}exporter": exporter}
        meta.update(metadata or {})
        meta[f"{_META}export_seconds"] = f"{time.perf_counter() - t0:.3f}"
        _set_metadata(model, meta)
        opset_out = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        _save_checked(model, path, work)
    return path, opset_out


def export_torch_module(module: "torch.nn.Module", example_input: Any, path: str | os.PathLike,
                        exporter: str = "torchscript", *, opset: int = 17,
                        input_names: Sequence[str] = ("input",),
                        output_names: Sequence[str] = ("logits",),
                        dynamic_batch: bool = False,
                        metadata: dict[str, str] | None = None) -> Path:
    """Export ``module`` (put it in eval mode first) to one self-contained ONNX file at ``path``.

    ``example_input`` is a tensor or a tuple of tensors. ``exporter`` is ``"torchscript"``
    (``torch.onnx.export(dynamo=False)``) or ``"dynamo"`` (``dynamo=True``; it emits opset >= 18
    whatever ``opset`` says). With ``dynamic_batch`` axis 0 of every named input and output is the
    symbolic dimension ``"N"``. Local functions are inlined and the file passes ``onnx.checker``.
    """
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    out, _ = _export(module, args, Path(path), exporter, opset=opset, input_names=input_names,
                     output_names=output_names, dynamic_batch=dynamic_batch, metadata=metadata,
                     t0=None)
    return out


# --------------------------------------------------------------------------------------------
# torchvision


def list_classification_models() -> list[str]:
    """All classification models of torchvision (80 in torchvision 0.29), sorted."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_input_size(name: str) -> int:
    """Default square input side used for ``name``: 299 for inception_v3, else 224."""
    return 299 if name == "inception_v3" else 224


def _cached_result(path: Path, want: dict[str, str]) -> ExportResult | None:
    if not path.exists():
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
        meta = _read_metadata(model)
        if any(meta.get(k) != v for k, v in want.items()):
            return None
        onnx.checker.check_model(str(path))
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        return ExportResult(path=path, exporter=meta[f"{_META}exporter"],
                            seconds=float(meta.get(f"{_META}export_seconds", "nan")), opset=opset,
                            cached=True,
                            fallback_reason=meta.get(f"{_META}fallback_reason") or None)
    except Exception:
        return None


def export_torchvision(name: str, out_dir: str | os.PathLike, *, size: int | None = None,
                       seed: int = 0, opset: int = 17, exporter: str = "auto",
                       force: bool = False) -> ExportResult:
    """Export ``torchvision.models.get_model(name, weights=None)`` to ``out_dir/<name>.onnx``.

    The model is built after ``torch.manual_seed(seed)`` (random weights, reproducible), in eval
    mode, and exported at batch 1, input ``1x3xSxS`` named ``"input"`` (S = ``size`` or 224, 299 for
    inception_v3), output ``"logits"``. ``exporter="auto"`` tries TorchScript first and falls back
    to dynamo; ``"torchscript"``/``"dynamo"`` use only that one. An existing file exported with the
    same settings (and the same exporter unless ``"auto"``) that passes ``onnx.checker`` is reused
    unless ``force``. Raises :class:`HalpError` when no exporter succeeds.
    """
    if exporter not in ("auto",) + EXPORTERS:
        raise ValueError(f"exporter must be 'auto' or one of {EXPORTERS}, got {exporter!r}")
    side = int(size) if size is not None else torchvision_input_size(name)
    path = Path(out_dir) / f"{name}.onnx"
    want = {
        f"{_META}source": f"torchvision:{name}",
        f"{_META}input_shape": f"1x3x{side}x{side}",
        f"{_META}seed": str(seed),
        f"{_META}opset_requested": str(opset),
    }
    if not force:
        cached = _cached_result(path, want)
        if cached is not None and exporter in ("auto", cached.exporter):
            return cached

    import torch
    import torchvision

    order = EXPORTERS if exporter == "auto" else (exporter,)
    errors: dict[str, str] = {}
    for exp in order:
        t0 = time.perf_counter()
        try:
            torch.manual_seed(seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torchvision.models.get_model(name, weights=None).eval()
            gen = torch.Generator().manual_seed(seed)
            x = torch.randn(1, 3, side, side, generator=gen)
            meta = dict(want)
            if errors:
                meta[f"{_META}fallback_reason"] = "; ".join(f"{k}: {v}" for k, v in errors.items())
            out, opset_out = _export(model, (x,), path, exp, opset=opset, input_names=("input",),
                                     output_names=("logits",), dynamic_batch=False, metadata=meta,
                                     t0=t0)
            del model
            return ExportResult(path=out, exporter=exp, seconds=time.perf_counter() - t0,
                                opset=opset_out, cached=False,
                                fallback_reason=meta.get(f"{_META}fallback_reason"))
        except Exception as exc:  # noqa: BLE001 - reported, then the next exporter is tried
            errors[exp] = _short_error(exc)
    raise HalpError(f"cannot export torchvision model {name!r}: "
                    + "; ".join(f"{k}: {v}" for k, v in errors.items()), stage=_STAGE)


# --------------------------------------------------------------------------------------------
# CIFAR ResNets (../shared/README.md)


@functools.lru_cache(maxsize=None)
def _cifar_classes() -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class OptionAShortcut(nn.Module):
        """Option-A shortcut: every second pixel, then ``planes // 4`` zero channels each side.

        Exports as a Slice (steps 2 on H and W) followed by a Pad on the channel axis."""

        def __init__(self, planes: int):
            super().__init__()
            self.planes = planes

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.planes // 4
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))

        def extra_repr(self) -> str:
            return f"planes={self.planes}"

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, in_planes: int, planes: int, stride: int = 1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            if stride != 1 or in_planes != planes:
                self.shortcut: nn.Module = OptionAShortcut(planes)
            else:
                self.shortcut = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class CifarResNet(nn.Module):
        def __init__(self, depth: int, num_classes: int = 10):
            super().__init__()
            n = (depth - 2) // 6
            self.depth = depth
            self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            in_planes = 16
            for i, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
                blocks = []
                for s in [stride] + [1] * (n - 1):
                    blocks.append(BasicBlock(in_planes, planes, s))
                    in_planes = planes
                setattr(self, f"layer{i}", nn.Sequential(*blocks))
            self.linear = nn.Linear(64, num_classes)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer3(self.layer2(self.layer1(out)))
            out = F.adaptive_avg_pool2d(out, 1)  # global average pooling over the 8x8 map
            return self.linear(torch.flatten(out, 1))

    return type("CifarClasses", (), {"OptionAShortcut": OptionAShortcut,
                                     "BasicBlock": BasicBlock, "CifarResNet": CifarResNet})


def cifar_resnet(depth: int, num_classes: int = 10) -> "torch.nn.Module":
    """The CIFAR ResNet-``depth`` (depth = 6n + 2: 20, 32, 44, 56, 110, ...) with option-A shortcuts,
    random weights, in training mode (call ``.eval()``). Input 3x32x32 already normalised."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    return _cifar_classes().CifarResNet(depth, num_classes)


def cifar_resnet_weights(depth: int) -> Path | None:
    """``../shared/models/cifar10-resnet<depth>.npz`` if present, else None."""
    d = shared_dir()
    if d is None:
        return None
    p = d / "models" / f"cifar10-resnet{depth}.npz"
    return p if p.exists() else None


def load_cifar_resnet(depth: int, npz_path: str | os.PathLike | None = None) -> "torch.nn.Module":
    """:func:`cifar_resnet` with the state dict from ``npz_path`` (default: the shared pretrained
    weights), in eval mode. Every parameter and buffer except ``num_batches_tracked`` must be
    present with the right shape."""
    import torch

    if npz_path is None:
        npz_path = cifar_resnet_weights(depth)
        if npz_path is None:
            raise HalpError(f"no pretrained weights for CIFAR ResNet-{depth}: ../shared is absent",
                            stage=_STAGE)
    model = cifar_resnet(depth)
    with np.load(npz_path) as z:
        state = {k: torch.from_numpy(np.array(z[k])) for k in z.files}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise HalpError(f"{npz_path}: state dict does not match CIFAR ResNet-{depth} "
                        f"(missing {missing[:5]}, unexpected {list(unexpected)[:5]})",
                        stage=_STAGE)
    return model.eval()


def export_cifar_resnet(depth: int, out_path: str | os.PathLike, *,
                        npz: str | os.PathLike | None = None, exporter: str = "torchscript",
                        opset: int = 17, seed: int = 0, dynamic_batch: bool = True) -> Path:
    """Export CIFAR ResNet-``depth`` to ``out_path``.

    Weights from ``npz`` (e.g. :func:`cifar_resnet_weights`), or random (``torch.manual_seed(seed)``)
    when None. Eval mode; input ``"input"`` of shape ``N x 3 x 32 x 32`` (normalised with
    :func:`normalize_cifar`; normalisation is not part of the model), output ``"logits"``
    ``N x 10``. The batch axis is the symbolic dimension ``"N"`` unless ``dynamic_batch=False``
    (then 1). BatchNorm is folded into the convolutions by the exporter.
    """
    import torch

    if npz is not None:
        model = load_cifar_resnet(depth, npz)
    else:
        torch.manual_seed(seed)
        model = cifar_resnet(depth).eval()
    x = torch.zeros(1, 3, 32, 32)
    meta = {f"{_META}source": f"cifar_resnet:{depth}",
            f"{_META}weights": Path(npz).name if npz is not None else f"random(seed={seed})"}
    return export_torch_module(model, x, out_path, exporter, opset=opset, input_names=("input",),
                               output_names=("logits",), dynamic_batch=dynamic_batch,
                               metadata=meta)


def cifar_resnet_bn_onnx(depth: int, npz: str | os.PathLike | None = None, *, batch: int | str = "N"
                         ) -> onnx.ModelProto:
    """The pretrained CIFAR ResNet-``depth`` (default: the ../shared weights) built directly as ONNX
    with its BatchNormalization nodes kept (an exporter in eval mode folds them into the convs, which
    leaves nothing to train as BN when fine-tuning). Input ``"input"`` ``batch`` x 3 x 32 x 32, output
    ``"logits"``; no torch needed."""
    from halp_onnx.examples import cifar_resnet as build

    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    path = Path(npz) if npz is not None else cifar_resnet_weights(depth)
    with np.load(path) as z:
        weights = {k: z[k] for k in z.files}
    return build((depth - 2) // 6, weights=weights, batch=batch)


# --------------------------------------------------------------------------------------------
# CIFAR-10 data (numpy + Pillow only)


def shared_dir() -> Path | None:
    """The ``shared`` folder beside the repository root (``<repo>/../shared``), None if absent."""
    d = Path(__file__).resolve().parents[1].parent / "shared"
    return d if d.is_dir() else None


def _shared_file(*parts: str) -> Path:
    d = shared_dir()
    p = d.joinpath(*parts) if d is not None else None
    if p is None or not p.exists():
        raise FileNotFoundError(f"../shared/{'/'.join(parts)} is not available")
    return p


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=4)
def _decode_split(npz_path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with np.load(npz_path) as z:
        blob = z[f"{split}_jpeg"]
        offsets = z[f"{split}_offsets"]
        labels = z[f"{split}_labels"].astype(np.int64)
    n = len(offsets) - 1
    images: np.ndarray | None = None
    for i in range(n):
        jpg = blob[offsets[i]:offsets[i + 1]].tobytes()
        img = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
        if images is None:
            images = np.empty((n, *img.shape), dtype=np.uint8)
        images[i] = img
    assert images is not None
    return _readonly(images), _readonly(labels)


def load_cifar_jpeg(split: str = "test", path: str | os.PathLike | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from the JPEG npz (default ``../shared/data/cifar10-jpeg.npz``).

    Returns ``(images, labels)``: uint8 ``N x 32 x 32 x 3`` RGB and int64 ``N`` (10,000 test images in
    official order, or 50,000 training images sorted by class). Decoded once per process and
    cached; the arrays are read-only."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    p = Path(path) if path is not None else _shared_file("data", "cifar10-jpeg.npz")
    return _decode_split(str(Path(p).resolve()), split)


@functools.lru_cache(maxsize=2)
def _load_exact(npz_path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(npz_path) as z:
        return _readonly(np.array(z["images"], dtype=np.uint8)), _readonly(
            np.array(z["labels"], dtype=np.int64))


def load_cifar_exact1017(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first 1,017 CIFAR-10 test images, byte-exact (default
    ``../shared/data/cifar10-test-exact1017.npz``): uint8 ``1017 x 32 x 32 x 3`` RGB and int64
    labels; cached, read-only."""
    p = Path(path) if path is not None else _shared_file("data", "cifar10-test-exact1017.npz")
    return _load_exact(str(Path(p).resolve()))


def normalize_cifar(images: np.ndarray) -> np.ndarray:
    """uint8 ``N x H x W x 3`` RGB -> float32 ``N x 3 x H x W``: ``(x / 255 - mean) / std`` with
    mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected N x H x W x 3 images, got shape {x.shape}")
    mean = np.asarray(CIFAR_MEAN, dtype=np.float32)
    std = np.asarray(CIFAR_STD, dtype=np.float32)
    x = (x.astype(np.float32) / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def top1_onnx(model: str | os.PathLike | onnx.ModelProto, images_nchw: np.ndarray,
              labels: np.ndarray, batch: int = 256, *,
              providers: Sequence[str] | None = None) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of an ONNX classifier in onnxruntime.

    ``images_nchw`` are already normalised (:func:`normalize_cifar`); the first output must be
    ``N x classes`` logits. With a symbolic batch axis the images go in chunks of ``batch``; with a
    fixed batch ``b`` they go ``b`` at a time, the last chunk zero-padded."""
    import onnxruntime as ort

    x = np.asarray(images_nchw)
    if x.dtype == np.uint8:
        raise ValueError("top1_onnx expects normalised float NCHW images (see normalize_cifar)")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} images but {len(labels)} labels")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, opts, providers=list(providers or ["CPUExecutionProvider"]))
    inp = sess.get_inputs()[0]
    dim0 = inp.shape[0] if inp.shape else None
    fixed = dim0 if isinstance(dim0, int) and dim0 > 0 else None
    step = fixed or max(1, int(batch))
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    correct = 0
    for i in range(0, len(x), step):
        chunk = x[i:i + step].astype(dtype, copy=False)
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), dtype)])
        logits = sess.run(None, {inp.name: chunk})[0][:n]
        correct += int((logits.reshape(n, -1).argmax(axis=1) == labels[i:i + n]).sum())
    return correct / len(x) if len(x) else float("nan")


def redraw_degenerate_weights(module: "torch.nn.Module", seed: int = 0) -> int:
    """Redraw conv/linear weights whose initial scale makes random-weight outputs (nearly) independent
    of the input (ViT's zero head, GoogLeNet's std-0.01 convolutions), so that an equivalence check on
    the model has teeth. Returns how many weights were redrawn."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    redrawn = 0
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                w = m.weight
                fan_in = w[0].numel()
                if float(w.std()) < 0.5 / np.sqrt(fan_in):
                    w.copy_(torch.randn(w.shape, generator=gen) / np.sqrt(fan_in))
                    redrawn += 1
    return redrawn
