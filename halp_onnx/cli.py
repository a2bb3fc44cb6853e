"""Command line: ``halp-onnx {example,inspect,prune,compile,finetune,profile,latency,targets}``.

Every user error is one line on stderr naming the file, node or option, exit code 2, nothing written
(:mod:`halp_onnx.cli_io`); every report is one JSON schema (:mod:`halp_onnx.report_schema`).
"""
from __future__ import annotations

import argparse
import os
import sys

from .cli_guards import add_guard_options, guard_kwargs
from .cli_io import OutputPlan
from .errors import HalpError
from .pipeline.runner import StageFailure

EXIT_USAGE = 2
EXIT_INTERNAL = 3
RAW = argparse.RawDescriptionHelpFormatter

EPILOG_EXAMPLE = """examples:
  halp-onnx example resnet -o resnet.onnx
  halp-onnx example mobilenet -o mobilenet.onnx --json
"""
EPILOG_INSPECT = """examples:
  halp-onnx inspect model.onnx
  halp-onnx inspect model.onnx --json > groups.json
  halp-onnx inspect dynamic.onnx --input-shape input:1x3x224x224
"""
EPILOG_PRUNE = """examples:
  halp-onnx prune model.onnx --ratio 0.3 -o pruned.onnx
  halp-onnx prune model.onnx --ratio 0.5 --criterion random --seed 1 -o pruned.onnx --report report.json
  halp-onnx prune model.onnx --ratio 0.3 -o pruned.onnx --json > report.json
"""


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="halp-onnx", description="Latency-constrained structural pruning of ONNX models.",
                                epilog="run 'halp-onnx COMMAND --help' for a command's options and examples",
                                formatter_class=RAW)
    p.add_argument("--version", action="version", version=f"halp-onnx {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("example", help="write a built-in example model", epilog=EPILOG_EXAMPLE, formatter_class=RAW)
    ex.add_argument("name", help="resnet or mobilenet")
    ex.add_argument("--out", "-o", required=True, help="output .onnx path")
    ex.add_argument("--json", action="store_true", help="print the report (schema halp-onnx/report/v1) on stdout")

    shape_help = "static shape for an input with dynamic dims, NAME:1x3x224x224 (repeatable)"
    ins = sub.add_parser("inspect", help="show the channel groups of a model", epilog=EPILOG_INSPECT,
                         formatter_class=RAW)
    ins.add_argument("model")
    ins.add_argument("--json", action="store_true", help="print the report (schema halp-onnx/report/v1) on stdout")
    ins.add_argument("--input-shape", action="append", metavar="NAME:SHAPE", help=shape_help)

    pr = sub.add_parser("prune", help="remove a share of every prunable group, rewrite and verify",
                        epilog=EPILOG_PRUNE, formatter_class=RAW)
    pr.add_argument("model")
    pr.add_argument("--ratio", type=float, required=True, help="share of each group's channels to remove")
    pr.add_argument("--criterion", default="l2", help="l2 (weight magnitude) or random")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("-o", "--out", required=True, help="output .onnx path")
    pr.add_argument("--report", help="also write the JSON report here ('-': stdout)")
    pr.add_argument("--json", action="store_true", help="print the report on stdout (human text on stderr)")
    pr.add_argument("--input-shape", action="append", metavar="NAME:SHAPE", help=shape_help)
    pr.add_argument("--batch", type=int, default=1, help="batch size for a dynamic batch dim, or a new one for a "
                    "fixed batch where the graph allows it (default 1)")
    add_guard_options(pr)
    from .cli_compile import add_calib_options, add_repair_option

    add_calib_options(pr, "for the statistics repair after pruning: .npz (input arrays or images[, labels]) or an "
                          "image folder; top-1 before / after is reported when it has labels")
    add_repair_option(pr)

    from . import cli_compile, cli_profile

    cli_profile.add_parsers(sub)
    cli_compile.add_parser(sub)
    try:
        from . import cli_finetune
    except ImportError:  # pragma: no cover - the module is part of the package
        pass
    else:
        cli_finetune.add_parser(sub).set_defaults(run=cli_finetune.run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit 0 done; 2 a bad input or environment (one line naming the file, node,
    option or path, nothing written); 3 a bug (one line; ``--debug`` re-raises); 130 interrupted.
    Python warnings print as one ``halp-onnx: warning:`` line each while the command runs."""
    import contextlib
    import io

    from .errors import MAX_MESSAGE, environment_error, one_line_warnings, sanitize

    restore_warnings = one_line_warnings()
    args = None
    try:
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                args = _parser().parse_args(argv)
        except SystemExit as exc:  # argparse: usage + error become the error line alone
            if exc.code not in (0, None):
                lines = [ln for ln in captured.getvalue().splitlines() if ln.strip()]
                print(sanitize(lines[-1] if lines else "halp-onnx: error: bad arguments", MAX_MESSAGE),
                      file=sys.stderr)
                raise SystemExit(EXIT_USAGE) from None
            sys.stderr.write(captured.getvalue())
            raise
        from .profiles.trt.options import trt_settings

        with trt_settings(args):  # --trtexec PATH for trt-* targets, checked before any work
            builtin = {"example": _example, "inspect": _inspect, "prune": _prune}
            if args.command in builtin:
                return builtin[args.command](args)
            return args.run(args)
    except HalpError as err:
        print(f"halp-onnx: error: {sanitize(err, MAX_MESSAGE)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("halp-onnx: interrupted, nothing written", file=sys.stderr)
        return 130
    except MemoryError:
        what = f"{args.command} {getattr(args, 'model', '') or ''}".strip() if args is not None else "this command"
        print(sanitize(f"halp-onnx: error: not enough memory for {what} (free memory, or set "
                       "HALP_ONNX_MEMORY_BUDGET in bytes to refuse such models up front)", MAX_MESSAGE),
              file=sys.stderr)
        return EXIT_USAGE
    except StageFailure as err:  # a bug inside a pipeline stage: one line naming the stage unless --debug
        line = environment_error(err.error)
        if line is not None:  # the user's path or machine (permission, disk full, ...), not a bug
            print(f"halp-onnx: error: {err.stage}: {line}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(err.error, MemoryError):
            print(sanitize(f"halp-onnx: error: not enough memory for stage {err.stage}", MAX_MESSAGE),
                  file=sys.stderr)
            return EXIT_USAGE
        if args is not None and args.debug:
            raise err.error
        print(f"halp-onnx: internal error: {sanitize(err, MAX_MESSAGE)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as err:  # environment errors exit 2; anything else is a bug: one line unless --debug
        line = environment_error(err)
        if line is not None:
            print(f"halp-onnx: error: {line}", file=sys.stderr)
            return EXIT_USAGE
        if args is not None and args.debug:
            raise
        first = str(err).splitlines()[0] if str(err).strip() else ""
        print(f"halp-onnx: internal error: {sanitize(f'{type(err).__name__}: {first}', MAX_MESSAGE)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        restore_warnings()


def _example(args) -> int:
    from .examples import example
    from .metrics import model_params
    from .report_schema import report

    plan = OutputPlan("example")
    plan.add("-o", args.out, "model")
    plan.add_report(None, args.json)
    with plan:
        model = example(args.name)
        plan.stage_model("model", model)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        plan.stage_report(report("example", outputs=plan.written(), params=model_params(model),
                                 model={"source": f"example:{args.name}", "opset": opset, "input_shapes": {}},
                                 seconds=_total(plan, {}), warnings=plan.warnings, details={"name": args.name}))
        plan.commit()
    plan.say(f"wrote {args.out}")
    return 0


def _total(plan: OutputPlan, seconds) -> dict[str, float]:
    import time

    return {**dict(seconds or {}), "total": time.perf_counter() - plan.started}


def analysis_groups(analysis, widths=None) -> list[dict]:
    """The report's ``groups`` from a channel analysis (and the written widths, when there are)."""
    rows = []
    for g in analysis.groups:
        d = g.to_dict()
        d.pop("id")
        rows.append({"group": g.id, "size": g.size, "kept": widths[g.id][1] if widths else None, **d})
    return rows


def _inspect(args) -> int:
    from .api import inspect
    from .passes.load import parse_input_shapes
    from .report_schema import report

    plan = OutputPlan("inspect", inputs=[("model", args.model)])
    plan.add_report(None, args.json)
    with plan:
        loaded, analysis = inspect(args.model, parse_input_shapes(args.input_shape))
        if args.json:
            plan.stage_report(report("inspect", input=args.model, model=loaded.to_dict(), params=analysis.total_params,
                                     macs=analysis.total_macs, groups=analysis_groups(analysis),
                                     seconds=_total(plan, {}), warnings=plan.warnings,
                                     details={"prunable_params": analysis.prunable_params,
                                              "prunable_groups": len(analysis.prunable)}))
            plan.commit()
            return 0
        plan.commit()
    say = plan.say
    say(f"{loaded.source}: opset {loaded.opset}, {analysis.total_params:,} parameters, "
        f"{analysis.total_macs / 1e6:,.1f} MMACs, {len(analysis.groups)} channel groups "
        f"({len(analysis.prunable)} prunable)")
    say(f"{'group':>5} {'size':>6} {'params%':>8} {'MACs%':>7}  producers -> consumers / reason")
    for g in analysis.groups:
        params = 100 * g.params / max(analysis.total_params, 1)
        macs = 100 * g.macs / max(analysis.total_macs, 1)
        prod = _names(g.producers)
        cons = _names(g.consumers)
        tail = f"{prod} -> {cons}" if g.prunable else f"frozen: {g.reasons[0]}"
        say(f"{g.id:>5} {g.size:>6} {params:>7.1f}% {macs:>6.1f}%  {tail}")
    share = analysis.prunable_params / max(analysis.total_params, 1)
    say(f"prunable groups touch {100 * share:.1f}% of the parameters")
    return 0


def _names(names, limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit})" if len(names) > limit else "") if names else "-"


def _prune(args) -> int:
    from .api import prune
    from .cli_profile import input_shapes
    from .report_schema import report

    from .cli_compile import calib_settings, say_repair

    settings = calib_settings(args)
    plan = OutputPlan("prune", inputs=[("model", args.model), ("--calib", args.calib)])
    plan.add("-o", args.out, "model")
    plan.add_report(args.report, args.json)
    with plan:
        res = prune(args.model, args.ratio, criterion=args.criterion, seed=args.seed,
                    input_shapes=input_shapes(args.model, args.input_shape, args.batch), calib=args.calib,
                    calib_samples=args.calib_samples, repair=args.repair, **settings, **guard_kwargs(args))
        for w in res.warnings:
            plan.warn(w)
        loaded, analysis, result, check = res.loaded, res.analysis, res.rewrite, res.verification
        times = res.seconds or {}
        if check is not None and not check.input_sensitive:
            plan.warn("the model's outputs did not change with its inputs, so the verification is weak "
                      "(untrained weights whose activations vanish?)")
        plan.stage_model("model", res.model)  # repaired where --calib gave data
        if plan.reports:
            plan.stage_report(report(
                "prune", input=args.model, outputs=plan.written(), model=loaded.to_dict(), params=result.params,
                macs=result.macs, groups=analysis_groups(analysis, result.widths),
                verification=check.to_dict() if check else None, seconds=_total(plan, times),
                warnings=plan.warnings, details={"ratio": args.ratio, "criterion": args.criterion, "seed": args.seed,
                                                 "repair": res.repair}))
        _print_table(analysis, result, plan.say)
        if check is not None:
            plan.say(f"verified: max relative error {check.max_rel_error:.2e} (tolerance {check.tolerance:g}, "
                     f"{check.trials} random inputs)")
        say_repair(res.repair, plan.say)
        plan.say("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
        written = plan.commit()
    plan.say("wrote " + ", ".join(p for p in written.values() if p != "-"))
    return 0


def _print_table(analysis, result, say=print) -> None:
    (p0, p1), (m0, m1) = result.params, result.macs
    say(f"{'':12}{'before':>16}{'after':>16}{'ratio':>8}")
    say(f"{'params':12}{p0:>16,}{p1:>16,}{p1 / max(p0, 1):>8.3f}")
    say(f"{'MACs':12}{m0:>16,}{m1:>16,}{m1 / max(m0, 1):>8.3f}")
    say(f"{'group':>5} {'width':>12}  producers")
    for g in analysis.groups:
        before, after = result.widths[g.id]
        if g.prunable:
            say(f"{g.id:>5} {before:>5} -> {after:<4}  {_names(g.producers)}")
    frozen = [g for g in analysis.groups if not g.prunable]
    if frozen:
        say(f"{len(frozen)} frozen groups kept whole (see 'halp-onnx inspect')")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
