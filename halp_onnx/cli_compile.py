"""``halp-onnx compile``: HALP latency-constrained pruning, end to end."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_guards import add_guard_options, guard_kwargs
from .errors import HalpError

STAGE = "cli"
EPILOG = """examples:
  halp-onnx compile model.onnx --target ort-cpu --latency 0.5 -o pruned.onnx --report report.json
  halp-onnx compile model.onnx --target trt-local --latency 3.2ms -o pruned.onnx --engine pruned.plan
  halp-onnx compile model.onnx --target trt-v100 --latency 50% --no-measure -o pruned.onnx --json --quiet
  halp-onnx compile model.onnx --latency 0.6 --iterative --data images/ --epochs 2 -o pruned.onnx
"""


def add_parser(sub):
    from .cli_profile import add_model_options

    from argparse import RawDescriptionHelpFormatter

    p = sub.add_parser("compile", help="prune to a latency budget on a target (HALP knapsack), verify, write",
                       epilog=EPILOG, formatter_class=RawDescriptionHelpFormatter)
    p.add_argument("model")
    add_model_options(p)
    p.add_argument("--latency", required=True,
                   help="budget: a share of the dense model's latency (0.5, 50%%) or a time (3.2ms)")
    p.add_argument("-o", "--out", required=True, help="output .onnx path")
    p.add_argument("--report", help="write the JSON report here ('-': stdout)")
    p.add_argument("--json", action="store_true", help="print the report on stdout (human text on stderr)")
    p.add_argument("--html", help="write an HTML report with plots here (needs matplotlib)")
    p.add_argument("--engine", help="also build a TensorRT engine of the result here (trt-* targets, TensorRT needed)")
    add_calib_options(p, "for Taylor importance and the statistics repair: .npz (input arrays or images[, labels]) "
                         "or an image folder; without it, magnitude importance and no repair")
    p.add_argument("--solver", default="exact", choices=("exact", "augmented"),
                   help="exact multiple-choice knapsack (default) or the paper's augmented greedy")
    p.add_argument("--min-keep", type=float, default=0.1, help="smallest share of a group's channels kept (default 0.1)")
    p.add_argument("--no-removal", action="store_true", help="never prune a group to zero (no block removal)")
    p.add_argument("--prune-first", action="store_true", help="also prune the first layer's output channels")
    add_guard_options(p)
    add_repair_option(p)
    p.add_argument("--no-measure", action="store_true", help="do not time the models on the target")
    p.add_argument("--profile", help="profile JSON to use/extend (default: the user cache, then hw_profiles/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, stage lines or warnings")
    it = p.add_argument_group("iterative HALP (prune progressively while fine-tuning; needs the torch extra)")
    it.add_argument("--iterative", action="store_true", help="the paper's progressive pruning during fine-tuning")
    it.add_argument("--data", help="training images: folder (class subfolders = labeled) or .npz images[, labels]")
    it.add_argument("--eval-data", help="labeled images to evaluate on (default: a --holdout share of --data)")
    it.add_argument("--holdout", type=float, help="share of labeled --data held out for evaluation (default 0.1)")
    it.add_argument("--teacher", help="distillation teacher (default: the input model itself)")
    it.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs in all (default 1)")
    it.add_argument("--batch-size", type=int, default=128)
    it.add_argument("--lr", type=float, help="learning rate (default 0.01 SGD, 1e-3 AdamW)")
    it.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    it.add_argument("--steps", type=int, default=30, help="pruning steps (default 30, as the paper)")
    it.add_argument("--interval", type=int, default=40, help="optimizer steps between pruning steps (default 40)")
    it.add_argument("--schedule", default="geometric", choices=("geometric", "linear"),
                    help="how the latency target shrinks from dense to the goal")
    it.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(run=run)
    return p


def add_calib_options(p, what: str) -> None:
    """``--calib`` and its preprocessing, shared by ``compile`` and ``prune``."""
    p.add_argument("--calib", help=f"calibration data {what}")
    p.add_argument("--mean", default="0.485,0.456,0.406", help="preprocessing mean of --calib images ([0,1] pixels)")
    p.add_argument("--std", default="0.229,0.224,0.225", help="preprocessing std of --calib images")
    p.add_argument("--size", help="resize --calib images to this size (H or HxW)")
    p.add_argument("--calib-samples", type=int, default=2000,
                   help="calibration images to use (default 2000); the repair's time grows with them "
                        "(ResNet-18 at 224 px, one thread: about 0.4 s per image)")


def add_repair_option(p) -> None:
    p.add_argument("--repair", action=argparse.BooleanOptionalAction, default=None,
                   help="repair the pruned model on --calib data: refit the disturbed layers by least squares, then "
                        "match per-channel statistics to the dense model's (default: on with --calib)")
    p.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=True,
                   help="within the repair, the least-squares refit of the layers pruning disturbed (default: on)")
    p.add_argument("--descent", action=argparse.BooleanOptionalAction, default=True,
                   help="within the repair, after the refit: the pruned model trained block by block towards the "
                        "dense model on --calib data, kept where it helps on held-out batches (needs torch; "
                        "default: on; CIFAR ResNet-56 at 0.5 of its latency: about 3 minutes on one thread)")


def say_repair(repair: dict | None, say) -> None:
    """One line on the statistics repair: what it changed and, with labelled --calib data, top-1 on those
    images before and after (in-sample: a check, not a test score)."""
    if not repair:
        return
    rec = repair.get("reconstructed")
    line = "repair: "
    if rec:
        line += (f"{rec['layers']} layers refitted by least squares (error {rec['mean_error_before']:.3f} -> "
                 f"{rec['mean_error_after']:.3f} of the dense output's variance, {rec['seconds']:.1f}s), then ")
        d = rec.get("descent")
        if d and d.get("kept"):
            line += f"trained block by block ({d['steps']} steps, {d['seconds']:.1f}s), then "
    line += (f"{repair['layers']} layers' statistics matched to the dense model on {repair['samples']} calibration "
             f"inputs ({repair['seconds']:.1f}s)")
    if repair.get("top1_before") is not None and repair.get("top1_after") is not None:
        line += f"; top-1 on them {100 * repair['top1_before']:.1f}% -> {100 * repair['top1_after']:.1f}%"
    say(line)


def calib_settings(args) -> dict:
    """The checked calibration options as keyword arguments of ``compile`` / ``prune``."""
    from .data import parse_floats, parse_size

    if args.repair and args.calib is None:
        raise HalpError("--repair needs calibration data (--calib images or .npz)", stage=STAGE)
    if args.calib is not None and not Path(args.calib).exists():
        raise HalpError(f"--calib {args.calib}: no such file or folder", stage=STAGE)
    return {"mean": parse_floats(args.mean, "--mean", 3), "std": parse_floats(args.std, "--std", 3),
            "size": parse_size(args.size) if args.size else None, "reconstruct": args.reconstruct,
            "descent": args.descent}


def _plan(args, target):
    from .cli_io import OutputPlan
    from .cli_profile import plan_profile

    plan = OutputPlan("compile", quiet=args.quiet,
                      inputs=[("model", args.model), ("--calib", args.calib), ("--data", args.data),
                              ("--eval-data", args.eval_data), ("--teacher", args.teacher)])
    plan.add("-o", args.out, "model")
    plan.add_report(args.report, args.json)
    plan.add("--html", args.html, "html", stdout_ok=True)
    plan.add("--engine", args.engine, "engine")
    if args.engine and target.precision == "int8" and args.calib:
        plan.add("--engine", args.engine + ".calib", "engine-calib")  # the calibration cache beside the engine
    plan_profile(plan, args, target, may_measure=True)
    return plan


def run(args) -> int:
    from .cli_profile import input_shapes, resolve_target
    from .budget import LatencyBudget
    from .compiler import compile
    from .profiles.targets import target_status

    budget = LatencyBudget.parse(args.latency)
    target = resolve_target(args)
    if args.engine:
        if target.backend != "tensorrt":
            raise HalpError(f"--engine {args.engine}: only for TensorRT targets (trt-*), not {target.name}", stage=STAGE)
        ok, reason = target_status(target)
        if not ok:
            raise HalpError(f"--engine {args.engine}: cannot build a TensorRT engine here ({reason})", stage=STAGE)
        from .profiles.backends import check_int8_engine

        check_int8_engine(target, args.model, args.calib is not None)
    settings = calib_settings(args)
    mean, std, size = settings["mean"], settings["std"], settings["size"]
    progress = not args.quiet and sys.stderr.isatty()
    if args.iterative:
        if not args.data:
            raise HalpError("--iterative needs --data (training images)", stage=STAGE)
        if args.calib:
            raise HalpError("--calib is for one-shot compile; --iterative accumulates Taylor importance while "
                            "training", stage=STAGE)
        if args.html or args.engine:
            raise HalpError(f"{'--html' if args.html else '--engine'}: for one-shot compile, not --iterative",
                            stage=STAGE)
    elif args.data:
        raise HalpError("--data is for --iterative; one-shot compile takes calibration images with --calib",
                        stage=STAGE)
    with _plan(args, target) as plan:
        if args.iterative:
            return run_iterative(args, plan, target, budget, mean, std, progress)
        result = compile(args.model, target, budget, calib=args.calib, mean=mean, std=std, size=size,
                         calib_samples=args.calib_samples, solver=args.solver, min_keep=args.min_keep,
                         allow_removal=not args.no_removal, prune_first=args.prune_first, threads=args.threads,
                         input_shapes=input_shapes(args.model, args.input_shape, args.batch),
                         measure_result=not args.no_measure, progress=progress, profile_path=args.profile,
                         on_stage=plan.on_stage, repair=args.repair, reconstruct=settings["reconstruct"],
                         descent=settings["descent"], **guard_kwargs(args))
        for w in result.warnings:
            plan.warn(w)
        if args.engine:
            _stage_engine(plan, args, target, result.model, mean, std, size)
        plan.stage_model("model", result.model)
        if args.html:
            from .report_html import html_report

            plan.stage_text("html", html_report(result))
        if plan.reports:
            plan.stage_report(compile_report(result, plan, args))
        print_summary(result, plan.say, notes=False)  # warnings: one line each, on stderr
        say_repair(result.repair, plan.say)
        written = plan.commit()
    plan.say("wrote " + ", ".join(p for p in written.values() if p != "-"))
    return 0


def compile_report(r, plan, args) -> dict:
    """The ``compile`` report (schema halp-onnx/report/v1) of a one-shot :class:`CompileResult`."""
    from .cli_profile import plan_seconds
    from .report_schema import report

    d = r.to_dict()
    lat = {"predicted_ms": r.predicted_ms, "measured_ms": r.measured_ms, "label": r.label,
           "dense_predicted_ms": r.dense_predicted_ms, "dense_measured_ms": r.dense_measured_ms,
           "min_predicted_ms": r.min_predicted_ms, "measured_speedup": r.measured_speedup,
           "measured_over_target": d["measured_over_target"]}
    groups = [{"group": g.group, "size": g.size, "kept": g.kept, "prunable": True, "producers": list(g.producers),
               "step": g.step, "allowed": g.allowed, "latency_dense_ms": g.latency_dense_ms,
               "latency_ms": g.latency_ms, "frozen": g.frozen} for g in r.groups]
    prof = r.profile or {}
    profile = {k: prof.get(k) for k in ("name", "target", "precision", "batch", "threads", "estimated",
                                         "fingerprint", "overhead_ms", "block_time")}
    profile["tables"] = len(prof.get("tables") or {})
    return report("compile", input=args.model, outputs=plan.written(), model={"source": r.source}, target=r.target,
                  params=r.rewrite.params, macs=r.rewrite.macs, latency=lat,
                  budget=d["budget"] or {"request": r.latency_request, "budget_ms": r.budget_ms}, groups=groups,
                  verification=d["verification"], seconds={**plan_seconds(plan), **r.seconds},
                  warnings=plan.warnings,
                  details={"mode": "one-shot", "importance": d["importance"], "solver": d["solver"],
                           "rounds": d["rounds"], "blocks": d["blocks"], "profile": profile, "repair": r.repair})


def run_iterative(args, plan, target, budget, mean, std, progress) -> int:
    import math
    import time

    from .api import inspect
    from .cli_profile import plan_seconds
    from .data import load_data
    from .profiles.backends import get_backend
    from .profiles.targets import target_status
    from .report_schema import report

    try:
        from .torch.finetune import FinetuneConfig
        from .torch.halp import compile_iterative
    except ImportError as exc:
        raise HalpError(f"--iterative needs PyTorch ({exc}); pip install 'halp-onnx[torch]'", stage=STAGE) from None
    data = load_data(args.data)
    holdout = args.holdout if args.holdout is not None else (0.1 if data.labeled and not args.eval_data else 0.0)
    steps_total = math.floor(len(data) * (1 - holdout) / args.batch_size) * args.epochs
    need = args.steps * args.interval
    if steps_total < need:
        raise HalpError(f"--epochs {args.epochs:g}: {int(steps_total)} optimizer steps of {args.batch_size} images, "
                        f"fewer than --steps {args.steps} x --interval {args.interval} = {need}; give more epochs or "
                        "a smaller --interval", stage=STAGE)
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                         mean=tuple(mean), std=tuple(std), holdout=holdout, device=args.device)
    shapes = input_shapes_for(args)
    t0 = time.perf_counter()
    res, ft = compile_iterative(args.model, data, target=target.name, latency=budget, config=cfg,
                                steps=args.steps, interval=args.interval, schedule=args.schedule,
                                teacher=args.teacher or "self", eval_data=args.eval_data, progress=progress,
                                min_keep=args.min_keep, allow_removal=not args.no_removal,
                                prune_first=args.prune_first, solver=args.solver, threads=args.threads,
                                input_shapes=shapes, profile_path=args.profile)
    plan.on_stage("iterative", time.perf_counter() - t0)
    ok, _ = target_status(target)
    dense_ms = measured_ms = None
    if ok and not args.no_measure:
        backend = get_backend(target, threads=args.threads)
        dense_ms = backend.time_model(args.model).median_ms
        measured_ms = backend.time_model(res.model).median_ms
    plan.stage_model("model", res.model)
    if plan.reports:
        loaded, analysis = inspect(args.model, shapes)
        prunable = {g.id: g.prunable for g in analysis.groups}
        groups = [{"group": int(g), "size": w[0], "kept": w[1], "prunable": prunable.get(int(g), False),
                   "producers": list(analysis.groups[int(g)].producers) if int(g) < len(analysis.groups) else []}
                  for g, w in sorted(res.widths.items())]
        lat = {"predicted_ms": res.predicted_ms, "measured_ms": measured_ms,
               "label": "measured" if ok else "estimated", "dense_predicted_ms": res.dense_predicted_ms,
               "dense_measured_ms": dense_ms}
        plan.stage_report(report(
            "compile", input=args.model, outputs=plan.written(), model=loaded.to_dict(), target=target.name,
            params=res.rewrite.params, macs=res.rewrite.macs, latency=lat,
            budget={"request": budget.text, "budget_ms": res.budget_ms, "dense_ms": res.dense_predicted_ms},
            groups=groups, verification=res.verification.to_dict() if res.verification else None,
            seconds=plan_seconds(plan), warnings=plan.warnings,
            details={"mode": "iterative", "history": [h.to_dict() for h in res.history],
                     "calibration": list(res.calibration),
                     "finetune": {"history": ft.history, "seconds": ft.seconds, "steps": ft.steps}}))
    say = plan.say
    (p0, p1), (m0, m1) = res.rewrite.params, res.rewrite.macs
    say(f"iterative HALP: {len(res.history)} pruning steps; predicted {res.dense_predicted_ms:.4g} -> "
        f"{res.predicted_ms:.4g} ms (budget {res.budget_ms:.4g} ms); params {p1 / p0:.3f}x, MACs {m1 / m0:.3f}x")
    if measured_ms is not None and dense_ms is not None:
        say(f"measured {dense_ms:.4g} -> {measured_ms:.4g} ms")
    if ft.eval_top1 is not None:
        say(f"held-out top-1 after fine-tuning: {100 * ft.eval_top1:.2f}%")
    say(f"verified: max relative error {res.verification.max_rel_error:.2e}")
    written = plan.commit()
    say("wrote " + ", ".join(p for p in written.values() if p != "-"))
    return 0


def input_shapes_for(args):
    from .cli_profile import input_shapes

    return input_shapes(args.model, args.input_shape, args.batch)


def print_summary(r, say=print, *, notes: bool = True) -> None:
    est = r.label != "measured"
    tag = " [ESTIMATED: analytic model, not measured]" if est else ""
    say(f"{r.source} -> {r.target}{tag}: budget {r.latency_request}")
    say(f"importance: {r.importance.method} ({r.importance.note})")
    (p0, p1), (m0, m1) = r.rewrite.params, r.rewrite.macs
    say(f"{'':22}{'dense':>14}{'pruned':>14}{'ratio':>8}")
    say(f"{'params':22}{p0:>14,}{p1:>14,}{p1 / max(p0, 1):>8.3f}")
    say(f"{'MACs':22}{m0:>14,}{m1:>14,}{m1 / max(m0, 1):>8.3f}")
    word = "estimated" if est else "predicted"
    say(f"{word + ' latency (ms)':22}{r.dense_predicted_ms:>14.4f}{r.predicted_ms:>14.4f}"
          f"{r.predicted_ms / r.dense_predicted_ms:>8.3f}")
    if r.measured_ms is not None:
        say(f"{'measured latency (ms)':22}{r.dense_measured_ms:>14.4f}{r.measured_ms:>14.4f}"
              f"{r.measured_ms / r.dense_measured_ms:>8.3f}   (speed-up {r.measured_speedup:.2f}x)")
    say(f"{'group':>5} {'width':>13} {'step':>5} {'ms dense':>9} {'ms after':>9}  producers")
    for g in r.groups:
        if g.frozen:
            continue
        names = ", ".join(g.producers[:2]) + (f" (+{len(g.producers) - 2})" if len(g.producers) > 2 else "")
        say(f"{g.group:>5} {g.size:>6} -> {g.kept:<4} {g.step:>5} {g.latency_dense_ms:>9.4f} {g.latency_ms:>9.4f}  "
              f"{names}")
    held = [g for g in r.groups if g.frozen]
    if held:
        say(f"{len(held)} prunable group(s) held dense: {held[0].frozen}")
    s = r.solver
    if "exact_value" in s:
        say(f"knapsack: {s['solver']}, {s['rounds']} rounds, {s['items']} groups / {s['choices']} choices; "
              f"objective exact {s['exact_value']:.4g} vs augmented {s['augmented_value']:.4g}")
    if r.verification is not None:
        say(f"verified: max relative error {r.verification.max_rel_error:.2e} "
              f"(tolerance {r.verification.tolerance:g})")
    say("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in r.seconds.items()))
    for w in r.warnings if notes else ():
        say(f"note: {w}")


def _stage_engine(plan, args, target, model, mean, std, size) -> None:
    """Build the TensorRT engine into the plan (int8: calibrated from --calib, cache beside the engine)."""
    import os

    from .passes.calibration import calibration_batches
    from .passes.load import load
    from .profiles.backends import build_engine, has_qdq

    calib = None
    if target.precision == "int8" and args.calib and not has_qdq(model):
        loaded = load(model)
        batch = next(iter(loaded.input_shapes.values()))[0] if loaded.input_shapes else 1
        calib = [x for x, _ in calibration_batches(loaded, args.calib, mean=mean, std=std, size=size,
                                                   samples=args.calib_samples, batch_size=max(int(batch), 1))]
    built: list[str] = []

    def write(tmp) -> None:
        built.append(str(tmp))
        build_engine(target, model, tmp, calib_batches=calib)

    plan.stage_file("engine", write)
    if calib is not None and plan.planned("engine-calib"):
        plan.stage_file("engine-calib", lambda tmp: os.replace(built[0] + ".calib", tmp))
