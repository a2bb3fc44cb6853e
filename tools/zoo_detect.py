#!/usr/bin/env python
"""A second zoo: detection and segmentation models built from configs (random weights, no downloads).

    python tools/zoo_detect.py --out DIR [--models a,b,...] [--force]

Each model is exported with ``torch.onnx.export`` (TorchScript exporter, opset 17, batch 1, static
shapes) to ``DIR/<name>.onnx``:

* torchvision segmentation: ``fcn_resnet50``, ``deeplabv3_mobilenet_v3_large``,
  ``lraspp_mobilenet_v3_large`` (``weights=None, weights_backbone=None``; the ``"out"`` map only);
* torchvision detection without post-processing (anchors, box decoding and NMS are not exported):
  backbone (+ FPN) + head of ``retinanet_resnet50_fpn``, ``fcos_resnet50_fpn``, ``ssd300_vgg16``,
  ``ssdlite320_mobilenet_v3_large``; the heads' raw outputs (class logits, box regression, centre-ness)
  are the graph outputs. RetinaNet's and FCOS's heads apply the same convolutions at every FPN level;
* ultralytics YOLOv8n / YOLO11n detect, seg and pose from their yaml (``YOLO("yolov8n.yaml").model``),
  head in export mode (the decoded boxes, as ``yolo export`` emits them), 320x320; convolutions drawn
  Kaiming-normal and the head's output biases zeroed (torch's default init fades out over the SiLU
  layers and ``Detect.bias_init`` pins the scores at ~5e-5: random-weight outputs would be nearly
  constant, and an equivalence check on them would prove little);
* segmentation_models_pytorch ``Unet`` and ``FPN`` with a resnet18 encoder (``encoder_weights=None``).

Packages the zoo needs (not dependencies of halp-onnx): torchvision, ultralytics,
segmentation-models-pytorch. A model whose package is missing is reported and skipped.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _torchvision_segmentation(name: str, side: int) -> Callable[[], tuple[Any, tuple[int, ...]]]:
    def build():
        import torch
        import torchvision

        class Out(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x)["out"]

        net = torchvision.models.get_model(name, weights=None, weights_backbone=None, aux_loss=False)
        return Out(net), (1, 3, side, side)
    return build


def _torchvision_detection(name: str, side: int) -> Callable[[], tuple[Any, tuple[int, ...]]]:
    def build():
        import torch
        import torchvision

        class BackboneHead(torch.nn.Module):
            """Backbone (+ FPN) and head; no transform, anchors or post-processing."""

            def __init__(self, det):
                super().__init__()
                self.backbone, self.head = det.backbone, det.head

            def forward(self, x):
                feats = self.backbone(x)
                feats = list(feats.values()) if isinstance(feats, dict) else [feats]
                out = self.head(feats)
                return tuple(out[k] for k in sorted(out))

        kw: dict[str, Any] = {"weights": None, "weights_backbone": None}
        det = torchvision.models.get_model(name, **kw)
        return BackboneHead(det), (1, 3, side, side)
    return build


def _yolo(cfg: str, side: int = 320) -> Callable[[], tuple[Any, tuple[int, ...]]]:
    def build():
        import torch
        from ultralytics import YOLO

        net = YOLO(f"{cfg}.yaml").model
        for mod in net.modules():  # the head as `yolo export` runs it: decoded boxes, one tensor
            if isinstance(mod, torch.nn.Conv2d):  # torch's default init fades out over ~60 SiLU layers
                torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            if hasattr(mod, "export"):
                mod.export = True
            if hasattr(mod, "format"):
                mod.format = "onnx"
            # Detect.bias_init (class logits -10, box bins 1) makes random-weight outputs almost
            # constant (scores ~5e-5, every box the anchor +- 7.5 strides): zero those biases so that
            # the equivalence check sees the head react to the input
            for branch in ("cv2", "cv3", "cv4"):
                heads = getattr(mod, branch, None)
                for seq in heads if isinstance(heads, torch.nn.ModuleList) else ():
                    last = seq[-1] if isinstance(seq, torch.nn.Sequential) else None
                    if isinstance(last, torch.nn.Conv2d) and last.bias is not None:
                        torch.nn.init.zeros_(last.bias)
        return net, (1, 3, side, side)
    return build


def _smp(arch: str, side: int = 256) -> Callable[[], tuple[Any, tuple[int, ...]]]:
    def build():
        import segmentation_models_pytorch as smp

        net = getattr(smp, arch)(encoder_name="resnet18", encoder_weights=None, classes=2)
        return net, (1, 3, side, side)
    return build


MODELS: dict[str, tuple[str, Callable[[], tuple[Any, tuple[int, ...]]]]] = {
    "fcn_resnet50": ("torchvision seg", _torchvision_segmentation("fcn_resnet50", 224)),
    "deeplabv3_mobilenet_v3_large": ("torchvision seg", _torchvision_segmentation("deeplabv3_mobilenet_v3_large", 224)),
    "lraspp_mobilenet_v3_large": ("torchvision seg", _torchvision_segmentation("lraspp_mobilenet_v3_large", 224)),
    "retinanet_resnet50_fpn": ("torchvision det", _torchvision_detection("retinanet_resnet50_fpn", 320)),
    "fcos_resnet50_fpn": ("torchvision det", _torchvision_detection("fcos_resnet50_fpn", 320)),
    "ssd300_vgg16": ("torchvision det", _torchvision_detection("ssd300_vgg16", 300)),
    "ssdlite320_mobilenet_v3_large": ("torchvision det", _torchvision_detection("ssdlite320_mobilenet_v3_large", 320)),
    **{name: ("ultralytics", _yolo(name)) for name in (
        "yolov8n", "yolov8n-seg", "yolov8n-pose", "yolo11n", "yolo11n-seg", "yolo11n-pose")},
    "smp_unet_resnet18": ("smp", _smp("Unet")),
    "smp_fpn_resnet18": ("smp", _smp("FPN")),
}


def export(name: str, out_dir: str | Path, *, force: bool = False) -> Path:
    """Export one zoo model to ``out_dir/<name>.onnx`` (kept if already there, unless ``force``)."""
    import torch

    from bench.zoo import export_torch_module, redraw_degenerate_weights

    path = Path(out_dir) / f"{name}.onnx"
    if path.exists() and not force:
        return path
    torch.manual_seed(0)
    module, shape = MODELS[name][1]()
    module = module.eval()
    redraw_degenerate_weights(module)
    x = torch.randn(*shape)
    with torch.no_grad():
        out = module(x)
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    names = ("output",) if n_out == 1 else tuple(f"output{i}" for i in range(n_out))
    export_torch_module(module, x, path, "torchscript", opset=17, input_names=("images",), output_names=names)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the exported ONNX files")
    ap.add_argument("--models", help=f"comma-separated subset of: {', '.join(MODELS)}")
    ap.add_argument("--force", action="store_true", help="export again even if the file exists")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown models: {', '.join(unknown)}")
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            path = export(name, args.out, force=args.force)
            print(f"{name:32} ok      {time.perf_counter() - t0:6.1f}s  {path.stat().st_size / 1e6:7.1f} MB", flush=True)
        except Exception as err:  # one row per model, the run goes on
            failed += 1
            print(f"{name:32} FAILED  {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
