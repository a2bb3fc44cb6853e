"""Prediction fidelity of the ort-cpu latency tables: predicted vs measured latency of randomly pruned models.

    python tools/bench_fidelity.py --zoo /tmp/zoo --variants 20 --out docs/fidelity

For each model (torchvision ResNet-50 and MobileNetV2 at 224x224, the CIFAR ResNet-56 of ../shared at
32x32; batch 1): profile it cold into a fresh profile (time and measurements are reported), check a
warm re-run measures nothing, then make random variants with the core's rewrite and compare the
table prediction with the measured end-to-end latency (onnxruntime CPU, 1 thread, median of runs).

Two variant sets per model: ``aligned`` widths (random multiples of each group's neuron-group size,
what ``compile`` produces) and ``any`` widths (random integers). Per variant a global keep share
f ~ U(0.25, 1) is drawn and each group keeps clip(f + N(0, 0.15)) of its channels. Writes
``<out>.json``, ``<out>.md`` and ``<out>.png`` (scatter, predicted vs measured).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def model_paths(zoo: Path, names: list[str]) -> dict[str, tuple[str, dict]]:
    from bench import zoo as z

    out = {}
    for name in names:
        if name == "cifar_resnet56":
            path = zoo / "cifar_resnet56.onnx"
            if not path.exists():
                npz = z.cifar_resnet_weights(56) if z.shared_dir() else None
                z.export_cifar_resnet(56, path, npz=npz)
            out[name] = (str(path), {"input": (1, 3, 32, 32)})
        else:
            r = z.export_torchvision(name, zoo)
            out[name] = (str(r.path), {})
    return out


def measure(backend, model, budget_s: float, passes: int = 3) -> float:
    from halp_onnx.profiles.backends import best_of_medians

    return best_of_medians(backend, model, budget_s, passes)


def random_keep(analysis, cm, rng, aligned: bool):

    f = rng.uniform(0.25, 1.0)
    keep = {}
    for g, ch in cm.choices.items():
        share = float(np.clip(f + rng.normal(0, 0.15), 0.05, 1.0))
        if aligned:
            widths = [w for w in ch.widths if w > 0]
            w = min(widths, key=lambda x: abs(x - share * ch.size))
        else:
            w = max(1, int(round(share * ch.size)))
        if w < ch.size:
            order = rng.permutation(ch.size)
            keep[g] = np.sort(order[:w])
    return keep


def bench_model(name, path, shapes, variants, rng, budget_s, work: Path, refresh: bool = False) -> dict:
    from halp_onnx.api import inspect
    from halp_onnx.passes.latency_cost import build_cost_model
    from halp_onnx.passes.rewrite import rewrite
    from halp_onnx.profiles.backends import OrtCpuBackend
    from halp_onnx.profiles.blocks import model_blocks
    from halp_onnx.profiles.latency import latency_model, predict

    loaded, analysis = inspect(path, shapes)
    blocks = model_blocks(loaded, analysis)
    prof_path = work / f"{name}-ort-cpu.json"
    prior_path = work / f"{name}-fidelity.json"
    if refresh and prior_path.is_file() and prof_path.is_file():
        # keep the cold profile (and its recorded cost); measure the per-run constants again
        from halp_onnx.profiles.store import read_profile, write_profile

        prior = json.loads(prior_path.read_text())
        prof = read_profile(prof_path)
        be = OrtCpuBackend()
        prof.overhead_ms, prof.node_overhead_ms = be.run_overhead_ms(), be.node_overhead_ms()
        write_profile(prof, prof_path)
        cold_s = prior["cold_profile_s"]
        cold = latency_model(loaded, analysis, "ort-cpu", measure=True, profile_path=prof_path, blocks=blocks)
        cold = type(cold)(cold.model, cold.path, cold.signatures, prior["cold_points"], 0, cold_s)
    else:
        t0 = time.perf_counter()
        cold = latency_model(loaded, analysis, "ort-cpu", measure=True, profile_path=prof_path, blocks=blocks,
                             progress=sys.stderr.isatty())
        cold_s = time.perf_counter() - t0
    warm = latency_model(loaded, analysis, "ort-cpu", measure=True, profile_path=prof_path, blocks=blocks)
    lm = cold.model
    cm = build_cost_model(analysis, blocks, lm.step, min_keep=0.0, allow_removal=False)
    backend = OrtCpuBackend()
    rows = []
    dense_pred = predict(blocks, lm).total_ms
    dense_meas = measure(backend, loaded.model, budget_s)
    rows.append({"set": "dense", "predicted_ms": dense_pred, "measured_ms": dense_meas})
    for aligned in (True, False):
        for i in range(variants):
            keep = random_keep(analysis, cm, rng, aligned)
            res = rewrite(loaded, analysis, keep)
            pred = predict(blocks, lm, analysis, res.kept).total_ms
            meas = measure(backend, res.model, budget_s)
            rows.append({"set": "aligned" if aligned else "any", "predicted_ms": pred, "measured_ms": meas,
                         "macs_share": res.macs[1] / res.macs[0]})
            print(f"{name} {'aligned' if aligned else 'any'} {i:2d}: predicted {pred:8.3f} ms measured {meas:8.3f} ms "
                  f"({100 * (pred / meas - 1):+5.1f}%)", flush=True)
    summary = {}
    for which in ("aligned", "any"):
        sel = [r for r in rows if r["set"] in (which, "dense")]
        p = np.array([r["predicted_ms"] for r in sel])
        m = np.array([r["measured_ms"] for r in sel])
        err = np.abs(p / m - 1)
        summary[which] = {"n": len(sel), "median_abs_err": float(np.median(err)),
                          "p90_abs_err": float(np.percentile(err, 90)), "max_abs_err": float(err.max()),
                          "spearman": spearman(p, m)}
    return {"model": name, "path": path, "cold_profile_s": cold_s, "cold_points": cold.new_points,
            "signatures": cold.signatures, "warm_new_points": warm.new_points, "dense_predicted_ms": dense_pred,
            "dense_measured_ms": dense_meas, "summary": summary, "rows": rows,
            "overhead_ms": lm.profile.overhead_ms, "node_overhead_ms": lm.profile.node_overhead_ms}


def write_docs(results: list[dict], out: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    lines = ["# Latency prediction fidelity (ort-cpu, 1 thread, batch 1)", "",
             f"Made by `{command}`. Predicted = sum of the profile's block latencies (+ run overhead); measured = "
             "end-to-end onnxruntime run of the rewritten model (best of 3 medians of runs), same machine, same session. `aligned`: "
             "widths are multiples of each group's neuron-group size (what `compile` produces); `any`: random "
             "integer widths. Each set includes the dense model.", "",
             "| model | set | n | median abs err | p90 abs err | max abs err | Spearman | cold profile | measurements | warm re-run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for which, s in r["summary"].items():
            lines.append(f"| {r['model']} | {which} | {s['n']} | {100 * s['median_abs_err']:.1f}% | "
                         f"{100 * s['p90_abs_err']:.1f}% | {100 * s['max_abs_err']:.1f}% | {s['spearman']:.3f} | "
                         f"{r['cold_profile_s']:.0f} s | {r['cold_points']} | {r['warm_new_points']} new |")
    lines += ["", "Dense models: " + ", ".join(
        f"{r['model']} predicted {r['dense_predicted_ms']:.2f} ms / measured {r['dense_measured_ms']:.2f} ms"
        for r in results), "", f"![scatter]({out.name}.png)", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.5))
    axes = np.atleast_1d(axes)
    for ax, r in zip(axes, results):
        for which, marker in (("aligned", "o"), ("any", "x"), ("dense", "*")):
            sel = [x for x in r["rows"] if x["set"] == which]
            ax.scatter([x["measured_ms"] for x in sel], [x["predicted_ms"] for x in sel], marker=marker,
                       label=which, s=60 if which == "dense" else 25)
        lim = [0, max(max(x["measured_ms"], x["predicted_ms"]) for x in r["rows"]) * 1.05]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_title(r["model"])
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", default=os.path.join(tempfile.gettempdir(), "halp-zoo"))
    ap.add_argument("--models", default="resnet50,mobilenet_v2,cifar_resnet56")
    ap.add_argument("--variants", type=int, default=20)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of runs per measured model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/fidelity")
    ap.add_argument("--work", default=None, help="where the fresh profiles go (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="reuse per-model results already in --work")
    ap.add_argument("--refresh", action="store_true",
                    help="keep the cold profiles in --work (and their recorded cost), re-measure the run "
                         "constants and the variants")
    args = ap.parse_args()
    zoo = Path(args.zoo)
    zoo.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="halp-fidelity-"))
    rng = np.random.default_rng(args.seed)
    results = []
    for name, (path, shapes) in model_paths(zoo, args.models.split(",")).items():
        saved = work / f"{name}-fidelity.json"
        if args.reuse and saved.is_file():
            results.append(json.loads(saved.read_text()))
            continue
        results.append(bench_model(name, path, shapes, args.variants, rng, args.budget, work, args.refresh))
        saved.write_text(json.dumps(results[-1]))
        s = results[-1]["summary"]
        print(json.dumps({name: s, "cold_s": results[-1]["cold_profile_s"]}), flush=True)
    write_docs(results, Path(args.out), "python tools/bench_fidelity.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
