"""Budget adherence of ``compile`` on ort-cpu, solver objectives and compile time.

    python tools/bench_budget.py --zoo /tmp/zoo --profile-dir /tmp/halp-fidelity --out docs/budget

For ResNet-50 and MobileNetV2 (torchvision, 224x224) and the CIFAR ResNet-56 of ../shared (32x32),
batch 1, at latency 0.3 / 0.5 / 0.7: compile with magnitude importance (its closed loop measures the result and
re-solves with a rescaled budget when it misses), then measure the dense and the pruned model again side by side (onnxruntime CPU, 1 thread, median of runs). The target is the share
times the *measured* dense latency; the figure is measured / target. Also: the exact and augmented
knapsack objectives on the final instance, the solve time, and the compile-stage breakdown with a
warm profile. Writes ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", default=os.path.join(tempfile.gettempdir(), "halp-zoo"))
    ap.add_argument("--models", default="resnet50,mobilenet_v2,cifar_resnet56")
    ap.add_argument("--latencies", default="0.3,0.5,0.7")
    ap.add_argument("--profile-dir", help="folder of <model>-ort-cpu.json profiles (from bench_fidelity); "
                                          "default: the user cache")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of runs per measured model")
    ap.add_argument("--out", default="docs/budget")
    args = ap.parse_args()

    from bench_fidelity import measure, model_paths

    from halp_onnx import compile
    from halp_onnx.api import inspect
    from halp_onnx.profiles.backends import OrtCpuBackend

    backend = OrtCpuBackend()
    rows = []
    for name, (path, shapes) in model_paths(Path(args.zoo), args.models.split(",")).items():
        prof = Path(args.profile_dir) / f"{name}-ort-cpu.json" if args.profile_dir else None
        loaded, _ = inspect(path, shapes)
        for share in (float(s) for s in args.latencies.split(",")):
            t0 = time.perf_counter()
            res = compile(path, target="ort-cpu", latency=share, input_shapes=shapes, profile_path=prof)
            wall = time.perf_counter() - t0
            dense = measure(backend, loaded.model, args.budget)
            pruned = measure(backend, res.model, args.budget)
            target = share * dense
            row = {"model": name, "latency": share, "dense_measured_ms": dense,
                   "pruned_measured_ms": pruned, "target_ms": target,
                   "measured_over_target": pruned / target,
                   "predicted_over_budget": res.predicted_ms / res.budget_ms,
                   "dense_predicted_ms": res.dense_predicted_ms, "predicted_ms": res.predicted_ms,
                   "macs_share": res.rewrite.macs[1] / res.rewrite.macs[0],
                   "params_share": res.rewrite.params[1] / res.rewrite.params[0],
                   "exact_value": res.solver.get("exact_value"), "augmented_value": res.solver.get("augmented_value"),
                   "exact_solve_ms": 1e3 * res.solver.get("exact_seconds", float("nan")),
                   "augmented_solve_ms": 1e3 * res.solver.get("augmented_seconds", float("nan")),
                   "rounds": res.solver.get("rounds"), "compile_seconds": wall,
                   "calibration": res.solver.get("calibration", []),
                   "stages": {k: round(v, 3) for k, v in res.seconds.items()},
                   "max_rel_error": res.verification.max_rel_error}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python tools/bench_budget.py " + " ".join(sys.argv[1:])
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    lines = ["# Budget adherence on ort-cpu (1 thread, batch 1, magnitude importance)", "",
             f"Made by `{command}`. Target = share x measured dense latency; measured = end-to-end run of the "
             "compiled model (best of 3 medians), timed side by side with the dense one. Goal: measured / target in [0.93, 1.03].", "",
             "| model | latency | dense ms | pruned ms | measured / target | predicted / budget | solves (closed loop) | "
             "MACs | exact obj | augmented obj | exact solve | compile (warm, incl. measuring) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['latency']} | {r['dense_measured_ms']:.2f} | {r['pruned_measured_ms']:.2f} | "
                     f"**{r['measured_over_target']:.3f}** | {r['predicted_over_budget']:.3f} | "
                     f"{len(r['calibration'])} | {r['macs_share']:.2f} | "
                     f"{r['exact_value']:.2f} | {r['augmented_value']:.2f} | {r['exact_solve_ms']:.1f} ms | "
                     f"{r['compile_seconds']:.1f} s |")
    lines += ["", "Compile stages (s), warm profile:", ""]
    for r in rows:
        lines.append(f"- {r['model']} @ {r['latency']}: " + ", ".join(f"{k} {v}" for k, v in r["stages"].items()))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
