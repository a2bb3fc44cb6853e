#!/usr/bin/env python
"""Export torchvision classification models to ONNX with :func:`bench.zoo.export_torchvision`.

    python tools/export_zoo.py --out DIR [--models a,b,...] [--exporter auto|torchscript|dynamo]
                               [--force] [--size N] [--timeout S] [--json FILE] [--no-isolate]

Exports all torchvision classification models (80 in torchvision 0.29) or the given ones into
``DIR/<name>.onnx`` (random weights, seed 0, batch 1, 3x224x224, 299 for inception_v3), reusing
valid files already there unless ``--force``. Each model is exported in its own subprocess (a crash
or an out-of-memory kill costs one row, not the run) unless ``--no-isolate``. Prints one table row
per model as it finishes (name, exporter, seconds, MB, opset, cached, error/fallback reason) and a
summary; exits 1 when some model could not be exported.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))


def _file_mb(path: Path) -> float:
    size = 0
    for p in (path, Path(str(path) + ".data")):
        if p.exists():
            size += p.stat().st_size
    return size / 1e6


def _export_one(name: str, out: Path, exporter: str, force: bool, size: int | None) -> dict:
    from bench import zoo

    t0 = time.perf_counter()
    try:
        r = zoo.export_torchvision(name, out, size=size, exporter=exporter, force=force)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return {"name": name, "exporter": None, "seconds": time.perf_counter() - t0, "mb": 0.0,
                "opset": None, "cached": False, "external_data": False,
                "error": str(exc).replace("\n", " ")}
    return {"name": name, "exporter": r.exporter, "seconds": r.seconds, "mb": _file_mb(r.path),
            "opset": r.opset, "cached": r.cached, "external_data": r.external_data,
            "error": r.fallback_reason}


def _export_isolated(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--out", str(args.out),
           "--exporter", args.exporter]
    if args.force:
        cmd.append("--force")
    if args.size:
        cmd += ["--size", str(args.size)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "exporter": None, "seconds": time.perf_counter() - t0, "mb": 0.0,
                "opset": None, "cached": False, "external_data": False,
                "error": f"timed out after {args.timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"name": name, "exporter": None, "seconds": time.perf_counter() - t0, "mb": 0.0,
            "opset": None, "cached": False, "external_data": False,
            "error": f"worker exited with status {proc.returncode}: {tail}"}


def _row(r: dict) -> str:
    err = r.get("error") or ""
    mb = f"{r['mb']:.1f}" + ("+ext" if r.get("external_data") else "")
    return (f"{r['name']:<22} {r['exporter'] or 'FAILED':<12} {r['seconds']:>8.1f} {mb:>10} "
            f"{str(r['opset'] or '-'):>5} {'yes' if r.get('cached') else 'no':>6}  {err}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--models", default="", help="comma-separated names (default: all)")
    ap.add_argument("--exporter", default="auto", choices=["auto", "torchscript", "dynamo"])
    ap.add_argument("--force", action="store_true", help="re-export even if a valid file exists")
    ap.add_argument("--size", type=int, default=None, help="input side (default 224/299)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per model")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--no-isolate", action="store_true", help="export in this process")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(_export_one(args.worker, args.out, args.exporter, args.force, args.size)),
              flush=True)
        return 0

    from bench import zoo

    available = zoo.list_classification_models()
    names = [m.strip() for m in args.models.split(",") if m.strip()] or available
    unknown = [m for m in names if m not in available]
    if unknown:
        ap.error(f"unknown models: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"{'model':<22} {'exporter':<12} {'seconds':>8} {'MB':>10} {'opset':>5} {'cached':>6}  "
          "error / fallback reason", flush=True)
    results = []
    t0 = time.perf_counter()
    for name in names:
        r = (_export_one(name, args.out, args.exporter, args.force, args.size) if args.no_isolate
             else _export_isolated(name, args))
        results.append(r)
        print(_row(r), flush=True)
    wall = time.perf_counter() - t0

    by_exp: dict[str, int] = {}
    for r in results:
        by_exp[r["exporter"] or "FAILED"] = by_exp.get(r["exporter"] or "FAILED", 0) + 1
    print(f"\n{len(results)} models in {wall:.0f} s wall: "
          + ", ".join(f"{k} {v}" for k, v in sorted(by_exp.items())), flush=True)
    failed = [r for r in results if not r["exporter"]]
    for r in failed:
        print(f"FAILED {r['name']}: {r['error']}")
    if args.json:
        args.json.write_text(json.dumps({"wall_seconds": wall, "results": results}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
