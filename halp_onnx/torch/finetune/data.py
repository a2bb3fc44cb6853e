"""The torch side of data feeding: reading the models and their input sizes, turning the data
argument of :func:`~halp_onnx.torch.finetune.finetune` into an :class:`~halp_onnx.data.ImageData`,
and the :class:`Trainer` methods that move uint8 batches to the device, augment them (random crop,
horizontal flip) and normalise them."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from halp_onnx.data import ImageData, load_data
from halp_onnx.errors import HalpError

from ..executor import OnnxModule
from .config import STAGE, FinetuneConfig
from .distributed import DistInfo


def _load_onnx(model: Any, what: str) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    p = Path(model)
    if not p.is_file():
        raise HalpError(f"{what} {p}: no such file", stage=STAGE)
    try:
        return onnx.load(str(p))
    except Exception as exc:
        raise HalpError(f"{what} {p}: cannot read the ONNX model ({type(exc).__name__}: {exc})", stage=STAGE) from None


def _input_dims(model: onnx.ModelProto, name: str) -> list[int | None]:
    for vi in model.graph.input:
        if vi.name == name:
            return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return []


def static_input_size(model: onnx.ModelProto | OnnxModule) -> tuple[int, int] | None:
    """``(H, W)`` of an ``N x C x H x W`` model input when both are fixed, else None."""
    if isinstance(model, OnnxModule):
        names, model = model.input_names, model._source_model
    else:
        init = {t.name for t in model.graph.initializer}
        names = [i.name for i in model.graph.input if i.name not in init]
    if len(names) != 1:
        return None
    dims = _input_dims(model, names[0])
    if len(dims) == 4 and dims[2] and dims[3]:
        return int(dims[2]), int(dims[3])
    return None


def _mix_seed(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _as_data(data: Any, what: str, size: tuple[int, int] | None) -> ImageData:
    if isinstance(data, ImageData):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_data(data, size=size)
    if isinstance(data, tuple) and len(data) == 2:
        images, labels = data
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise HalpError(f"{what}: expected uint8 N x H x W x C images, got {images.shape} {images.dtype}",
                            stage=STAGE)
        labels = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels is not None and len(labels) != len(images):
            raise HalpError(f"{what}: {len(images)} images but {len(labels)} labels", stage=STAGE)
        return ImageData(images, labels, None, what, tuple(images.shape[1:]))
    raise HalpError(f"{what}: expected an ImageData, a path or (images, labels), got {type(data).__name__}",
                    stage=STAGE)


class BatchMixin:
    """The batch methods of :class:`~halp_onnx.torch.finetune.Trainer` (which sets these attributes)."""

    config: FinetuneConfig
    dist: DistInfo
    device: torch.device
    global_step: int
    _mean: torch.Tensor
    _std: torch.Tensor
    _n_channels: int

    # -- data -----------------------------------------------------------------------------------
    def prepare(self, images: Any, train: bool = False, *, step: int | None = None) -> torch.Tensor:
        """uint8 ``N x H x W x C`` images (numpy or tensor) -> float ``N x C x H x W`` on the device:
        ``train`` applies the configured augmentation (seeded by ``seed``, ``step`` (default the
        current step) and the rank), then ``(x / 255 - mean) / std``."""
        t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
        if t.dtype != torch.uint8 or t.ndim != 4:
            raise HalpError(f"prepare expects uint8 N x H x W x C images, got {tuple(t.shape)} {t.dtype}",
                            stage=STAGE)
        if self._n_channels not in (1, t.shape[-1]):
            raise HalpError(f"--mean/--std have {self._n_channels} values but the images have {t.shape[-1]} "
                            "channels", stage=STAGE)
        if self.device.type == "cuda" and t.device.type == "cpu":
            t = t.pin_memory()
        x = t.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if train and self.config.augment:
            x = self._augment(x, self.global_step if step is None else step)
        return ((x - self._mean) / self._std).contiguous()

    def _augment(self, x: torch.Tensor, step: int) -> torch.Tensor:
        cfg = self.config
        g = torch.Generator().manual_seed(_mix_seed(cfg.seed, step, self.dist.rank))
        n, c, h, w = x.shape
        mode = cfg.crop if cfg.crop != "auto" else ("pad" if max(h, w) <= 64 else "resized")
        flip = (torch.rand(n, generator=g) < 0.5) if cfg.flip else torch.zeros(n, dtype=torch.bool)
        if mode == "resized":
            lo, hi = cfg.resized_scale
            area = lo + (hi - lo) * torch.rand(n, generator=g)
            logr = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(n, generator=g)
            ratio = torch.exp(logr)
            sw = torch.sqrt(area * ratio).clamp(max=1.0)   # crop width / image width
            sh = torch.sqrt(area / ratio).clamp(max=1.0)
            cx = (1 - sw) * (2 * torch.rand(n, generator=g) - 1)
            cy = (1 - sh) * (2 * torch.rand(n, generator=g) - 1)
            sx = torch.where(flip, -sw, sw)
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sh, cy
            grid = F.affine_grid(theta.to(x.device), [n, c, h, w], align_corners=False)
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if mode == "pad" and cfg.pad > 0:
            p = cfg.pad
            oy = torch.randint(0, 2 * p + 1, (n,), generator=g).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=g).to(x.device)
            xp = F.pad(x, (p, p, p, p))  # black borders, as RandomCrop(padding=p) before Normalize
            rows = oy[:, None] + torch.arange(h, device=x.device)
            cols = ox[:, None] + torch.arange(w, device=x.device)
            batch = torch.arange(n, device=x.device)[:, None, None]
            x = xp[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if cfg.flip:
            fl = flip.to(x.device)[:, None, None, None]
            x = torch.where(fl, x.flip(3), x)
        return x

    def _as_input(self, x: Any, train: bool) -> torch.Tensor:
        if isinstance(x, np.ndarray) and x.dtype == np.uint8 or \
                isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
            return self.prepare(x, train=train)
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        return x.to(self.device, non_blocking=True)

    def _as_labels(self, y: Any) -> torch.Tensor | None:
        if y is None:
            return None
        if isinstance(y, np.ndarray):
            y = torch.from_numpy(y)
        return torch.as_tensor(y).to(self.device, dtype=torch.long, non_blocking=True)
