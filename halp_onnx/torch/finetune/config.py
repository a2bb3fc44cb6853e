"""Fine-tuning options (:class:`FinetuneConfig`), the result of :func:`~halp_onnx.torch.finetune.finetune`
(:class:`FinetuneResult`) and the LR schedule the options describe (:class:`_WarmupCosine`)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import onnx

from halp_onnx.errors import HalpError

STAGE = "finetune"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning options. ``lr``/``weight_decay`` None pick per-optimizer defaults (SGD: 0.01 and
    1e-4, AdamW: 1e-3 and 0.01; SGD on a student without BatchNormalization nodes, e.g. a BN-folded
    export trained with re-inserted BNs: 0.003, see :meth:`learning_rate_for`); weight decay applies
    to weights with 2+ dims only.

    Defaults measured on the BN-folded CIFAR ResNet-20 compiled to 0.5 of its ort-cpu latency, 1 epoch
    over 9,000 JPEG images (batch 128, 70 steps): with re-inserted BNs, SGD lr 0.01 / 0.003 gives 72% /
    77% top-1 on the exact 1,017 test images; warm-up 0.05 / 0.1 / 0.3 epochs 75.7% / 76.3% / 78.1%;
    gradient norms (KD at T=4 weighs T^2 = 16) have a median of 16-19 there (9 with BN kept), so
    ``clip_grad_norm`` 20 is a safety net that costs nothing measurable, while 5 costs 8 points.
    Without re-inserted BNs the same graph diverges to NaN at lr 0.003 unclipped, and trains (73%)
    with the clip at 20."""

    epochs: float = 1.0                 # fractions allowed (0.5 = half an epoch)
    batch_size: int = 128               # per process
    optimizer: str = "sgd"              # "sgd" | "adamw"
    lr: float | None = None
    momentum: float = 0.9               # SGD momentum (Nesterov); AdamW beta1
    weight_decay: float | None = None
    warmup_epochs: float = 0.3          # linear warm-up per iteration, fractions allowed
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
    clip_grad_norm: float | None = 20.0  # None: no clipping
    checkpoint: str | None = None       # written at every epoch end, every checkpoint_every steps, at the end
    checkpoint_every: int = 0           # steps; 0 = epoch ends only
    resume: str | None = None
    num_workers: int = 0                # threads decoding lazily read image files
    cache_limit_gb: float = 4.0         # decode an image folder up front when it fits in this many GiB
    log_every: int = 10                 # steps between progress-bar updates (each syncs the device)
    reinsert_bn: str = "auto"           # "auto" (graphs without BN: a BN after every Conv, folded back) | "all" | "off"
    bn_calib_images: int = 1024         # training images (per process) that initialise the re-inserted BNs
    block_stage: str = "off"            # "on": a student with block ends is first trained block by block (.blocks)

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
        if self.reinsert_bn not in ("auto", "all", "off"):
            raise bad("reinsert_bn", "expected auto, all or off")
        if not (isinstance(self.bn_calib_images, int) and self.bn_calib_images >= 1):
            raise bad("bn_calib_images", "must be a positive integer")
        if self.block_stage not in ("on", "off"):
            raise bad("block_stage", "expected on or off")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (0.01 if self.optimizer == "sgd" else 1e-3)

    def learning_rate_for(self, has_bn: bool) -> float:
        """The peak LR for a student graph with (``has_bn``) or without BatchNormalization nodes: ``lr``
        when given; SGD on a graph without BN (its BNs folded: re-inserted, or none) 0.003, else
        :attr:`learning_rate`. The re-inserted BNs normalise layers whose weights are scaled to unit
        output variance, where the same LR moves the weights further than in a graph that kept its BN."""
        if self.lr is None and self.optimizer == "sgd" and not has_bn:
            return 0.003
        return self.learning_rate

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
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)


@dataclass(frozen=True)
class FinetuneResult:
    """``model``: the tuned ONNX model; ``history``: one dict per epoch (epoch, steps, loss, kd, ce,
    and any extra loss terms, lr, throughput in img/s, seconds, eval_top1 or None);
    ``initial_eval_top1``: held-out top-1 before training (None without an eval set); ``blocks``: what
    the block stage did, or why it did not run (:mod:`.blocks`)."""

    model: onnx.ModelProto
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    steps: int = 0
    initial_eval_top1: float | None = None
    blocks: dict | None = None

    @property
    def eval_top1(self) -> float | None:
        for h in reversed(self.history):
            if h.get("eval_top1") is not None:
                return h["eval_top1"]
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
