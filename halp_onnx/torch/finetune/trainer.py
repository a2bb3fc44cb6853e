"""The :class:`Trainer`: one ONNX student (and optional teacher) on the device, its optimizer, LR
schedule and AMP settings, the KD + CE (+ extra terms) loss, optimizer steps with callbacks, and
held-out evaluation. Batch preparation comes from :class:`~.data.BatchMixin`, checkpoints from
:class:`~.checkpoint.CheckpointMixin`."""
from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from halp_onnx.data import ImageData
from halp_onnx.errors import HalpError

from ..bn_reinsert import BNReinsertion, reinsert_bn
from ..executor import OnnxModule
from .checkpoint import CheckpointMixin
from .config import STAGE, FinetuneConfig, _WarmupCosine
from .data import BatchMixin, _load_onnx
from .distributed import DistInfo, _all_reduce_sum, init_distributed

Callback = Callable[["Trainer", int], Any]
LossTerm = Callable[["Trainer", torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]


def _first_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out
class Trainer(BatchMixin, CheckpointMixin):
    """Distillation / fine-tuning of one ONNX student (see the :mod:`halp_onnx.torch.finetune` docstring).

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
        if cfg.reinsert_bn != "off" and self.student.bn_reinsertion is None:
            reinsert_bn(self.student, cfg.reinsert_bn)  # BN-folded graphs train with BN, folded on write-back
        r = self.student.bn_reinsertion
        if r is not None and self.dist.enabled and any(bn.group is None for bn in r.by_tensor.values()):
            r.synchronise()
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
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for _, p in self.student.named_onnx_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        if self.bn_reinsertion is not None:
            no_decay.extend(self.bn_reinsertion.parameters())
        if not decay and not no_decay:
            raise HalpError("the student has no trainable float initializers", stage=STAGE)
        groups = [{"params": decay, "weight_decay": cfg.decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        has_bn = any(n.op_type == "BatchNormalization" for n in self.student._source_model.graph.node)
        lr = self.base_lr = cfg.learning_rate_for(has_bn)
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
        self.amp_dtype: torch.dtype | None
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
    def bn_reinsertion(self) -> BNReinsertion | None:
        """The BatchNorms re-inserted after the student's folded layers (None when there are none)."""
        return self.student.bn_reinsertion

    def calibrate_bn(self, batches: Any) -> int:
        """Initialise the re-inserted BatchNorms (identity at the statistics of ``batches``: uint8
        ``N x H x W x C`` arrays, prepared with the training augmentation, or prepared float tensors).
        Under torchrun the statistics are summed over every rank. Returns the samples seen (0 when the
        student has no re-inserted BN)."""
        r = self.bn_reinsertion
        if r is None:
            return 0
        if isinstance(batches, (np.ndarray, torch.Tensor)):
            batches = [batches]
        prepared = (self._as_input(b, train=True) for b in batches)
        with self._autocast():
            return r.calibrate(prepared, reduce=lambda v: _all_reduce_sum(v, self.dist))

    @torch.no_grad()
    def sync_bn_stats(self) -> None:
        """Average the re-inserted BNs' running statistics over the ranks (each rank updates them
        from its own batches); a no-op in one process."""
        r = self.bn_reinsertion
        if r is None or not self.dist.enabled:
            return
        for bn in r.by_tensor.values():
            for buf in (bn.running_mean, bn.running_var):
                v = _all_reduce_sum(buf.detach().double().clone(), self.dist) / self.dist.world_size
                buf.copy_(v.to(buf.dtype))

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def distributed_model(self) -> torch.nn.Module:
        """The module forward passes go through (DistributedDataParallel under torchrun)."""
        return self._model

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
        r = self.bn_reinsertion
        if r is not None and not r.initialized:  # no calibrate_bn() before: this batch's statistics
            self.calibrate_bn(x)
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
        self.sync_bn_stats()
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
        """The student's ONNX model with the current weights and BN statistics written back (re-inserted
        BNs folded into their layers; under torchrun, with their statistics averaged over the ranks:
        call it on every rank)."""
        self.sync_bn_stats()
        return self.student.write_back()

    # -- checkpoints (state_dict, save_checkpoint, read_checkpoint, load_state_dict: CheckpointMixin) ---
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
