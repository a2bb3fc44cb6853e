"""Checkpoints: atomic ``torch.save``, and the :class:`Trainer` methods that save, read and restore
the training state (student weights, optimizer, scheduler, scaler, counters, history, RNG)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from halp_onnx.errors import HalpError

from ..executor import OnnxModule
from .config import STAGE, FinetuneConfig, _WarmupCosine
from .distributed import DistInfo

CHECKPOINT_FORMAT = "halp-onnx-finetune"
CHECKPOINT_VERSION = 1


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


class CheckpointMixin:
    """The checkpoint methods of :class:`~halp_onnx.torch.finetune.Trainer` (which sets these attributes)."""

    config: FinetuneConfig
    dist: DistInfo
    device: torch.device
    student: OnnxModule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    _lr_fn: _WarmupCosine
    steps_per_epoch: int | None
    total_steps: int | None
    global_step: int
    epoch: int
    epoch_step: int
    samples_seen: int
    history: list[dict]

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
