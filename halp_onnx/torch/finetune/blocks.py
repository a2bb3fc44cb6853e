"""The block stage of :func:`~halp_onnx.torch.finetune.finetune`: before the end-to-end steps, a student
that ``prune``/``compile`` annotated with its block ends (:func:`halp_onnx.passes.descent.annotate`) is
trained block by block towards the teacher's tensors there, on the fine-tuning data
(:func:`halp_onnx.torch.blockwise.block_descent`, the descent the repair ran on the calibration data).

The repair's descent sees the calibration images only (2,000 in the benchmarks), and more steps on the
same images do not help: on the BN-folded CIFAR ResNet-56 compiled to 0.5, 194 steps per block give
89.28% / 79.93% top-1 (exact 1,017 / JPEG 10,000), 400 steps 89.18% / 79.88%. The fine-tuning data is
the larger set a user has, so the stage makes one pass over it per block (batch 32, no augmentation,
within the descent's MAC budget), holding some of the held-out images back to decide, block by block,
whether its steps are kept and then whether the result is kept at all (only when its output is closer
to the teacher's there). It runs with a teacher, on one image input, without ``--resume``; what it did,
or why it did not run, is in the result's ``blocks`` entry.

Off by default (``--block-stage on``): measured with the recipe of ``tools/bench_accuracy.py`` (1 epoch,
9,000 JPEG training images, batch 128, one thread), from compiles to 0.5 repaired with 2,000 calibration
images, top-1 exact 1,017 / JPEG 10,000, seeds 0 and 1:

* ResNet-20 (tuning; one-shot 84.96% / 75.46%): without 83.97% / 78.93% and 85.35% / 79.27%; with
  84.96% / 79.46% (kept) and 85.35% / 79.27% (left out by the held-out check); stage 42-45 s, the epoch 30 s;
* ResNet-56 (held out; one-shot 89.68% / 79.78%): without 87.51% / 81.63% and 87.81% / 82.16%; with
  88.59% / 82.57% and 88.20% / 82.52% (+0.7 / +0.7 on the means); stage 221-235 s (194 steps per block
  within the MAC budget), the epoch 70 s.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from halp_onnx.data import ImageData, to_nchw
from halp_onnx.errors import HalpError

from .config import FinetuneConfig

BATCH = 32  # images per block-descent step (the repair's calibration batch)
HELD_IMAGES = 512  # held-out images the stage uses at most (half stop block by block, half judge)


def _prepared(data: ImageData, idx: np.ndarray, cfg: FinetuneConfig) -> np.ndarray:
    """The images at ``idx``, normalised as ``Trainer.prepare`` does (no augmentation)."""
    return to_nchw(data.take(idx, cfg.num_workers), cfg.mean, cfg.std)


def block_stage(student: Any, teacher: Any, train: ImageData, held: ImageData | None,
                cfg: FinetuneConfig) -> tuple[Any, dict]:
    """(the student after the stage, or as given; what happened): see the module docstring. ``student``
    and ``teacher``: ONNX models (an :class:`~halp_onnx.torch.OnnxModule` student is used as is; a
    teacher module is read through its source graph); ``teacher`` None: no teacher."""
    from ..executor import OnnxModule
    from halp_onnx.passes.descent import MIN_STEPS, DenseTargets, block_ends_of, descent_steps
    from halp_onnx.passes.load import _real_inputs
    from halp_onnx.passes.reconstruct import _output_errors

    from ..blockwise import block_descent

    def skipped(why: str) -> tuple[Any, dict]:
        return student, {"ran": False, "kept": False, "note": f"block stage: skipped, {why}"}

    if cfg.block_stage == "off":
        return skipped("--block-stage off (the default)")
    if isinstance(student, OnnxModule):
        return skipped("the student is an OnnxModule (it is trained as given)")
    if isinstance(teacher, OnnxModule):
        teacher = teacher._source_model
    if teacher is None:
        return skipped("it needs a teacher (--teacher)")
    if cfg.resume:
        return skipped("resuming a run")
    ends = block_ends_of(student)
    if ends is None:
        return skipped("the student carries no block ends (a model pruned by halp-onnx prune/compile does)")
    points, output, macs = ends
    if output not in {o.name for o in teacher.graph.output}:
        return skipped(f"the teacher has no output '{output}': it is not the model the student was pruned from")
    inputs = [i.name for i in _real_inputs(student)]
    if len(inputs) != 1:
        return skipped(f"the student has {len(inputs)} inputs")
    rng = np.random.default_rng([cfg.seed, 104729])
    order = rng.permutation(len(train))
    n = descent_steps(macs, BATCH, len(points) + 1, -(-len(train) // BATCH))
    if n < MIN_STEPS:
        return skipped(f"{n} step(s) per block within the descent's MAC budget, or too few images")
    if held is not None and len(held) >= 2 * BATCH:
        hx, pool = held, np.arange(min(len(held), HELD_IMAGES))
    else:  # no held-out images: a tenth of the training images, kept out of the stage's steps
        k = max(2, min(HELD_IMAGES, len(train) // 10))
        hx, pool, order = train, order[:k], order[k:]
    feeds = [{inputs[0]: _prepared(train, np.sort(order[i:i + BATCH]), cfg)}
             for i in range(0, min(len(order), n * BATCH), BATCH)]
    checks = [{inputs[0]: _prepared(hx, pool[i:i + BATCH], cfg)} for i in range(0, len(pool), BATCH)]
    stopping, judging = checks[0::2], checks[1::2] or checks[0::2]
    try:
        res = block_descent(student, points, feeds, DenseTargets(teacher), output, steps=n, seed=cfg.seed,
                            stopping=stopping)
        e0, e1 = _output_errors(teacher, [student, res.model], judging)
    except HalpError as exc:
        return skipped(f"left out: {exc}")
    except Exception as exc:  # noqa: BLE001 - onnxruntime: the teacher lacks a block end's tensor, or its shape differs
        return skipped(f"left out, the teacher does not run with the student's block ends: "
                       f"{' '.join(str(exc).split())[:200]}")
    kept = e1 < e0
    note = (f"block stage: {res.points + 1} block(s) in turn, {n} Adam steps each on {len(feeds)} batch(es) of the "
            f"training data ({res.seconds:.1f}s), {res.note}; " +
            (f"held-out output error {e0:.4g} -> {e1:.4g}" if kept else
             f"left out: on the other held-out batches it moved the output away from the teacher's "
             f"({e0:.4g} -> {e1:.4g})"))
    info: dict[str, Any] = {"ran": True, "kept": kept, "error_before": e0, "error_after": e1,
                            **res.to_dict(), "note": note}  # seconds: the descent's
    return (res.model if kept else student), info
