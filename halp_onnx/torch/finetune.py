"""Fine-tuning of pruned ONNX models with the torch bridge: distillation from a teacher (KD),
cross-entropy when labels exist, write-back into the ONNX graph.

* :class:`FinetuneConfig` holds every option (frozen; errors name the option).
* :class:`Trainer` is usable from your own loop::

      trainer = Trainer(student_onnx, teacher_onnx, FinetuneConfig(lr=0.01), total_steps=1000)
      for images, labels in my_batches:            # uint8 N x H x W x C, or prepared float tensors
          x = trainer.prepare(images, train=True)   # augment + normalise, on the trainer's device
          trainer.step(x, labels)                   # forward, KD + CE, backward, optimizer, LR
      tuned = trainer.student_onnx()                # onnx.ModelProto, same initializer names

  ``trainer.student`` is the student :class:`~halp_onnx.torch.OnnxModule` (never rebuilt, so tensor
  hooks installed on it stay in effect); ``trainer.add_loss(name, fn, weight)`` adds terms
  ``fn(trainer, x, y, logits) -> scalar``; ``trainer.callbacks`` are called as
  ``cb(trainer, step)`` after every optimizer step (``step`` = optimizer steps done so far);
  ``trainer.request_stop()`` ends :func:`finetune` after the current step.
* :func:`finetune` runs whole epochs over an :class:`~halp_onnx.data.ImageData`, with held-out
  evaluation, a progress bar, checkpoints and resume, and torchrun data parallelism.

Losses: ``kd_weight * KD + ce_weight * CE``, where KD is Hinton's distillation loss
``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (mean over the batch) and CE the
cross-entropy with the labels (only when labels are given). Without labels training is label-free KD.

Schedule: linear warm-up over ``warmup_epochs`` (per iteration), then cosine decay to
``final_lr_ratio * lr`` at the last step.

Data parallel: launched by ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised
(nccl on CUDA, gloo on CPU), the student is wrapped in DistributedDataParallel, every rank takes
``perm[rank::world]`` of each epoch's permutation, ``batch_size`` is per process, and only rank 0
writes checkpoints (and, in the CLI, the output model). Callbacks run on every rank and must act
the same on all of them.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from halp_onnx.data import ImageData, load_data, split
from halp_onnx.errors import HalpError

from .executor import OnnxModule

STAGE = "finetune"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "halp-onnx-finetune"
CHECKPOINT_VERSION = 1

Callback = Callable[["Trainer", int], Any]
LossTerm = Callable[["Trainer", torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning options. ``lr``/``weight_decay`` None pick per-optimizer defaults (SGD: 0.01 and
    1e-4, AdamW: 1e-3 and 0.01); weight decay applies to weights with 2+ dims only."""

    epochs: float = 1.0                 # fractions allowed (0.5 = half an epoch)
    batch_size: int = 128               # per process
    optimizer: str = "sgd"              # "sgd" | "adamw"
    lr: float | None = None
    momentum: float = 0.9               # SGD momentum (Nesterov); AdamW beta1
    weight_decay: float | None = None
    warmup_epochs: float = 0.1          # linear warm-up per iteration, fractions allowed
    final_lr_ratio: float = 0.0         # cosine decays to lr * final_lr_ratio
    kd_weight: float = 1.0
    ce_weight: float = 1.0
    temperature: float = 4.0
    label_smoothing: float = 0.0
    augment: bool = True                # random crop + horizontal flip
    crop: str = "auto"                  # "auto" (pad for <= 64 px, else resized) | "pad" | "resized" | "none"
    pad: int = 4                        # padding of the random crop
    resized_scale: tuple[float, float] = (0.25, 1.0)  # area share of the random-resized crop
    flip: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN  # of [0, 1] pixels
    std: tuple[float, ...] = IMAGENET_STD
    amp: bool | None = None             # None: on for CUDA (bf16 where supported, else fp16 + GradScaler)
    device: str | None = None           # None: cuda if available (cuda:LOCAL_RANK under torchrun), else cpu
    seed: int = 0
    holdout: float | None = None        # None: 0.1 of labeled data, 0 for unlabeled
    eval_every: int = 1                 # epochs; 0 = no evaluation
    eval_at_start: bool = True
    eval_batch_size: int = 256
    max_steps: int | None = None        # cap on optimizer steps (the schedule ends there)
    clip_grad_norm: float | None = None
    checkpoint: str | None = None       # written at every epoch end, every checkpoint_every steps, at the end
    checkpoint_every: int = 0           # steps; 0 = epoch ends only
    resume: str | None = None
    num_workers: int = 0                # threads decoding lazily read image files
    cache_limit_gb: float = 4.0         # decode an image folder up front when it fits in this many GiB
    log_every: int = 10                 # steps between progress-bar updates (each syncs the device)

    def __post_init__(self) -> None:
        def bad(option: str, why: str) -> HalpError:
            return HalpError(f"{option} {getattr(self, option)!r}: {why}", stage=STAGE)

        if not (isinstance(self.epochs, (int, float)) and self.epochs > 0 and math.isfinite(self.epochs)):
            raise bad("epochs", "must be a positive number")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise bad("batch_size", "must be a positive integer")
        if self.optimizer not in ("sgd", "adamw"):
            raise bad("optimizer", "expected 'sgd' or 'adamw'")
        if self.lr is not None and not self.lr > 0:
            raise bad("lr", "must be positive")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise bad("weight_decay", "must be >= 0")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "must be in [0, 1)")
        if not self.warmup_epochs >= 0:
            raise bad("warmup_epochs", "must be >= 0")
        if not 0 <= self.final_lr_ratio <= 1:
            raise bad("final_lr_ratio", "must be in [0, 1]")
        for opt in ("kd_weight", "ce_weight"):
            if not getattr(self, opt) >= 0:
                raise bad(opt, "must be >= 0")
        if not self.temperature > 0:
            raise bad("temperature", "must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "must be in [0, 1)")
        if self.crop not in ("auto", "pad", "resized", "none"):
            raise bad("crop", "expected auto, pad, resized or none")
        if self.pad < 0:
            raise bad("pad", "must be >= 0")
        lo, hi = self.resized_scale
        if not 0 < lo <= hi <= 1:
            raise bad("resized_scale", "expected 0 < min <= max <= 1")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise bad("mean", f"has {len(self.mean)} values but std has {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise bad("std", "must not contain 0")
        if self.holdout is not None and not 0 <= self.holdout < 1:
            raise bad("holdout", "expected a share in [0, 1)")
        if self.eval_every < 0:
            raise bad("eval_every", "must be >= 0")
        if self.eval_batch_size < 1:
            raise bad("eval_batch_size", "must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", "must be a positive integer")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise bad("clip_grad_norm", "must be positive")
        if self.checkpoint_every < 0:
            raise bad("checkpoint_every", "must be >= 0")
        if self.num_workers < 0:
            raise bad("num_workers", "must be >= 0")
        if self.log_every < 1:
            raise bad("log_every", "must be >= 1")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (0.01 if self.optimizer == "sgd" else 1e-3)

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 1e-4 if self.optimizer == "sgd" else 0.01

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)


@dataclass(frozen=True)
class FinetuneResult:
    """``model``: the tuned ONNX model; ``history``: one dict per epoch (epoch, steps, loss, kd, ce,
    and any extra loss terms, lr, throughput in img/s, seconds, eval_top1 or None);
    ``initial_eval_top1``: held-out top-1 before training (None without an eval set)."""

    model: onnx.ModelProto
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    steps: int = 0
    initial_eval_top1: float | None = None

    @property
    def eval_top1(self) -> float | None:
        for h in reversed(self.history):
            if h.get("eval_top1") is not None:
                return h["eval_top1"]
        return None


# ------------------------------------------------------------------------------------------------
# distributed helpers


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Under torchrun (``WORLD_SIZE > 1``) initialise the default process group if it is not yet
    (nccl for CUDA, gloo otherwise) and return this process's rank; else ``DistInfo()``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise HalpError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed", stage=STAGE)
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    except Exception as exc:
        raise HalpError(f"cannot initialise the process group: {type(exc).__name__}: {exc}", stage=STAGE) from exc
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def _all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


# ------------------------------------------------------------------------------------------------
# small helpers


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


def _first_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


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


class _WarmupCosine:
    """LR factor of optimizer step ``s`` (0-based): linear warm-up, then cosine to ``final``."""

    def __init__(self, warmup: int, total: int | None, final: float):
        self.warmup, self.total, self.final = int(warmup), total, float(final)

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / (self.warmup + 1)
        if self.total is None:
            return 1.0
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (s - self.warmup) / span)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _mix_seed(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Distillation / fine-tuning of one ONNX student (see the module docstring).

    ``student``/``teacher``: an ``onnx.ModelProto``, a path, or an :class:`OnnxModule` (used as is:
    hooks stay installed; the student is moved to the device and put in train mode). ``teacher``
    None trains on labels only. ``steps_per_epoch`` turns ``warmup_epochs``/``epochs`` into steps;
    ``total_steps`` (default ``ceil(epochs * steps_per_epoch)``, capped by ``max_steps``) is where the
    cosine schedule ends; with neither the LR stays constant after warm-up.
    """

    def __init__(self, student: Any, teacher: Any = None, config: FinetuneConfig | None = None, *,
                 steps_per_epoch: int | None = None, total_steps: int | None = None,
                 dist_info: DistInfo | None = None):
        cfg = config if config is not None else FinetuneConfig()
        if not isinstance(cfg, FinetuneConfig):
            raise HalpError(f"config must be a FinetuneConfig, got {type(cfg).__name__}", stage=STAGE)
        self.config = cfg
        self.dist = dist_info if dist_info is not None else init_distributed(cfg.device)
        self.device = self._pick_device(cfg.device)

        self.student = student if isinstance(student, OnnxModule) else \
            OnnxModule(_load_onnx(student, "student model"), train_bn=True)
        if teacher is None:
            self.teacher = None
        else:
            self.teacher = teacher if isinstance(teacher, OnnxModule) else \
                OnnxModule(_load_onnx(teacher, "teacher model"), train_bn=False)
        if len(self.student.input_names) != 1:
            raise HalpError(f"the student has {len(self.student.input_names)} inputs "
                            f"({', '.join(self.student.input_names)}); fine-tuning supports one image input",
                            stage=STAGE)
        if self.teacher is not None and len(self.teacher.input_names) != 1:
            raise HalpError(f"the teacher has {len(self.teacher.input_names)} inputs; fine-tuning supports one "
                            "image input", stage=STAGE)
        self.student.to(self.device).train()
        if self.teacher is not None:
            self.teacher.to(self.device).eval()
            self.teacher.requires_grad_(False)

        self._model: torch.nn.Module = self.student
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._model = DDP(self.student, device_ids=ids)

        # optimizer: decay on weights with 2+ dims only
        decay, no_decay = [], []
        for _, p in self.student.named_onnx_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        if not decay and not no_decay:
            raise HalpError("the student has no trainable float initializers", stage=STAGE)
        groups = [{"params": decay, "weight_decay": cfg.decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        lr = cfg.learning_rate
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))

        self.steps_per_epoch = steps_per_epoch
        if total_steps is None and steps_per_epoch:
            total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps) if total_steps else cfg.max_steps
        self.total_steps = total_steps
        warmup = round(cfg.warmup_epochs * steps_per_epoch) if steps_per_epoch else 0
        if total_steps:
            warmup = min(warmup, max(total_steps - 1, 0))
        self._lr_fn = _WarmupCosine(warmup, total_steps, cfg.final_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_fn)

        self.amp = cfg.amp if cfg.amp is not None else self.device.type == "cuda"
        if self.amp and self.device.type != "cuda":
            self.amp_dtype = torch.bfloat16
        elif self.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.amp_dtype = None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        n_ch = max(len(cfg.mean), len(cfg.std))
        self._mean = torch.tensor(cfg.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(cfg.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._n_channels = n_ch

        self.global_step = 0      # optimizer steps done
        self.epoch = 0            # current epoch (0-based)
        self.epoch_step = 0       # steps done in the current epoch
        self.samples_seen = 0     # training images over all processes
        self.history: list[dict] = []
        self.callbacks: list[Callback] = []
        self.extra_losses: list[tuple[str, LossTerm, float]] = []
        self.last_parts: dict[str, torch.Tensor] = {}
        self._stop = False
        self._checked_shapes = False

    # -- setup ----------------------------------------------------------------------------------
    def _pick_device(self, want: str | None) -> torch.device:
        if want is None:
            if torch.cuda.is_available():
                return torch.device("cuda", self.dist.local_rank if self.dist.enabled else torch.cuda.current_device())
            return torch.device("cpu")
        try:
            dev = torch.device(want)
        except (RuntimeError, ValueError) as exc:
            raise HalpError(f"--device {want!r}: {exc}", stage=STAGE) from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise HalpError(f"--device {want}: CUDA is not available", stage=STAGE)
            if self.dist.enabled and dev.index is None:
                dev = torch.device("cuda", self.dist.local_rank)
        return dev

    def add_loss(self, name: str, fn: LossTerm, weight: float = 1.0) -> None:
        """Add ``weight * fn(trainer, x, y, logits)`` to the loss (reported as ``name``)."""
        if name in ("loss", "kd", "ce") or any(n == name for n, _, _ in self.extra_losses):
            raise HalpError(f"loss term name {name!r} is taken", stage=STAGE)
        self.extra_losses.append((name, fn, float(weight)))

    def request_stop(self) -> None:
        """Ask :func:`finetune` to stop after the current step (a checkpoint is written)."""
        self._stop = True

    @property
    def should_stop(self) -> bool:
        return self._stop

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def distributed_model(self) -> torch.nn.Module:
        """The module forward passes go through (DistributedDataParallel under torchrun)."""
        return self._model

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

    # -- loss / step ----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loss_parts(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        cfg = self.config
        with self._autocast():
            logits = _first_output(self._model(x))
            t_logits = None
            if self.teacher is not None and cfg.kd_weight > 0:
                with torch.no_grad():
                    t_logits = _first_output(self.teacher(x))
        logits = logits.float()
        if not self._checked_shapes:
            if t_logits is not None and t_logits.shape != logits.shape:
                raise HalpError(f"teacher output shape {tuple(t_logits.shape)} differs from the student's "
                                f"{tuple(logits.shape)}", stage=STAGE)
            self._checked_shapes = True
        parts: dict[str, torch.Tensor] = {}
        total = logits.new_zeros(())
        if t_logits is not None:
            T = cfg.temperature
            kd = F.kl_div(F.log_softmax(logits / T, dim=1), F.log_softmax(t_logits.float() / T, dim=1),
                          reduction="batchmean", log_target=True) * (T * T)
            parts["kd"] = kd
            total = total + cfg.kd_weight * kd
        if y is not None and cfg.ce_weight > 0:
            ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            parts["ce"] = ce
            total = total + cfg.ce_weight * ce
        if not parts and not self.extra_losses:
            why_kd = "no teacher" if self.teacher is None else "kd_weight is 0"
            why_ce = "no labels" if y is None else "ce_weight is 0"
            raise HalpError(f"nothing to train on: {why_kd} and {why_ce}", stage=STAGE)
        for name, fn, weight in self.extra_losses:
            term = fn(self, x, y, logits)
            parts[name] = term
            total = total + weight * term
        parts["loss"] = total
        return parts

    def loss(self, x: Any, y: Any = None) -> torch.Tensor:
        """The training loss of a batch (KD + CE + extra terms), differentiable. ``x``: a prepared
        float ``N x C x H x W`` tensor, or uint8 ``N x H x W x C`` images (prepared without
        augmentation). Per-term values are left in ``trainer.last_parts``."""
        parts = self._loss_parts(self._as_input(x, train=False), self._as_labels(y))
        self.last_parts = {k: v.detach() for k, v in parts.items()}
        return parts["loss"]

    def step(self, x: Any, y: Any = None) -> dict[str, torch.Tensor]:
        """One optimizer step on a batch (uint8 images are prepared with augmentation); then the LR
        schedule advances and every callback runs. Returns the detached loss terms."""
        self._model.train()
        x = self._as_input(x, train=True)
        y = self._as_labels(y)
        self.optimizer.zero_grad(set_to_none=True)
        parts = self._loss_parts(x, y)
        loss = parts["loss"]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.config.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.config.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.config.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.config.clip_grad_norm)
            self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        self.samples_seen += len(x) * self.dist.world_size
        self.last_parts = {k: v.detach() for k, v in parts.items()}
        for cb in list(self.callbacks):
            cb(self, self.global_step)
        return self.last_parts

    # -- evaluation / output --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, images: Any, labels: Any = None, batch_size: int | None = None) -> float:
        """Top-1 (a fraction) of the student in eval mode (BN on running statistics) on uint8
        ``N x H x W x C`` images (numpy, or an :class:`ImageData`, whose labels are used when
        ``labels`` is None) or prepared float tensors. Under torchrun each rank scores its share."""
        if isinstance(images, ImageData):
            data = images
            labels = data.labels if labels is None else labels
        else:
            data = None
        if labels is None:
            raise HalpError("evaluate needs labels", stage=STAGE)
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
        n = len(data) if data is not None else len(images)
        if len(labels) != n:
            raise HalpError(f"evaluate: {n} images but {len(labels)} labels", stage=STAGE)
        bs = batch_size or self.config.eval_batch_size
        idx = np.arange(self.dist.rank, n, self.dist.world_size)
        was_training = self.student.training
        self.student.eval()
        correct = torch.zeros(2, dtype=torch.float64, device=self.device)
        try:
            for i in range(0, len(idx), bs):
                chunk = idx[i:i + bs]
                if data is not None:
                    x = self.prepare(data.take(chunk, self.config.num_workers))
                else:
                    x = self._as_input(images[chunk] if not isinstance(images, torch.Tensor)
                                       else images[torch.from_numpy(chunk)], train=False)
                with self._autocast():
                    logits = _first_output(self.student(x))
                pred = logits.float().argmax(1)
                y = torch.from_numpy(labels[chunk]).to(self.device)
                correct[0] += (pred == y).sum()
                correct[1] += len(chunk)
        finally:
            self.student.train(was_training)
        _all_reduce_sum(correct, self.dist)
        return float(correct[0] / correct[1]) if correct[1] > 0 else float("nan")

    def student_onnx(self) -> onnx.ModelProto:
        """The student's ONNX model with the current weights and BN statistics written back."""
        return self.student.write_back()

    # -- checkpoints ----------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in self.student.named_onnx_parameters()}

    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.global_step, "epoch": self.epoch, "epoch_step": self.epoch_step,
            "samples_seen": self.samples_seen, "history": list(self.history),
            "config": self.config.to_dict(), "params": self._fingerprint(),
            "world_size": self.dist.world_size, "rng": rng,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
        }

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the training state to ``path`` atomically (rank 0 only; other ranks return)."""
        if not self.dist.is_main:
            return
        _atomic_torch_save(self.state_dict(), path)

    @staticmethod
    def read_checkpoint(path: str | os.PathLike) -> dict:
        p = Path(path)
        if not p.is_file():
            raise HalpError(f"--resume {p}: no such file", stage=STAGE)
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise HalpError(f"--resume {p}: cannot read the checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})", stage=STAGE) from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise HalpError(f"--resume {p}: not a halp-onnx fine-tuning checkpoint", stage=STAGE)
        return ckpt

    def load_state_dict(self, ckpt: dict, *, source: str = "checkpoint", keep_hyperparameters: bool = False) -> None:
        """Restore a :meth:`state_dict`. ``keep_hyperparameters``: keep this trainer's LR, momentum
        and weight decay instead of the saved ones (the optimizer's moments are restored)."""
        mine, saved = self._fingerprint(), {k: tuple(v) for k, v in ckpt["params"].items()}
        if mine != saved:
            diff = next((k for k in mine if saved.get(k) != mine[k]), None) or next(k for k in saved if k not in mine)
            raise HalpError(f"{source} was saved for a different student (initializer {diff!r}: "
                            f"{saved.get(diff)} in the checkpoint, {mine.get(diff)} here)", stage=STAGE)
        self.student.load_state_dict(ckpt["student"])
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as exc:
            raise HalpError(f"{source}: optimizer state does not fit ({exc}); was it saved with another "
                            "--optimizer?", stage=STAGE) from None
        for g, f in zip(self.optimizer.param_groups, fresh):
            if keep_hyperparameters:
                g.update({k: v for k, v in f.items() if k != "lr"})
            else:
                g["initial_lr"] = g.get("initial_lr", f["initial_lr"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.global_step = int(ckpt["step"])
        self.epoch = int(ckpt["epoch"])
        self.epoch_step = int(ckpt["epoch_step"])
        self.samples_seen = int(ckpt["samples_seen"])
        self.history = list(ckpt.get("history", []))
        # the LR of the next step from this trainer's schedule
        self.scheduler.last_epoch = self.global_step
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * self._lr_fn(self.global_step)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]  # what get_last_lr() reports
        rng = ckpt.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    @classmethod
    def resume(cls, path: str | os.PathLike, student: Any, teacher: Any = None,
               config: FinetuneConfig | None = None, **kwargs: Any) -> "Trainer":
        """A trainer restored from :meth:`save_checkpoint`: same ``student`` (and ``teacher``) as
        when it was saved; ``config`` None reuses the saved one (given, its LR/decay apply). Without
        ``steps_per_epoch`` the saved schedule (steps per epoch, total steps) is used."""
        ckpt = cls.read_checkpoint(path)
        if kwargs.get("steps_per_epoch") is None and kwargs.get("total_steps") is None:
            kwargs["steps_per_epoch"] = ckpt.get("steps_per_epoch")
            kwargs["total_steps"] = ckpt.get("total_steps")
        cfg = config if config is not None else FinetuneConfig.from_dict(ckpt["config"])
        trainer = cls(student, teacher, cfg, **kwargs)
        trainer.load_state_dict(ckpt, source=f"--resume {path}", keep_hyperparameters=config is not None)
        return trainer


# ------------------------------------------------------------------------------------------------
# finetune


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


def _check_fits(trainer: Trainer, data: ImageData) -> None:
    h, w, c = data.shape
    for role, mod in (("student", trainer.student), ("teacher", trainer.teacher)):
        if mod is None:
            continue
        dims = _input_dims(mod._source_model, mod.input_names[0])
        if len(dims) == 4:
            if dims[1] and dims[1] != c:
                raise HalpError(f"the {role} takes {dims[1]} channels but {data.source} has {c}", stage=STAGE)
            if dims[2] and dims[3] and (dims[2], dims[3]) != (h, w):
                raise HalpError(f"the {role} takes {dims[2]}x{dims[3]} images but {data.source} has {h}x{w}; "
                                f"pass --size {dims[2]}x{dims[3]}", stage=STAGE)


class _Progress:
    """A rich progress bar on stderr (only on a terminal), plus one line per epoch."""

    def __init__(self, enabled: bool, total: int):
        self.enabled = enabled
        self.bar = None
        self.lines = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = Console(stderr=True)
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                console=self.console, transient=False)
            self.bar.start()
            self.task = self.bar.add_task("fine-tune", total=total, info="")

    def update(self, completed: int, description: str, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, description=description, info=info)

    def line(self, text: str) -> None:
        if not self.lines:
            return
        if self.bar is not None:
            self.bar.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fmt_parts(h: dict) -> str:
    terms = [f"{k} {h[k]:.4f}" for k in h if k not in ("epoch", "steps", "loss", "lr", "throughput", "seconds",
                                                         "eval_top1") and isinstance(h[k], float)]
    return f"loss {h['loss']:.4f}" + (f" ({', '.join(terms)})" if terms else "")


def finetune(student: Any, teacher: Any, data: Any, config: FinetuneConfig | None = None, *,
             progress: bool = True, callback: Callback | None = None, eval_data: Any = None) -> FinetuneResult:
    """Fine-tune ``student`` (ONNX model, path or OnnxModule) on ``data`` (an :class:`ImageData`, a
    path for :func:`~halp_onnx.data.load_data`, or ``(uint8 images, labels or None)``), distilling from
    ``teacher`` (None: labels only). Evaluates on ``eval_data`` or a ``config.holdout`` share of
    labeled data. ``callback(trainer, step)`` runs after every optimizer step. Returns the tuned
    ONNX model and per-epoch history. Under torchrun every rank returns the same model."""
    cfg = config if config is not None else FinetuneConfig()
    t_start = time.perf_counter()
    info = init_distributed(cfg.device)
    student_proto = student if isinstance(student, OnnxModule) else _load_onnx(student, "student model")
    size = static_input_size(student_proto) if isinstance(data, (str, os.PathLike)) else None
    train = _as_data(data, "data", size)
    if teacher is None and not train.labeled:
        raise HalpError(f"{train.source}: the images are unlabeled and there is no teacher; pass a teacher "
                        "model (--teacher) for label-free distillation, or labeled data", stage=STAGE)
    held: ImageData | None
    if eval_data is not None:
        held = _as_data(eval_data, "eval data", size)
        if not held.labeled:
            raise HalpError(f"{held.source}: the evaluation data has no labels", stage=STAGE)
    else:
        holdout = cfg.holdout if cfg.holdout is not None else (0.1 if train.labeled else 0.0)
        if holdout > 0 and not train.labeled:
            raise HalpError(f"--holdout {holdout}: {train.source} has no labels to evaluate with", stage=STAGE)
        train, held = split(train, holdout, cfg.seed)
    if len(train) == 0:
        raise HalpError(f"{train.source}: no training images", stage=STAGE)
    limit = cfg.cache_limit_gb * 2 ** 30
    if train.lazy and train.nbytes <= limit:
        train = train.materialize(cfg.num_workers)
    if held is not None and held.lazy and held.nbytes <= limit:
        held = held.materialize(cfg.num_workers)

    n = len(train)
    world, rank = info.world_size, info.rank
    per_rank = math.ceil(n / world)
    bs = cfg.batch_size
    steps_per_epoch = max(1, per_rank // bs) if per_rank >= bs else 1

    torch.manual_seed(cfg.seed)
    kwargs = dict(steps_per_epoch=steps_per_epoch, dist_info=info)
    if cfg.resume:
        trainer = Trainer.resume(cfg.resume, student_proto, teacher, cfg, **kwargs)
    else:
        trainer = Trainer(student_proto, teacher, cfg, **kwargs)
    _check_fits(trainer, train)
    if held is not None:
        _check_fits(trainer, held)
    if callback is not None:
        trainer.callbacks.append(callback)
    total = trainer.total_steps or steps_per_epoch
    n_epochs = math.ceil(total / steps_per_epoch)

    bar = _Progress(progress and info.is_main, total)
    initial = None
    try:
        if held is not None and cfg.eval_at_start and trainer.global_step == 0 and cfg.eval_every:
            initial = trainer.evaluate(held)
            bar.line(f"held-out top-1 before fine-tuning: {100 * initial:.2f}% ({len(held)} images)")
        while trainer.epoch < n_epochs and trainer.global_step < total and not trainer.should_stop:
            epoch = trainer.epoch
            perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            if per_rank * world > n:  # pad by wrapping so every rank has as many images
                perm = np.concatenate([perm, perm[:per_rank * world - n]])
            shard = perm[rank::world]
            end = min(steps_per_epoch, total - epoch * steps_per_epoch)
            sums: dict[str, torch.Tensor] = {}
            count = 0
            t0 = time.perf_counter()
            images_done = 0
            for b in range(trainer.epoch_step, end):
                idx = shard[b * bs:(b + 1) * bs]
                x = trainer.prepare(train.take(idx, cfg.num_workers), train=True)
                y = train.labels[idx] if train.labels is not None else None
                parts = trainer.step(x, y)
                trainer.epoch_step = b + 1
                for k, v in parts.items():
                    sums[k] = sums[k] + v * len(idx) if k in sums else v * len(idx)
                count += len(idx)
                images_done += len(idx) * world
                last = b + 1 == end or trainer.should_stop
                if trainer.global_step % cfg.log_every == 0 or last:
                    loss = float(parts["loss"])
                    if not math.isfinite(loss):
                        raise HalpError(f"the loss is {loss} at step {trainer.global_step}; lower the learning "
                                        f"rate (--lr, now {cfg.learning_rate:g}) or clip the gradients "
                                        "(--clip-grad-norm)", stage=STAGE)
                    rate = images_done / max(time.perf_counter() - t0, 1e-9)
                    bar.update(trainer.global_step, f"epoch {epoch + 1}/{n_epochs}",
                               f"loss {loss:.4f}  {rate:,.0f} img/s  lr {trainer.lr:.2g}")
                if cfg.checkpoint and cfg.checkpoint_every and trainer.global_step % cfg.checkpoint_every == 0 \
                        and not last:
                    trainer.save_checkpoint(cfg.checkpoint)
                if trainer.should_stop:
                    break
            seconds = time.perf_counter() - t0
            finished = trainer.epoch_step >= end
            if finished:
                trainer.epoch, trainer.epoch_step = epoch + 1, 0
            names = sorted(sums)
            if names:
                vec = torch.stack([sums[k].float() for k in names]
                                  + [torch.tensor(float(count), device=trainer.device)])
                vec = _all_reduce_sum(vec.to(torch.float64), info)
                means = {k: float(vec[i] / vec[-1]) for i, k in enumerate(names)}
            else:
                means = {}
            h: dict[str, Any] = {"epoch": epoch + 1, "partial": not finished, "steps": trainer.global_step, **means,
                                 "lr": trainer.lr, "throughput": images_done / max(seconds, 1e-9),
                                 "seconds": seconds, "eval_top1": None}
            h.setdefault("loss", float("nan"))
            last_epoch = trainer.global_step >= total or trainer.should_stop
            if held is not None and cfg.eval_every and finished and \
                    ((epoch + 1) % cfg.eval_every == 0 or last_epoch):
                h["eval_top1"] = trainer.evaluate(held)
            trainer.history.append(h)
            if cfg.checkpoint:
                trainer.save_checkpoint(cfg.checkpoint)
            top1 = f", held-out top-1 {100 * h['eval_top1']:.2f}%" if h["eval_top1"] is not None else ""
            bar.line(f"epoch {epoch + 1}/{n_epochs}: {_fmt_parts(h)}, {h['throughput']:,.0f} img/s{top1}")
    finally:
        bar.close()
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()
    return FinetuneResult(trainer.student_onnx(), list(trainer.history), time.perf_counter() - t_start,
                          trainer.samples_seen, trainer.global_step, initial)
