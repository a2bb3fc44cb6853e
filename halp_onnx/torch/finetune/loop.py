"""The :func:`finetune` entry point: whole epochs over an :class:`~halp_onnx.data.ImageData` (each
rank its shard of every epoch's permutation), held-out evaluation, the progress bar and per-epoch
lines, periodic checkpoints and resume."""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from halp_onnx.data import ImageData, split
from halp_onnx.errors import HalpError

from ..executor import OnnxModule
from .blocks import block_stage
from .config import STAGE, FinetuneConfig, FinetuneResult
from .data import _as_data, _input_dims, _load_onnx, static_input_size
from .distributed import _all_reduce_sum, init_distributed
from .trainer import Callback, Trainer


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

    if teacher is not None and not isinstance(teacher, OnnxModule):
        teacher = _load_onnx(teacher, "teacher model")  # once, for the block stage and the trainer
    student_proto, blocks = block_stage(student_proto, teacher, train, held, cfg)
    if blocks.get("ran") and progress and info.is_main:
        print(blocks["note"], file=sys.stderr, flush=True)
    torch.manual_seed(cfg.seed)
    kwargs: dict[str, Any] = dict(steps_per_epoch=steps_per_epoch, dist_info=info)
    if cfg.resume:
        trainer = Trainer.resume(cfg.resume, student_proto, teacher, cfg, **kwargs)
    else:
        trainer = Trainer(student_proto, teacher, cfg, **kwargs)
    _check_fits(trainer, train)
    if held is not None:
        _check_fits(trainer, held)
    bn = trainer.bn_reinsertion
    if bn is not None and not bn.initialized:  # identity at the training data's statistics
        pick = np.random.default_rng([cfg.seed, 7919, rank]).permutation(n)[:min(n, cfg.bn_calib_images)]
        trainer.calibrate_bn(train.take(pick[i:i + bs], cfg.num_workers) for i in range(0, len(pick), bs))
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
                                        f"rate (--lr, now {trainer.base_lr:g}) or clip the gradients "
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
    model = trainer.student_onnx()
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()
        if trainer.bn_reinsertion is not None:
            trainer.bn_reinsertion.release()
    return FinetuneResult(model, list(trainer.history), time.perf_counter() - t_start,
                          trainer.samples_seen, trainer.global_step, initial, blocks)
