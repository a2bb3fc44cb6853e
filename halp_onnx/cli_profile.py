"""``halp-onnx targets | profile | latency``: latency targets, measured tables, predictions."""
from __future__ import annotations

import json
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


def add_parsers(sub) -> None:
    t = sub.add_parser("targets", help="list latency targets, whether they can run here, and cached profiles")
    t.add_argument("--json", action="store_true")
    t.set_defaults(run=run_targets)

    p = sub.add_parser("profile", help="measure a target's latency tables for a model's blocks")
    p.add_argument("model")
    add_model_options(p)
    p.add_argument("--remeasure", action="store_true", help="ignore cached points and measure again")
    p.add_argument("--profile", help="profile JSON to read and extend (default: the user cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_profile)

    lat = sub.add_parser("latency", help="predicted (table sum) and measured latency of a model")
    lat.add_argument("model")
    add_model_options(lat)
    lat.add_argument("--json", action="store_true", help="print one JSON object")
    lat.add_argument("--no-measure", action="store_true", help="predict only (do not profile or time)")
    lat.add_argument("--profile", help="profile JSON to use (default: the user cache, then hw_profiles/)")
    lat.add_argument("--top", type=int, default=15, help="rows of the per-layer breakdown (default 15)")
    lat.set_defaults(run=run_latency)


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
    """``--input-shape`` values, plus ``--batch`` for inputs whose only dynamic dim is the first."""
    from .passes.load import parse_input_shapes, read_model

    if batch < 1:
        raise HalpError(f"--batch {batch}: expected a positive batch size", stage=STAGE)
    shapes = parse_input_shapes(specs)
    m = read_model(model)
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits or vi.name in shapes:
            continue
        dims = vi.type.tensor_type.shape.dim
        static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        rest = [d for d in static[1:] if d is not None]
        if static and static[0] is None and len(rest) == len(static[1:]):
            shapes[vi.name] = (batch, *rest)
        elif static and static[0] is not None and batch != 1 and static[0] != batch:
            raise HalpError(f"--batch {batch}: input {vi.name!r} of {model} has a fixed batch of {static[0]}",
                            stage=STAGE)
    return shapes


def load_for_target(args):
    from .api import inspect

    loaded, analysis = inspect(args.model, input_shapes(args.model, args.input_shape, args.batch))
    return loaded, analysis, resolve_target(args)


# ---------------------------------------------------------------------------------------- targets
def run_targets(args) -> int:
    from .profiles.latency import profile_fingerprint
    from .profiles.store import SHIPPED_DIR, find_profile, profile_name, user_dir
    from .profiles.targets import TARGETS, target_status

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
    if args.json:
        print(json.dumps({"targets": rows, "user_profile_dir": str(user_dir())}, indent=1))
        return 0
    print(f"{'target':<16} {'precision':<9} {'here':<5} {'latency':<21} profile / status")
    for r in rows:
        prof_text = ("profile " + ("matches" if r["profile_matches_this_device"] else "from another device") +
                     f" ({len(r['profiles'])} file)") if r["profiles"] else "no profile"
        print(f"{r['target']:<16} {r['precision']:<9} {'yes' if r['available'] else 'no':<5} {r['latency']:<21} "
              f"{prof_text}; {r['status']}")
    print(f"user profiles: {user_dir()}")
    return 0


# ---------------------------------------------------------------------------------------- profile
def run_profile(args) -> int:
    from .profiles.latency import latency_model

    loaded, analysis, target = load_for_target(args)
    run = latency_model(loaded, analysis, target, threads=args.threads, measure=True,
                        progress=not args.quiet and sys.stderr.isatty(), remeasure=args.remeasure,
                        profile_path=args.profile)
    prof = run.model.profile
    if prof is None:  # measure=True always gives a profile; reading None raised this AttributeError before
        raise AttributeError(f"{target.name}: measuring gave no profile")
    print(f"{target.name}: {run.signatures} block signatures, {run.new_points} new measurements, "
          f"{run.reused_points} reused, {run.seconds:.1f} s; run overhead {prof.overhead_ms * 1e3:.1f} us")
    print(f"{'signature':<72} {'step':>4} {'points':>6}")
    from .profiles.blocks import model_blocks

    keys = sorted({b.signature.key() for b in model_blocks(loaded, analysis, precision=target.precision)})
    for k in keys:
        tab = prof.tables[k]
        print(f"{k[:72]:<72} {tab.step:>4} {len(tab.points):>6}")
    print(f"profile: {run.path}")
    return 0


# ---------------------------------------------------------------------------------------- latency
def run_latency(args) -> int:
    from .profiles.backends import get_backend
    from .profiles.blocks import model_blocks
    from .profiles.latency import latency_model, predict
    from .profiles.targets import target_status

    loaded, analysis, target = load_for_target(args)
    blocks = model_blocks(loaded, analysis, precision=target.precision)
    run = latency_model(loaded, analysis, target, threads=args.threads,
                        measure=False if args.no_measure else None,
                        progress=not args.json and sys.stderr.isatty(), profile_path=args.profile, blocks=blocks)
    pred = predict(blocks, run.model)
    measured = None
    ok, reason = target_status(run.model.target)
    if ok and not args.no_measure:
        measured = get_backend(run.model.target, threads=args.threads).time_model(loaded.model, budget_s=2.0)
    out = {"model": str(args.model), "target": run.model.target.name, "label": pred.label,
           "predicted_ms": round(pred.total_ms, 4), "measured_ms": round(measured.median_ms, 4) if measured else None,
           "error_pct": round(100 * (pred.total_ms / measured.median_ms - 1), 2) if measured else None,
           "measured_runs": measured.runs if measured else None,
           "measured_status": None if measured else (reason if not ok else "not measured (--no-measure)"),
           "profile": run.path, "overhead_ms": round(pred.overhead_ms, 5),
           "blocks": [b.to_dict() for b in pred.blocks]}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    est = " (estimated: analytic model, no measurement)" if pred.label != "measured" else ""
    print(f"{args.model} on {out['target']}{est}")
    print(f"predicted {pred.total_ms:.3f} ms (sum of {len(blocks)} blocks + run overhead {pred.overhead_ms:.3f} ms)")
    if measured:
        print(f"measured  {measured.median_ms:.3f} ms (median of {measured.runs} runs, p10 {measured.p10_ms:.3f}, "
              f"p90 {measured.p90_ms:.3f}); prediction error {out['error_pct']:+.1f}%")
    else:
        print(f"measured  - ({out['measured_status']})")
    rows = sorted(pred.blocks, key=lambda b: -b.ms)[: max(args.top, 0)]
    if rows:
        print(f"{'node':<28} {'op':<11} {'c_in':>6} {'c_out':>6} {'ms':>9} {'share':>6}")
        for b in rows:
            print(f"{b.node[:28]:<28} {b.op:<11} {b.c_in:>6} {b.c_out:>6} {b.ms:>9.4f} "
                  f"{100 * b.ms / max(pred.total_ms, 1e-12):>5.1f}%")
    return 0
