"""``halp-onnx finetune``: fine-tune a pruned ONNX model (distillation from a teacher and/or labels).

    halp-onnx finetune pruned.onnx --teacher model.onnx --data DATA --epochs 3 -o tuned.onnx

DATA: an image folder (one subfolder per class: labeled; a flat folder: unlabeled) or an .npz with
``images`` (uint8 N x H x W x C) and optional ``labels``. Under ``torchrun --nproc_per_node K`` the
run is data parallel and only rank 0 writes. Registered in :mod:`halp_onnx.cli` through
:func:`add_parser` and :func:`run`; ``python -m halp_onnx.cli_finetune`` runs it alone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_io import OutputPlan
from .errors import HalpError

STAGE = "cli"
DEFAULT_MEAN = "0.485,0.456,0.406"
DEFAULT_STD = "0.229,0.224,0.225"
EPILOG = """examples:
  halp-onnx finetune pruned.onnx --teacher model.onnx --data images/ --epochs 3 -o tuned.onnx
  halp-onnx finetune pruned.onnx --data train.npz --eval-data val.npz --optimizer adamw -o tuned.onnx --report r.json
  torchrun --nproc_per_node 4 -m halp_onnx.cli_finetune pruned.onnx --data images/ -o tuned.onnx --json
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "finetune", help="fine-tune a pruned model with distillation from a teacher (torch bridge)",
        description="Fine-tune a pruned ONNX model: KD from --teacher (label-free when DATA has no labels) "
                    "plus cross-entropy when DATA has labels; writes the tuned weights into the same graph.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the (pruned) student .onnx")
    p.add_argument("--teacher", help="teacher .onnx (e.g. the dense model); without it, labels only")
    p.add_argument("--data", required=True,
                   help="image folder (class subfolders: labeled; flat: unlabeled) or .npz with images[, labels]")
    p.add_argument("--eval-data", help="labeled folder/.npz to evaluate on instead of a --holdout share")
    p.add_argument("-o", "--out", required=True, help="output .onnx path")
    p.add_argument("--epochs", type=float, default=1.0, help="epochs (fractions allowed; default 1)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=128, help="images per step per process (default 128)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.01 for sgd, 0.003 for sgd on a graph "
                                             "without BatchNormalization (BN folded), 0.001 for adamw)")
    p.add_argument("--weight-decay", type=float, help="default 1e-4 for sgd, 0.01 for adamw")
    p.add_argument("--warmup-epochs", type=float, default=0.3, help="linear warm-up (default 0.3 epochs)")
    p.add_argument("--clip-grad-norm", type=float, default=20.0,
                   help="clip the gradient norm at this (default 20, a safety net; 0: no clipping)")
    p.add_argument("--reinsert-bn", choices=("auto", "all", "off"), default="auto",
                   help="train a BN-folded graph with a BatchNorm after every Conv, initialised to the identity "
                        "on the training data and folded back into the weights on output (auto: graphs without "
                        "BatchNormalization nodes; all: also layers no BN follows in other graphs; off)")
    p.add_argument("--block-stage", choices=("on", "off"), default="off",
                   help="on: a student that halp-onnx prune/compile wrote (it carries its block ends) is first "
                        "trained block by block towards --teacher on the data, one pass per block, kept only where "
                        "held-out images say its output is closer to the teacher's (slower: several times the cost "
                        "of one epoch); off (default): end-to-end steps only")
    p.add_argument("--kd-weight", type=float, default=1.0)
    p.add_argument("--ce-weight", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    p.add_argument("--mean", default=DEFAULT_MEAN, help=f"per-channel mean of [0,1] pixels (default {DEFAULT_MEAN})")
    p.add_argument("--std", default=DEFAULT_STD, help=f"per-channel std of [0,1] pixels (default {DEFAULT_STD})")
    p.add_argument("--size", help="resize images to this (224 or HxW); default: the model's fixed input size")
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    p.add_argument("--crop", choices=("auto", "pad", "resized"), default="auto",
                   help="pad: random crop with 4-pixel padding; resized: random-resized crop; "
                        "auto: pad up to 64 px, else resized")
    p.add_argument("--holdout", type=float, help="share of labeled DATA held out for evaluation (default 0.1)")
    p.add_argument("--checkpoint", help="write the training state here at every epoch end")
    p.add_argument("--resume", help="continue from a --checkpoint file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--num-workers", type=int, default=0, help="threads decoding image files")
    p.add_argument("--no-progress", "--quiet", action="store_true",
                   help="no progress bar, per-epoch lines, stage lines or warnings")
    p.add_argument("--report", help="also write the JSON report (history, seconds) here ('-': stdout)")
    p.add_argument("--json", action="store_true", help="print the report on stdout (human text on stderr)")
    return p


def _plan(args: argparse.Namespace) -> OutputPlan:
    import os

    rank0 = int(os.environ.get("RANK", "0") or 0) == 0  # under torchrun only rank 0 writes
    plan = OutputPlan("finetune", quiet=args.no_progress, write=rank0,
                      inputs=[("model", args.model), ("--teacher", args.teacher), ("--data", args.data),
                              ("--eval-data", args.eval_data), ("--resume", args.resume)])
    plan.add("-o", args.out, "model")
    plan.add_report(args.report, args.json)
    plan.add("--checkpoint", args.checkpoint, "checkpoint", staged=False)
    return plan


def run(args: argparse.Namespace) -> int:
    """Run ``finetune`` from parsed arguments; raises HalpError for user errors."""
    from .data import load_data, parse_floats, parse_size

    for option, path in (("model", args.model), ("--teacher", args.teacher)):
        if path is not None and not Path(path).is_file():
            raise HalpError(f"{option} {path}: no such file", stage=STAGE)
    mean = parse_floats(args.mean, "--mean")
    std = parse_floats(args.std, "--std")
    if any(s <= 0 for s in std):
        raise HalpError(f"--std {args.std}: values must be positive", stage=STAGE)
    size = parse_size(args.size, "--size")

    try:
        from .torch.finetune import FinetuneConfig, finetune, init_distributed, static_input_size
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise HalpError(f"finetune needs PyTorch ({exc}); install it with: pip install halp-onnx[torch]",
                        stage=STAGE) from exc
    import time

    import onnx

    from .passes.rewrite import check_model

    with _plan(args) as plan:
        t0 = time.perf_counter()
        try:
            student = onnx.load(args.model)
        except Exception as exc:
            raise HalpError(f"model {args.model}: cannot read the ONNX model ({type(exc).__name__})",
                            stage=STAGE) from None
        if size is None:
            size = static_input_size(student)
        data = load_data(args.data, size=size)
        eval_data = load_data(args.eval_data, size=size) if args.eval_data else None
        if args.teacher is None and not data.labeled:
            raise HalpError(f"--data {args.data}: the images have no labels and there is no --teacher; give a "
                            "teacher for label-free distillation or labeled data (class subfolders, or 'labels' in "
                            "the .npz)", stage=STAGE)
        for name, values in (("--mean", mean), ("--std", std)):
            if len(values) not in (1, data.shape[2]):
                raise HalpError(f"{name} {','.join(map(str, values))}: {len(values)} values but {args.data} has "
                                f"{data.shape[2]} channels", stage=STAGE)
        if args.holdout is not None and args.holdout > 0 and not data.labeled and eval_data is None:
            raise HalpError(f"--holdout {args.holdout}: --data {args.data} has no labels to evaluate with",
                            stage=STAGE)
        plan.on_stage("load", time.perf_counter() - t0)

        config = FinetuneConfig(
            epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
            weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, kd_weight=args.kd_weight,
            ce_weight=args.ce_weight, temperature=args.temperature, augment=not args.no_augment, crop=args.crop,
            mean=mean, std=std, amp=False if args.no_amp else None, device=args.device, seed=args.seed,
            holdout=args.holdout, clip_grad_norm=args.clip_grad_norm or None, max_steps=args.max_steps,
            checkpoint=args.checkpoint, resume=args.resume, num_workers=args.num_workers,
            reinsert_bn=args.reinsert_bn, block_stage=args.block_stage)
        info = init_distributed(args.device)
        t0 = time.perf_counter()
        result = finetune(student, onnx.load(args.teacher) if args.teacher else None, data, config,
                          progress=not args.no_progress, eval_data=eval_data)
        plan.on_stage("finetune", time.perf_counter() - t0)
        if not info.is_main:
            return 0
        check_model(result.model)
        plan.stage_model("model", result.model)
        mode = "KD + CE" if args.teacher and data.labeled else ("label-free KD" if args.teacher else "CE")
        if plan.reports:
            plan.stage_report(finetune_report(args, plan, student, result, data, config, mode))
        plan.say(f"fine-tuned {args.model} ({mode}): {result.steps} steps, {result.samples:,} images, "
                 f"{result.seconds:.1f}s")
        if result.blocks is not None and result.blocks.get("ran"):
            plan.say(result.blocks["note"])
        if result.initial_eval_top1 is not None and result.eval_top1 is not None:
            plan.say(f"held-out top-1: {100 * result.initial_eval_top1:.2f}% -> {100 * result.eval_top1:.2f}%")
        plan.commit()
    plan.say(f"wrote {args.out}")
    return 0


def finetune_report(args, plan, student, result, data, config, mode) -> dict:
    import time

    from .metrics import model_params
    from .report_schema import report

    written = plan.written()
    if args.checkpoint:
        written["checkpoint"] = args.checkpoint
    opset = next((o.version for o in student.opset_import if o.domain in ("", "ai.onnx")), None)
    return report("finetune", input=args.model, outputs=written,
                  model={"source": args.model, "opset": opset, "input_shapes": {}},
                  params=(model_params(student), model_params(result.model)),
                  seconds={**plan.seconds, "total": time.perf_counter() - plan.started}, warnings=plan.warnings,
                  details={"teacher": args.teacher, "data": args.data, "images": len(data), "labeled": data.labeled,
                           "mode": mode, "config": config.to_dict(), "history": result.history,
                           "initial_eval_top1": result.initial_eval_top1, "eval_top1": result.eval_top1,
                           "steps": result.steps, "samples": result.samples, "block_stage": result.blocks})


def main(argv: list[str] | None = None) -> int:
    """``python -m halp_onnx.cli_finetune ...`` (the same as ``halp-onnx finetune ...``)."""
    parser = argparse.ArgumentParser(prog="halp-onnx")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    at = 1 if argv[:1] == ["--debug"] else 0
    if argv[at:at + 1] != ["finetune"]:
        argv.insert(at, "finetune")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except HalpError as err:
        print(f"halp-onnx: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("halp-onnx: interrupted, nothing written", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        msg = str(err).splitlines()[0] if str(err) else ""
        print(f"halp-onnx: internal error: {type(err).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
