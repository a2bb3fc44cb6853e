"""Command line: ``halp-onnx {example,inspect,prune}``.

Every user error is one line on stderr naming the file, node or option, exit code 2, nothing written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .cli_io import check_output, write_text_atomic
from .errors import HalpError
from .pipeline.runner import StageFailure

EXIT_USAGE = 2
EXIT_INTERNAL = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="halp-onnx", description="Latency-constrained structural pruning of ONNX models.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("example", help="write a built-in example model")
    ex.add_argument("name", help="resnet or mobilenet")
    ex.add_argument("--out", "-o", required=True, help="output .onnx path")

    shape_help = "static shape for an input with dynamic dims, NAME:1x3x224x224 (repeatable)"
    ins = sub.add_parser("inspect", help="show the channel groups of a model")
    ins.add_argument("model")
    ins.add_argument("--json", action="store_true", help="print one JSON object")
    ins.add_argument("--input-shape", action="append", metavar="NAME:SHAPE", help=shape_help)

    pr = sub.add_parser("prune", help="remove a share of every prunable group, rewrite and verify")
    pr.add_argument("model")
    pr.add_argument("--ratio", type=float, required=True, help="share of each group's channels to remove")
    pr.add_argument("--criterion", default="l2", help="l2 (weight magnitude) or random")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("-o", "--out", required=True, help="output .onnx path")
    pr.add_argument("--report", help="also write a JSON report here")
    pr.add_argument("--input-shape", action="append", metavar="NAME:SHAPE", help=shape_help)

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
    args = _parser().parse_args(argv)
    try:
        builtin = {"example": _example, "inspect": _inspect, "prune": _prune}
        if args.command in builtin:
            return builtin[args.command](args)
        return args.run(args)
    except HalpError as err:
        print(f"halp-onnx: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("halp-onnx: interrupted, nothing written", file=sys.stderr)
        return 130
    except StageFailure as err:  # a bug inside a pipeline stage: one line naming the stage unless --debug
        if args.debug:
            raise err.error
        print(f"halp-onnx: internal error: {err} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as err:  # an internal bug: one line unless --debug
        if args.debug:
            raise
        print(f"halp-onnx: internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _example(args) -> int:
    from .examples import example
    from .passes.rewrite import save_model

    save_model(example(args.name), args.out)
    print(f"wrote {args.out}")
    return 0


def _inspect(args) -> int:
    from .api import inspect
    from .passes.load import parse_input_shapes

    loaded, analysis = inspect(args.model, parse_input_shapes(args.input_shape))
    if args.json:
        print(json.dumps({"model": loaded.to_dict(), **analysis.to_dict()}, indent=1))
        return 0
    print(f"{loaded.source}: opset {loaded.opset}, {analysis.total_params:,} parameters, "
          f"{analysis.total_macs / 1e6:,.1f} MMACs, {len(analysis.groups)} channel groups "
          f"({len(analysis.prunable)} prunable)")
    print(f"{'group':>5} {'size':>6} {'params%':>8} {'MACs%':>7}  producers -> consumers / reason")
    for g in analysis.groups:
        params = 100 * g.params / max(analysis.total_params, 1)
        macs = 100 * g.macs / max(analysis.total_macs, 1)
        prod = _names(g.producers)
        cons = _names(g.consumers)
        tail = f"{prod} -> {cons}" if g.prunable else f"frozen: {g.reasons[0]}"
        print(f"{g.id:>5} {g.size:>6} {params:>7.1f}% {macs:>6.1f}%  {tail}")
    share = analysis.prunable_params / max(analysis.total_params, 1)
    print(f"prunable groups touch {100 * share:.1f}% of the parameters")
    return 0


def _names(names, limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit})" if len(names) > limit else "") if names else "-"


def _prune(args) -> int:
    from .api import prune
    from .passes.load import parse_input_shapes
    from .passes.rewrite import save_model

    check_output(args.model, args.out, "-o")
    check_output(args.model, args.report, "--report")
    res = prune(args.model, args.ratio, criterion=args.criterion, seed=args.seed,
                input_shapes=parse_input_shapes(args.input_shape))
    loaded, analysis, result, check = res.loaded, res.analysis, res.rewrite, res.verification
    times = res.seconds or {}
    save_model(result.model, args.out)
    if args.report:
        report = {"model": loaded.to_dict(), "ratio": args.ratio, "criterion": args.criterion,
                  "rewrite": result.to_dict(), "verification": check.to_dict() if check else None,
                  "seconds": {k: round(v, 3) for k, v in times.items()}}
        write_text_atomic(args.report, json.dumps(report, indent=1))
    _print_table(analysis, result)
    if check is not None:
        print(f"verified: max relative error {check.max_rel_error:.2e} (tolerance {check.tolerance:g}, "
              f"{check.trials} random inputs)")
        if not check.input_sensitive:
            print("warning: the model's outputs did not change with its inputs, so this check is weak "
                  "(untrained weights whose activations vanish?)")
    print("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
    print(f"wrote {args.out}")
    return 0


def _print_table(analysis, result) -> None:
    (p0, p1), (m0, m1) = result.params, result.macs
    print(f"{'':12}{'before':>16}{'after':>16}{'ratio':>8}")
    print(f"{'params':12}{p0:>16,}{p1:>16,}{p1 / max(p0, 1):>8.3f}")
    print(f"{'MACs':12}{m0:>16,}{m1:>16,}{m1 / max(m0, 1):>8.3f}")
    print(f"{'group':>5} {'width':>12}  producers")
    for g in analysis.groups:
        before, after = result.widths[g.id]
        if g.prunable:
            print(f"{g.id:>5} {before:>5} -> {after:<4}  {_names(g.producers)}")
    frozen = [g for g in analysis.groups if not g.prunable]
    if frozen:
        print(f"{len(frozen)} frozen groups kept whole (see 'halp-onnx inspect')")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
