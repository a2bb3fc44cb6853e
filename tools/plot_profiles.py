"""Staircase plots of a latency profile and the analytic model's error against it.

    python tools/plot_profiles.py hw_profiles/ort-cpu.json --out docs/

Writes ``docs/staircase_ort-cpu.png``: latency vs c_out at the largest c_in for the six 2-D tables
with the most latency (the curve is the table's lookup at every width; dots are measured points), and
``docs/analytic_error.md``: for every measured point of the profile, the analytic roofline's estimate
(its GPU specs replaced by one CPU core's, see below) against the measurement.

The analytic model is a GPU model; to check its *shape* against a CPU it is run with a spec for
one core of this CPU (peak fp32 = 2 FMA units x 8 lanes x 2 flops x clock, bandwidth measured by
the user or a default), then fitted by one scale factor (least squares in log space). Reported:
the median and 90th-percentile absolute error after that fit, and the Spearman rank correlation
(scale-free), per op kind.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def staircases(prof, out: Path, n: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [(k, t) for k, t in prof.tables.items() if t.vary_out and not t.diagonal and t.c_out_max >= 32]
    tables.sort(key=lambda kt: -kt[1].lookup(kt[1].c_in_max, kt[1].c_out_max))
    tables = tables[:n]
    fig, axes = plt.subplots(2, (len(tables) + 1) // 2, figsize=(5 * ((len(tables) + 1) // 2), 7.5))
    for ax, (key, t) in zip(np.atleast_1d(axes).ravel(), tables):
        ci = t.c_in_max
        lo = max(1, t.c_out_max - 96)
        cs = np.arange(lo, t.c_out_max + 1)
        ax.plot(cs, [t.lookup(ci, int(c)) for c in cs], lw=1, label="table lookup")
        pts = sorted((int(k.split(",")[1]), v) for k, v in t.points.items()
                     if int(k.split(",")[0]) == ci and int(k.split(",")[1]) >= lo)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, color="#c0392b", zorder=3, label="measured")
        op = key.split(";")
        ax.set_title(f"{op[0]} {op[1][2:]} s{op[2][2:]} in {op[6][3:]}  (c_in={ci}, step {t.step})", fontsize=9)
        ax.set_xlabel("c_out")
        ax.set_ylabel("ms")
    np.atleast_1d(axes).ravel()[0].legend(fontsize=8)
    fig.suptitle(f"{prof.name}: latency vs output channels ({prof.fingerprint.get('cpu') or prof.target})")
    fig.tight_layout()
    path = out / f"staircase_{prof.name}.png"
    fig.savefig(path, dpi=100)
    return path


def analytic_error(prof, out: Path, clock_ghz: float, bandwidth_gbs: float) -> Path:
    from halp_onnx.profiles.analytic import estimate_ms, get_gpu_spec
    from halp_onnx.profiles.signature import BlockSignature

    base = get_gpu_spec("t4")
    # one CPU core as the "device": one SM, AVX2 (2 FMA x 8 fp32 lanes) at the clock, no tensor-core multiple
    peak = 2 * 8 * 2 * clock_ghz * 1e9 / 1e12
    spec = replace(base, name="cpu-core", sm_count=1, peak_tflops_fp32=peak, peak_tflops_fp16=peak,
                   peak_tops_int8=peak, peak_tflops_tf32=0.0, tc_multiple_fp32=8, mem_bw_gbs=bandwidth_gbs,
                   launch_overhead_us=0.5)
    by_op: dict[str, list[tuple[float, float]]] = {}
    for key, t in prof.tables.items():
        sig = BlockSignature.from_key(key)
        sig = replace(sig, dtype="fp32")
        for k, v in t.points.items():
            ci, co = (int(x) for x in k.split(","))
            kind = "depthwise conv" if sig.is_depthwise else sig.op
            try:
                by_op.setdefault(kind, []).append((estimate_ms(sig, ci, co, spec), v))
            except Exception:
                continue
    allp = np.array([p for v in by_op.values() for p in v])
    scale = float(np.exp(np.median(np.log(allp[:, 1] / allp[:, 0]))))
    lines = ["# Analytic latency model vs the measured ort-cpu profile", "",
             f"Made by `python tools/plot_profiles.py {' '.join(sys.argv[1:])}`. The roofline of "
             "`halp_onnx.profiles.analytic` with one CPU core as the device "
             f"({peak * 1e3:.0f} GFLOP/s fp32 peak from {clock_ghz} GHz x AVX2, {bandwidth_gbs} GB/s), "
             f"scaled by one fitted factor ({scale:.2f}); every measured point of the profile "
             f"({len(allp)} points, {prof.fingerprint.get('cpu')}).", "",
             "| op | points | median abs err | p90 abs err | Spearman |", "|---|---|---|---|---|"]
    for op, pts in sorted(by_op.items()) + [("all", [tuple(p) for p in allp])]:
        a = np.array(pts)
        est, meas = a[:, 0] * scale, a[:, 1]
        err = np.abs(est / meas - 1)
        lines.append(f"| {op} | {len(a)} | {100 * np.median(err):.0f}% | {100 * np.percentile(err, 90):.0f}% | "
                     f"{spearman(est, meas):.3f} |")
    lines += ["", "The analytic model is meant for GPUs that are not here (every figure it gives is labelled "
                  "*estimated*); this table is its only check against measurements, on a CPU core. No GPU was "
                  "available to check it against a torch-cuda or TensorRT profile."]
    path = out / "analytic_error.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--clock-ghz", type=float, default=2.45)
    ap.add_argument("--bandwidth-gbs", type=float, default=12.0)
    args = ap.parse_args()
    from halp_onnx.profiles.store import read_profile

    prof = read_profile(args.profile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(staircases(prof, out))
    print(analytic_error(prof, out, args.clock_ghz, args.bandwidth_gbs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
