"""Open-loop latency over a range of sizes, on a profile that already exists: random variants (prune
--criterion random at ratios 0.1 / 0.3 / 0.5 / 0.7, two seeds each) and ``compile --latency 0.3 / 0.5 /
0.7`` with the closed loop off, all timed in one process against the dense model (round robin, the
median of per-round ratios, as tools/bench_fidelity.py), predicted vs measured ratio to dense.

Where bench_fidelity.py profiles every model afresh and reports one compile, this reuses a profile and
shows where along the size range the tables over- or under-predict, and how a compile at several
budgets lands on the same tables::

    python tools/open_loop_sweep.py --zoo /tmp/lt/zoo --profiles /tmp/s15/fid --models regnet_x_400mf,mobilenet_v3_small

(``--profiles``: a folder of ``<model>-ort-cpu.json``, as bench_fidelity.py's ``--work`` leaves them).
Run it on an otherwise idle machine: it times models.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATIOS = (0.1, 0.3, 0.5, 0.7)
BUDGETS = (0.3, 0.5, 0.7)


def sweep(name: str, path: Path, profile: Path, rounds: int) -> list[dict]:
    import onnx

    import bench_fidelity as bf
    from halp_onnx import compile, prune
    from halp_onnx.profiles.backends import OrtCpuBackend

    dense = onnx.load(path)
    cands = [(f"random {r} seed {s}", prune(str(path), r, criterion="random", seed=s).model, None)
             for r in RATIOS for s in (0, 1)]
    cands += [(f"compile {b}", compile(str(path), target="ort-cpu", latency=b, measure_result=False,
                                       profile_path=profile).model, b) for b in BUDGETS]
    dense_pred, why = bf.predicted_ms(dense, profile)
    if dense_pred is None:
        raise SystemExit(f"{name}: {why}")
    timed = bf.round_robin(OrtCpuBackend(), dense, [m for _, m, _ in cands], rounds=rounds,
                           turn_s=float(np.clip(30 * dense_pred / 1e3, 0.1, 0.5)))
    rows = []
    for (label, model, budget), t in zip(cands, timed):
        pred, _ = bf.predicted_ms(model, profile)
        row = {"model": name, "variant": label, "predicted_ratio": None if pred is None else pred / dense_pred,
               "measured_ratio": t["ratio"], "target": budget}
        rows.append(row)
        print(f"{name} {label}: predicted {row['predicted_ratio']}, measured {t['ratio']:.3f}"
              + (f" ({t['ratio'] / budget:.3f} of target)" if budget else ""), flush=True)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    out = ["# Open loop over the size range (ort-cpu, 1 thread)", "", f"Made by `{command}`.", "",
           "| model | variant | predicted ratio | measured ratio | measured / predicted | measured / target |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        p, m, t = r["predicted_ratio"], r["measured_ratio"], r["target"]
        out.append(f"| {r['model']} | {r['variant']} | {p:.3f} | {m:.3f} | {m / p:.3f} | "
                   f"{'-' if t is None else f'{m / t:.3f}'} |" if p else f"| {r['model']} | {r['variant']} | - | "
                   f"{m:.3f} | - | - |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, required=True, help="folder of <model>.onnx")
    ap.add_argument("--profiles", type=Path, required=True, help="folder of <model>-ort-cpu.json")
    ap.add_argument("--models", required=True, help="comma-separated model names")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        rows += sweep(name, args.zoo / f"{name}.onnx", args.profiles / f"{name}-ort-cpu.json", args.rounds)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        args.out.with_suffix(".md").write_text(markdown(rows, "python tools/open_loop_sweep.py " + " ".join(sys.argv[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
