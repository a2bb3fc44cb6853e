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

Schedule: linear warm-up over ``warmup_epochs`` (default 0.3, per iteration), then cosine decay to
``final_lr_ratio * lr`` at the last step; gradients clipped at norm 20 (a safety net; ``clip_grad_norm=None``
turns it off).

BN-folded graphs (an exported model: no BatchNormalization node) train with a BatchNorm re-inserted
after every Conv and hidden Gemm (:mod:`halp_onnx.torch.bn_reinsert`, ``reinsert_bn``): initialised
from ``bn_calib_images`` training images to the identity, trained as BN (under torchrun with batch
statistics over every rank), folded back into the layers' weights on write-back (same nodes and op
types). Their default SGD LR is 0.003 (:meth:`FinetuneConfig.learning_rate_for`).

Data parallel: launched by ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised
(nccl on CUDA, gloo on CPU), the student is wrapped in DistributedDataParallel, every rank takes
``perm[rank::world]`` of each epoch's permutation, ``batch_size`` is per process, and only rank 0
writes checkpoints (and, in the CLI, the output model). Callbacks run on every rank and must act
the same on all of them.

Block stage (``block_stage="on"``, off by default): a student that ``prune``/``compile`` wrote carries its
block ends; it is first trained block by block towards the teacher on the training data, one pass per
block (:mod:`.blocks`), and kept only where held-out images say its output moved closer.

Layout: :mod:`.config` (options, result, LR schedule), :mod:`.distributed` (torchrun helpers),
:mod:`.data` (models' inputs, data coercion, batch preparation and augmentation), :mod:`.checkpoint`
(atomic save, state, resume), :mod:`.trainer` (:class:`Trainer`), :mod:`.loop` (:func:`finetune`),
:mod:`.blocks` (the block stage).
"""
from __future__ import annotations

from .config import FinetuneConfig, FinetuneResult, _WarmupCosine
from .data import static_input_size
from .distributed import DistInfo, init_distributed
from .loop import finetune
from .trainer import Callback, LossTerm, Trainer

__all__ = ["FinetuneConfig", "FinetuneResult", "Trainer", "finetune", "init_distributed", "static_input_size",
           "DistInfo", "Callback", "LossTerm", "_WarmupCosine"]
