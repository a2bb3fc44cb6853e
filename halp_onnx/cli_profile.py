"""``halp-onnx targets | profile | latency``: latency targets, measured tables, predictions."""
from __future__ import annotations

import sys
from typing import Any

from .errors import HalpError

STAGE = "cli"
SHAPE_HELP = "static shape for an input with dynamic dims, NAME:1x3x224x224 (repeatable)"


def add_model_options(p, *, measure_flag: bool = True) -> None:
    """Options every command that loads a model for a target shares."""
    p.add_argument("--target", default="ort-cpu", help="latency target (see 'halp-onnx targets'); default ort-cpu")
    p.add_argument("--batch", type=int, default=1, help="batch size for a dynamic batch dim (default 1)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="precision variant of the target")
    p.add_argument("--threads", type=int, default=1, help="ort-cpu intra-op threads (a distinct profile)")
    p.add_argument("--input-shape", action="append", metavar="NAME:SHAPE", help=SHAPE_HELP)
    from .profiles.trt.options import add_trt_options

    add_trt_options(p)


EPILOG_TARGETS = """examples:
  halp-onnx targets
  halp-onnx targets --json
"""
EPILOG_PROFILE = """examples:
  halp-onnx profile model.onnx --target ort-cpu
  halp-onnx profile model.onnx --target trt-local-int8 --batch 8 --profile local-int8.json
  halp-onnx profile model.onnx --remeasure --quiet --json > profile-report.json
"""
EPILOG_LATENCY = """examples:
  halp-onnx latency model.onnx
  halp-onnx latency model.onnx --target trt-v100 --no-measure
  halp-onnx latency pruned.onnx --target ort-cpu --json
"""
JSON_HELP = "print the report (schema halp-onnx/report/v1) on stdout, human text on stderr"


def add_parsers(sub) -> None:
    from argparse import RawDescriptionHelpFormatter as raw

    t = sub.add_parser("targets", help="list latency targets, whether they can run here, and cached profiles",
                       epilog=EPILOG_TARGETS, formatter_class=raw)
    t.add_argument("--json", action="store_true", help=JSON_HELP)
    t.set_defaults(run=run_targets)

    p = sub.add_parser("profile", help="measure a target's latency tables for a model's blocks",
                       epilog=EPILOG_PROFILE, formatter_class=raw)
    p.add_argument("model")
    add_model_options(p)
    p.add_argument("--remeasure", action="store_true", help="ignore cached points and measure again")
    p.add_argument("--profile", help="profile JSON to read and extend (default: the user cache)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar or stage lines")
    p.set_defaults(run=run_profile)

    lat = sub.add_parser("latency", help="predicted (table sum) and measured latency of a model",
                         epilog=EPILOG_LATENCY, formatter_class=raw)
    lat.add_argument("model")
    add_model_options(lat)
    lat.add_argument("--json", action="store_true", help=JSON_HELP)
    lat.add_argument("--no-measure", action="store_true", help="predict only (do not profile or time)")
    lat.add_argument("--profile", help="profile JSON to use (default: the user cache, then hw_profiles/)")
    lat.add_argument("--top", type=int, default=15, help="rows of the per-layer breakdown (default 15)")
    lat.add_argument("--quiet", action="store_true", help="no progress bar or stage lines")
    lat.set_defaults(run=run_latency)


def plan_profile(plan, args, target, *, may_measure: bool) -> None:
    """The profile store as an output of ``plan``: ``--profile`` checked like any output; the folder
    a measurement would be saved in checked (and cleaned of a killed run's temp files) before measuring."""
    from pathlib import Path

    from .profiles.store import check_folder, user_dir

    given = getattr(args, "profile", None)
    plan.add("--profile", given, "profile", staged=False)
    folder = Path(given).parent if given else user_dir()
    if given and (Path(given).parent.exists() and not Path(given).parent.is_dir() or
                  any(p.exists() and not p.is_dir() for p in Path(given).parents)):
        check_folder(folder, f"--profile {given}")  # a file where its folder should be: say so even to read it
    if folder.is_dir():
        plan.folders.append(folder)
    if may_measure:
        from .profiles.targets import target_status

        if target_status(target)[0] or target.gpu is None:
            check_folder(folder, f"--profile {given}" if given else None)


def timed(plan, stage: str, fn, *a, **kw):
    import time

    t0 = time.perf_counter()
    out = fn(*a, **kw)
    plan.on_stage(stage, time.perf_counter() - t0)
    return out


def resolve_target(args):
    from .profiles.targets import get_target

    name = args.target
    if getattr(args, "precision", None):
        base = get_target(name)
        if base.precision != args.precision:
            stem = base.name.rsplit("-", 1)[0] if base.name.endswith(("-fp32", "-fp16", "-int8")) else base.name
            for cand in (f"{stem}-{args.precision}", stem):
                try:
                    t = get_target(cand)
                except HalpError:
                    continue
                if t.precision == args.precision:
                    return t
            raise HalpError(f"--precision {args.precision}: target {base.name} has no {args.precision} variant",
                            stage=STAGE)
        return base
    return get_target(name)


def input_shapes(model: str, specs, batch: int) -> dict[str, tuple[int, ...]]:
    """``--input-shape`` values, plus ``--batch`` for inputs whose only dynamic dim is the first, and for
    inputs with a fixed batch where the graph allows another one (``passes.load.batch_pin``: strict shape
    inference at the new batch, no node such as a Reshape to a constant shape pinning the old one)."""
    from .passes.load import batch_pin, parse_input_shapes, read_model

    if batch < 1:
        raise HalpError(f"--batch {batch}: expected a positive batch size", stage=STAGE)
    shapes = parse_input_shapes(specs)
    m = read_model(model)
    inits = {i.name for i in m.graph.initializer}
    fixed: dict[str, tuple[int, ...]] = {}
    for vi in m.graph.input:
        if vi.name in inits or vi.name in shapes or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        rest = [d for d in static[1:] if d is not None]
        if not static or len(rest) != len(static[1:]):
            continue  # other dynamic dims: --input-shape (load says so)
        if static[0] is None:
            shapes[vi.name] = (batch, *rest)
        elif batch != 1 and static[0] != batch:
            if len(static) < 2:
                raise HalpError(f"--batch {batch}: input {vi.name!r} of {model} has a fixed batch of {static[0]}",
                                stage=STAGE)
            fixed[vi.name] = (batch, *rest)
    if fixed:
        why = batch_pin(m, {k: v[0] for k, v in fixed.items()})
        if why is not None:
            name = next(iter(fixed))
            raise HalpError(f"--batch {batch}: {model}: input {name!r} has a fixed batch the graph does not let "
                            f"change: {why}", stage=STAGE)
        shapes.update(fixed)
    return shapes


def load_for_target(args):
    from .api import inspect

    loaded, analysis = inspect(args.model, input_shapes(args.model, args.input_shape, args.batch))
    return loaded, analysis, resolve_target(args)


# ---------------------------------------------------------------------------------------- targets
def run_targets(args) -> int:
    from .cli_io import OutputPlan
    from .profiles.latency import profile_fingerprint
    from .profiles.store import SHIPPED_DIR, find_profile, profile_name, user_dir
    from .profiles.targets import TARGETS, target_status
    from .report_schema import report

    plan = OutputPlan("targets")
    plan.add_report(None, args.json)
    with plan:
        rows: list[dict[str, Any]] = []  # JSON rows
        for name, t in sorted(TARGETS.items()):
            ok, reason = target_status(t)
            pname = profile_name(name)
            found = []
            for where, d in (("user", user_dir()), ("shipped", SHIPPED_DIR)):
                f = d / f"{pname}.json"
                if f.is_file():
                    found.append(f"{where}:{f}")
            usable = None
            if found:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    prof, _ = find_profile(pname, profile_fingerprint(t))
                usable = prof is not None
            mode = "measured" if ok else ("estimated (analytic)" if t.gpu else "unavailable")
            rows.append({"target": name, "backend": t.backend, "precision": t.precision, "available": ok,
                         "status": reason, "latency": mode, "profiles": found,
                         "profile_matches_this_device": usable})
        plan.stage_report(report("targets", seconds=plan_seconds(plan), warnings=plan.warnings,
                                 details={"targets": rows, "user_profile_dir": str(user_dir())}))
        plan.commit()
    if args.json:
        return 0
    say = plan.say
    say(f"{'target':<16} {'precision':<9} {'here':<5} {'latency':<21} profile / status")
    for r in rows:
        prof_text = ("profile " + ("matches" if r["profile_matches_this_device"] else "from another device") +
                     f" ({len(r['profiles'])} file)") if r["profiles"] else "no profile"
        say(f"{r['target']:<16} {r['precision']:<9} {'yes' if r['available'] else 'no':<5} {r['latency']:<21} "
            f"{prof_text}; {r['status']}")
    say(f"user profiles: {user_dir()}")
    return 0


def plan_seconds(plan) -> dict[str, float]:
    import time

    return {**plan.seconds, "total": time.perf_counter() - plan.started}


# ---------------------------------------------------------------------------------------- profile
def run_profile(args) -> int:
    from .cli_io import OutputPlan
    from .profiles.blocks import model_blocks
    from .profiles.latency import latency_model
    from .report_schema import report

    plan = OutputPlan("profile", inputs=[("model", args.model)], quiet=args.quiet)
    plan.add_report(None, args.json)
    target = resolve_target(args)
    plan_profile(plan, args, target, may_measure=True)
    with plan:
        loaded, analysis, target = timed(plan, "load", load_for_target, args)
        run = timed(plan, "latency-model", latency_model, loaded, analysis, target, threads=args.threads,
                    measure=True, progress=not args.quiet and sys.stderr.isatty(), remeasure=args.remeasure,
                    profile_path=args.profile)
        prof = run.model.profile
        if prof is None:  # measure=True always gives a profile; reading None raised this AttributeError before
            raise AttributeError(f"{target.name}: measuring gave no profile")
        keys = sorted({b.signature.key() for b in model_blocks(loaded, analysis, precision=target.precision, fusion=target.fusion)})
        tables = [{"signature": k, "step": prof.tables[k].step, "points": len(prof.tables[k].points)} for k in keys]
        plan.stage_report(report(
            "profile", input=args.model, outputs={"profile": run.path} if run.new_points and run.path else {},
            model=loaded.to_dict(), target=run.model.target.name, params=analysis.total_params,
            macs=analysis.total_macs, seconds=plan_seconds(plan), warnings=plan.warnings,
            details={"signatures": run.signatures, "new_points": run.new_points, "reused_points": run.reused_points,
                     "profile": run.path, "tables": tables}))
        plan.commit()
    say = plan.say
    say(f"{target.name}: {run.signatures} block signatures, {run.new_points} new measurements, "
        f"{run.reused_points} reused, {run.seconds:.1f} s; run overhead {prof.overhead_ms * 1e3:.1f} us")
    say(f"{'signature':<72} {'step':>4} {'points':>6}")
    for row in tables:
        say(f"{row['signature'][:72]:<72} {row['step']:>4} {row['points']:>6}")
    say(f"profile: {run.path}")
    return 0


# ---------------------------------------------------------------------------------------- latency
def run_latency(args) -> int:
    from .cli_io import OutputPlan
    from .profiles.backends import get_backend
    from .profiles.blocks import model_blocks
    from .profiles.latency import latency_model, predict
    from .profiles.targets import target_status
    from .report_schema import report

    plan = OutputPlan("latency", inputs=[("model", args.model)], quiet=args.quiet)
    plan.add_report(None, args.json)
    plan_profile(plan, args, resolve_target(args), may_measure=not args.no_measure)
    with plan:
        loaded, analysis, target = timed(plan, "load", load_for_target, args)
        blocks = model_blocks(loaded, analysis, precision=target.precision, fusion=target.fusion)
        run = timed(plan, "latency-model", latency_model, loaded, analysis, target, threads=args.threads,
                    measure=False if args.no_measure else None,
                    progress=not args.quiet and not args.json and sys.stderr.isatty(), profile_path=args.profile,
                    blocks=blocks)
        for w in run.warnings:
            plan.warn(w)
        pred = predict(blocks, run.model)
        measured = None
        ok, reason = target_status(run.model.target)
        if ok and not args.no_measure:
            measured = timed(plan, "measure", get_backend(run.model.target, threads=args.threads).time_model,
                             loaded.model, budget_s=2.0)
        lat = {"predicted_ms": round(pred.total_ms, 4), "measured_ms": round(measured.median_ms, 4) if measured else None,
               "label": pred.label,
               "error_pct": round(100 * (pred.total_ms / measured.median_ms - 1), 2) if measured else None,
               "measured_runs": measured.runs if measured else None,
               "measured_status": None if measured else (reason if not ok else "not measured (--no-measure)"),
               "profile": run.path, "overhead_ms": round(pred.overhead_ms, 5)}
        plan.stage_report(report(
            "latency", input=args.model, outputs={"profile": run.path} if run.new_points and run.path else {},
            model=loaded.to_dict(), target=run.model.target.name, params=analysis.total_params,
            macs=analysis.total_macs, latency=lat, seconds=plan_seconds(plan), warnings=plan.warnings,
            details={"blocks": [b.to_dict() for b in pred.blocks]}))
        plan.commit()
    if args.json:
        return 0
    say = plan.say
    est = " (estimated: analytic model, no measurement)" if pred.label != "measured" else ""
    say(f"{args.model} on {run.model.target.name}{est}")
    say(f"predicted {pred.total_ms:.3f} ms (sum of {len(blocks)} blocks + run overhead {pred.overhead_ms:.3f} ms)")
    if measured:
        say(f"measured  {measured.median_ms:.3f} ms (median of {measured.runs} runs, p10 {measured.p10_ms:.3f}, "
            f"p90 {measured.p90_ms:.3f}); prediction error {lat['error_pct']:+.1f}%")
    else:
        say(f"measured  - ({lat['measured_status']})")
    rows = sorted(pred.blocks, key=lambda b: -b.ms)[: max(args.top, 0)]
    if rows:
        say(f"{'node':<28} {'op':<11} {'c_in':>6} {'c_out':>6} {'ms':>9} {'share':>6}")
        for b in rows:
            say(f"{b.node[:28]:<28} {b.op:<11} {b.c_in:>6} {b.c_out:>6} {b.ms:>9.4f} "
                f"{100 * b.ms / max(pred.total_ms, 1e-12):>5.1f}%")
    return 0
