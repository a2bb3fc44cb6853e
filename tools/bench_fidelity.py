"""Prediction fidelity of the ort-cpu latency profiles on models chosen before tuning.

    python tools/bench_fidelity.py --out docs/fidelity

The models were fixed before the in-context tables were tuned: the **tuning** set (CIFAR ResNet-20 and
-56, torchvision ResNet-18; MobileNetV2 and MobileNetV3-Small/-Large since the depthwise and
squeeze-excitation tables were diagnosed on them) is what the method was developed on; the **held-out**
set (CIFAR ResNet-32 and -44 built with ``bench.zoo`` at other depths, torchvision RegNetX-400MF with its
grouped convolutions, SqueezeNet 1.1 exported at opset 9 as an older third-party exporter would;
ShuffleNetV2, EfficientNet-B0, DenseNet-121, ResNeXt-50 and RegNetY-400MF with its squeeze-excitation)
was only ever run here. Every other model is listed as held out. Per model (ort-cpu, 1 thread, batch 1):

* **cold profile** into a fresh profile file (seconds, whole-model runs in context, signatures timed
  alone), and a warm re-run that must measure nothing;
* **random variants**: ``halp-onnx prune --criterion random --ratio R`` for R in 0.2 / 0.4 / 0.6 (seeds
  0); predicted as ``halp-onnx latency --json`` does (the pruned file, the profile, no measuring)
  and measured with onnxruntime: the dense model, the variants and the compiled model (below) run in
  one process, round after round, each candidate between two dense turns (:func:`round_robin`); a
  candidate's ratio to dense is the median over rounds, its measured ms that ratio times the dense
  model's least disturbed turn (the machine is shared: other tenants only add time, and move
  neighbouring turns alike); error ``|pred - meas| / meas``. Whether a variant that runs slower than
  dense (ratio > 1 in at least 90% of the rounds: its p10 above 1) is predicted slower; a variant whose
  rounds straddle dense (median above 1, p10 not) is listed as level with dense, with its prediction;
* **open loop**: ``compile --latency 0.5 --no-measure``, its result timed against dense with
  :func:`~halp_onnx.profiles.timing.paired_timing` (and in the rounds above): the measured ratio over
  the 0.5 target (goal [0.95, 1.02]).

``--transfer-from PROFILE`` (a profile of another CPU or onnxruntime) adds, for ``--transfer-models``,
the recalibration time and fitted error of transferring it here and the variants' error with it.
Writes ``<out>.json``, ``<out>.md`` and ``<out>.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TUNING = ("cifar_resnet20", "cifar_resnet56", "resnet18", "mobilenet_v3_small", "mobilenet_v2", "mobilenet_v3_large")
HELD_OUT = ("cifar_resnet32", "cifar_resnet44", "regnet_x_400mf", "squeezenet1_1_opset9", "shufflenet_v2_x1_0",
            "efficientnet_b0", "densenet121", "resnext50_32x4d", "regnet_y_400mf")
RATIOS = (0.2, 0.4, 0.6)


def model_paths(zoo: Path, names: list[str]) -> dict[str, tuple[str, dict]]:
    """``name -> (path, input shapes)``: CIFAR ResNets of any depth (``cifar_resnet<depth>``), torchvision
    models by name, ``<torchvision name>_opset9`` exported at opset 9, ``tx:<name>`` a
    ``tools/zoo_transformers.py`` model exported with TorchScript (named ``<name>_torchscript``),
    ``det:<name>`` a ``tools/zoo_detect.py`` detection / segmentation export, or an ONNX
    file (a name ending in ``.onnx``; named by its stem)."""
    from bench import zoo as z

    out: dict[str, tuple[str, dict]] = {}
    for name in [n for n in names if n.endswith(".onnx")]:
        if not Path(name).is_file():
            raise SystemExit(f"bench_fidelity: --models {name}: no such file")
        out[Path(name).stem] = (name, {})
    zoos = {"tx:": lambda n: zoo_transformers.export(n, zoo, "torchscript"),  # needs timm / transformers
            "det:": lambda n: zoo_detect.export(n, zoo)}  # tools/zoo_detect.py's packages
    if any(n.startswith(tuple(zoos)) for n in names):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import zoo_detect
        import zoo_transformers
    for name in names:
        prefix = next((p for p in zoos if name.startswith(p)), None)
        if prefix is not None:
            path = zoos[prefix](name[len(prefix):])
            out[path.stem] = (str(path), {})
    names = [n for n in names if not n.endswith(".onnx") and not n.startswith(tuple(zoos))]
    for name in names:
        if name.startswith("cifar_resnet"):
            depth = int(name[len("cifar_resnet"):])
            path = zoo / f"{name}.onnx"
            if not path.exists():
                npz = z.cifar_resnet_weights(depth) if z.shared_dir() else None
                z.export_cifar_resnet(depth, path, npz=npz, dynamic_batch=False)
            out[name] = (str(path), {})
        elif name.endswith("_opset9"):
            path = zoo / f"{name}.onnx"
            if not path.exists():
                import torch
                import torchvision

                torch.manual_seed(0)
                module = torchvision.models.get_model(name[: -len("_opset9")], weights=None).eval()
                z.export_torch_module(module, torch.randn(1, 3, 224, 224), path, "torchscript", opset=9)
            out[name] = (str(path), {})
        else:
            out[name] = (str(z.export_torchvision(name, zoo).path), {})
    return out


def measure(backend, model, budget_s: float, passes: int = 3) -> float:
    from halp_onnx.profiles.backends import best_of_medians

    return best_of_medians(backend, model, budget_s, passes)


def round_robin(backend, reference, candidates: list, *, rounds: int, turn_s: float) -> list[dict]:
    """The dense ``reference`` and every candidate timed in one process, round after round: each round
    runs reference, candidate 1, reference, candidate 2, ... (order reversed every other round). A
    candidate's ratio is the median over rounds of its turn over the mean of the two reference turns
    around it (a busy spell of the shared machine moves neighbouring turns alike, and lands in few rounds
    since the rounds are spread over the whole measurement); ``reference_ms``: the least disturbed
    reference turn."""
    from halp_onnx.profiles.timing import time_callable

    ref_run = backend.prepare(reference)
    runs = [backend.prepare(c) for c in candidates]
    ratios: list[list[float]] = [[] for _ in candidates]
    refs: list[float] = []

    def turn(fn) -> float:
        return time_callable(fn, budget_s=turn_s, min_runs=3).median_ms

    for k in range(rounds):
        order = list(range(len(candidates)))[:: 1 if k % 2 == 0 else -1]
        before = turn(ref_run)
        refs.append(before)
        for j in order:
            cand = turn(runs[j])
            after = turn(ref_run)
            refs.append(after)
            ratios[j].append(cand / (0.5 * (before + after)))
            before = after
    return [{"ratio": float(np.median(r)), "ratio_p10": float(np.percentile(r, 10)),
             "ratio_p90": float(np.percentile(r, 90)), "reference_ms": float(min(refs))} for r in ratios]


def predicted_ms(model, profile: Path) -> tuple[float | None, str]:
    """``halp-onnx latency --json``'s prediction of ``model`` from ``profile`` (never measuring)."""
    from halp_onnx.api import inspect
    from halp_onnx.errors import HalpError
    from halp_onnx.profiles.blocks import model_blocks
    from halp_onnx.profiles.latency import latency_model, predict

    try:
        loaded, analysis = inspect(model)
        blocks = model_blocks(loaded, analysis)
        run = latency_model(loaded, analysis, "ort-cpu", measure=False, profile_path=profile, blocks=blocks)
        return predict(blocks, run.model).total_ms, ""
    except HalpError as exc:
        return None, str(exc)


def bench_model(name: str, path: str, work: Path, *, budget_s: float, rounds: int, transfer_from: Path | None
                ) -> dict:
    import onnx

    from halp_onnx import compile, prune
    from halp_onnx.api import inspect
    from halp_onnx.profiles.backends import OrtCpuBackend
    from halp_onnx.profiles.latency import latency_model
    backend = OrtCpuBackend()
    dense = onnx.load(path)
    loaded, analysis = inspect(path)
    prof_path = work / f"{name}-ort-cpu.json"
    prof_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    cold = latency_model(loaded, analysis, "ort-cpu", measure=True, profile_path=prof_path)
    cold_s = time.perf_counter() - t0
    warm = latency_model(loaded, analysis, "ort-cpu", measure=True, profile_path=prof_path)
    sources = [t.source for t in cold.model.profile.tables.values()]
    rec: dict = {"model": name, "set": "tuning" if name in TUNING else "held-out", "path": path,
                 "cold_profile_s": cold_s, "incontext_runs": cold.incontext_runs,
                 "signatures": cold.signatures, "isolated_signatures": cold.isolated_signatures,
                 "incontext_tables": sources.count("incontext"), "isolated_tables": sources.count("isolated"),
                 "cold_points": cold.new_points, "warm_new_points": warm.new_points}
    dense_pred, why = predicted_ms(dense, prof_path)
    rows: list[dict] = []
    failures: list[str] = []

    variants = [(f"random {ratio}", prune(path, ratio, criterion="random", seed=0).model) for ratio in RATIOS]
    t0 = time.perf_counter()
    comp = compile(path, target="ort-cpu", latency=0.5, measure_result=False, profile_path=prof_path)
    compile_s = time.perf_counter() - t0
    dense_ms_est = max(dense_pred or 1.0, 1e-3)
    timed = round_robin(backend, dense, [m for _, m in variants] + [comp.model], rounds=rounds,
                        turn_s=float(np.clip(30 * dense_ms_est / 1e3, 0.1, 0.5)) * budget_s / 3.0)
    dense_meas = min(t["reference_ms"] for t in timed)
    for (label, model), pt in zip(variants, timed):
        pred, why = predicted_ms(model, prof_path)
        row = {"variant": label, "predicted_ms": pred, "measured_ms": pt["ratio"] * dense_meas,
               "measured_ratio": pt["ratio"], "predicted_ratio": pred / dense_pred if pred is not None and dense_pred
               else None, "ratio_p10": pt["ratio_p10"], "ratio_p90": pt["ratio_p90"]}
        if pred is None:
            failures.append(f"{label}: {why}")
        rows.append(row)
        print(f"{name} {label}: predicted {pred if pred is None else round(pred, 4)} ms, measured "
              f"{row['measured_ms']:.4f} ms, ratio to dense {pt['ratio']:.3f} (predicted {row['predicted_ratio']})",
              flush=True)
    rows.insert(0, {"variant": "dense", "predicted_ms": dense_pred, "measured_ms": dense_meas, "measured_ratio": 1.0,
                    "predicted_ratio": 1.0})
    rec.update({"rows": rows, "failures": failures, "dense_predicted_ms": dense_pred, "dense_measured_ms": dense_meas})
    finalize(rec)
    # open loop: compile --latency 0.5 --no-measure, timed against dense in the same rounds
    from halp_onnx.profiles.timing import paired_timing

    pt = timed[-1]
    paired = paired_timing(backend, dense, comp.model, rounds=rounds, budget_s=budget_s)
    rec["compile"] = {"target": 0.5, "measured_ratio": paired.ratio, "measured_over_target": paired.ratio / 0.5,
                      "ratio_p10": paired.ratio_p10, "ratio_p90": paired.ratio_p90,
                      "round_robin_ratio": pt["ratio"], "round_robin_over_target": pt["ratio"] / 0.5,
                      "predicted_ratio": comp.predicted_ms / comp.dense_predicted_ms, "seconds": compile_s,
                      "steps": sorted({g.step for g in comp.groups if not g.frozen})}
    print(f"{name} compile 0.5: paired ratio {paired.ratio:.3f} ({paired.ratio / 0.5:.3f} of target), round robin "
          f"{pt['ratio']:.3f}", flush=True)
    if transfer_from is not None:
        rec["transfer"] = bench_transfer(name, path, transfer_from, work, variants, rows)
    return rec


def bench_transfer(name: str, path: str, source: Path, work: Path, variants, rows) -> dict:
    """Transfer ``source`` (another CPU / runtime) onto this model here: time, fitted error, and the
    variants' error with the transferred profile (measured figures reused from the paired runs)."""
    from halp_onnx.api import inspect
    from halp_onnx.profiles import store
    from halp_onnx.profiles.latency import latency_model

    udir = work / f"transfer-{name}"
    shutil.rmtree(udir, ignore_errors=True)
    udir.mkdir(parents=True)
    old_env, old_shipped = os.environ.get("HALP_ONNX_PROFILE_DIR"), store.SHIPPED_DIR
    os.environ["HALP_ONNX_PROFILE_DIR"] = str(udir)
    shipped = udir / "shipped"
    shipped.mkdir()
    shutil.copy(source, shipped / "ort-cpu.json")
    store.SHIPPED_DIR = shipped
    try:
        loaded, analysis = inspect(path)
        t0 = time.perf_counter()
        run = latency_model(loaded, analysis, "ort-cpu", measure=True)
        seconds = time.perf_counter() - t0
        t = run.model.profile.transfer
        errs = []
        for (label, model), row in zip(variants, rows[1:]):
            pred, _ = predicted_ms(model, udir / "ort-cpu.json")
            if pred is not None:
                errs.append(abs(pred / row["measured_ms"] - 1))
        dense_pred, _ = predicted_ms(loaded.model, udir / "ort-cpu.json")
        if dense_pred is not None:
            errs.append(abs(dense_pred / rows[0]["measured_ms"] - 1))
    finally:
        store.SHIPPED_DIR = old_shipped
        if old_env is None:
            os.environ.pop("HALP_ONNX_PROFILE_DIR", None)
        else:
            os.environ["HALP_ONNX_PROFILE_DIR"] = old_env
    return {"source": str(source), "seconds": seconds, "label": run.source,
            "recalibration_s": t.get("seconds") if t else None, "scales": t.get("scales") if t else None,
            "fitted_error": t.get("fitted_error") if t else None, "error_before": t.get("error_before") if t else None,
            "new_points_after": run.new_points,
            "median_abs_err": float(np.median(errs)) if errs else None,
            "p90_abs_err": float(np.percentile(errs, 90)) if errs else None}


def finalize(rec: dict) -> dict:
    """Errors and counts of one model's rows (a variant's measured ms: its ratio to dense times the dense
    model's least disturbed turn)."""
    rows = rec["rows"]
    errs = [abs(r["predicted_ms"] / r["measured_ms"] - 1) for r in rows if r["predicted_ms"] is not None]
    above = [r for r in rows[1:] if r["measured_ratio"] > 1.0]
    slower = [r for r in above if r.get("ratio_p10") is None or r["ratio_p10"] > 1.0]
    level = [r for r in above if r not in slower]
    rec.update({"median_abs_err": float(np.median(errs)) if errs else None,
                "p90_abs_err": float(np.percentile(errs, 90)) if errs else None,
                "max_abs_err": float(max(errs)) if errs else None,
                "ratio_errs": [abs(r["predicted_ratio"] / r["measured_ratio"] - 1) for r in rows[1:]
                               if r["predicted_ratio"] is not None],
                "slower_than_dense": len(slower),
                "slower_predicted_slower": sum(1 for r in slower if (r["predicted_ratio"] or 0) > 1.0),
                "level_with_dense": [{"variant": r["variant"], "measured_ratio": r["measured_ratio"],
                                      "ratio_p10": r["ratio_p10"], "ratio_p90": r["ratio_p90"],
                                      "predicted_ratio": r["predicted_ratio"]} for r in level]})
    return rec


def _level(rec: dict) -> str:
    """The variants level with dense (rounds on both sides of it), for the table."""
    lv = rec.get("level_with_dense") or []
    return "".join(f"; {x['variant']} level with dense: {x['measured_ratio']:.3f} (p10-p90 {x['ratio_p10']:.3f}-"
                   f"{x['ratio_p90']:.3f}), predicted {x['predicted_ratio']:.3f}" for x in lv)


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


METHOD = """## How the tables are made

* **In context** (`halp_onnx/profiles/incontext.py`): the user's model runs at about 24 width settings
  (dense; then every prunable group at once at a random multiple of the runtime's channel block, at a
  random misaligned width (a quarter of those below one block where a group can go there: the direct
  path its consumers take), a random mix, and removals at block multiples; kept channels drawn at
  random) with onnxruntime's
  profiler on (`SessionOptions.enable_profiling`), every setting in two passes (the second in reverse
  order, per block the smaller of the two medians kept, so a busy spell of the shared machine that falls
  on one turn does not reach the tables; a setting whose blocks together ran slower than the tables
  fitted from every setting price them is timed a third time). Each `Node` event's `*_kernel_time` is mapped back
  to a block: by node name (a `FusedConv` keeps its anchor's name, an unfused `Add`/`Relu` its own), by
  output tensor (the NCHWc transformer names a convolution `<output of its fused activation>_nchwc`),
  and through the optimised graph (`optimized_model_filepath`) for the layout reorders: a
  `ReorderOutput` goes to the block that reads NCHW after it, a `ReorderInput` to the block that wrote
  its input. Each node also carries what it costs a real run beyond its profiled kernel time (a few
  microseconds, calibrated on unprofiled runs alternated with profiled ones). An op that a removed
  branch leaves reading a constant (a squeeze-excitation `Mul` whose squeeze is gone, which
  onnxruntime folds into the convolution before it) is not observed into its table.
* **Fitted** (`halp_onnx/profiles/fit.py`): per signature and layout class (`nchwc`: both widths padded
  to the block; `direct`: an NCHW input narrower than the block; `nchw`: the im2col + GEMM path), a
  linear model in `1, c_in, c_out, c_in*c_out` of the padded widths (`1, c` where both widths move
  together: depthwise, grouped, memory-bound), least squares on relative error; at a cell of padded
  widths that was measured (the dense widths, the knapsack's steps) the line's miss is kept as a factor,
  shrunk toward the line as n / (n + 1) for the cell's n points (not for a batch-1 GEMM, priced at the
  mean of its two modes). Which widths take which
  path is probed from onnxruntime's optimiser (here: block 16, an input width that is a multiple of 4
  is padded, anything else falls back to NCHW), so a width one below the dense one is priced on the
  slow path. A memory-bound op's classes split where its neighbours change layout, the channel multiple
  (among the probed ones) that fits its points best; a class with no points borrows a neighbour's
  coefficients at whichever widths cost more, never below the measured next step. One-block timing is
  kept only for what no whole-model run shows (what is left of a block whose input branch was
  removed), labelled `isolated`.
* **Choices** (`halp_onnx/passes/latency_cost.py`): a width whose latency (every block the group
  touches, other groups dense) exceeds a wider width's is dropped, so the knapsack never picks a width
  slower than a wider one.
* **Profile schema** `halp-onnx/profile@2`: per point `sources` (`incontext` / `isolated`), per table
  `fit` and `transferred`, per profile `layout` (the probed rule), `incontext_node_ms` and `transfer`
  (source fingerprint, per-class scales, fitted error). `@1` files are still read (all points isolated).
"""


def write_docs(results: list[dict], out: Path, command: str, append: Path | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    lines = ["# Latency prediction fidelity (ort-cpu, 1 thread, batch 1)", "",
             f"Made by `{command}` ({tools_doc()}).", "",
             "| model | set | n | median err | p90 err | max err | slower than dense: predicted slower | "
             "compile 0.5 open loop: measured / target | cold profile | runs in context / signatures alone | "
             "warm re-run |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["compile"]
        n = len([x for x in r["rows"] if x["predicted_ms"] is not None])
        fails = f" ({len(r['failures'])} failed)" if r["failures"] else ""
        lines.append(f"| {r['model']} | {r['set']} | {n}{fails} | {pct(r['median_abs_err'])} | {pct(r['p90_abs_err'])} "
                     f"| {pct(r['max_abs_err'])} | {r['slower_predicted_slower']} of {r['slower_than_dense']}{_level(r)} | "
                     f"**{c['measured_over_target']:.3f}** (ratio {c['measured_ratio']:.3f}; in the rounds "
                     f"{c.get('round_robin_over_target', float('nan')):.3f}; steps "
                     f"{'/'.join(map(str, c['steps']))}) | {r['cold_profile_s']:.0f} s | {r['incontext_runs']} / "
                     f"{r['isolated_signatures']} | {r['warm_new_points']} new |")
    for which in ("tuning", "held-out"):
        errs = [abs(x["predicted_ms"] / x["measured_ms"] - 1) for r in results if r["set"] == which
                for x in r["rows"] if x["predicted_ms"] is not None]
        if errs:
            lines.append(f"| **all {which}** | | {len(errs)} | {pct(float(np.median(errs)))} | "
                         f"{pct(float(np.percentile(errs, 90)))} | {pct(max(errs))} | | | | | |")
    # the variants' ratios to dense, predicted against measured: the tables' shape without the level
    # (the host's speed between the profile and the measurement moves every figure of a model at once)
    shape = {which: [e for r in results if r["set"] == which for e in r.get("ratio_errs", [])]
             for which in ("tuning", "held-out")}
    if any(shape.values()):
        lines += ["", "Ratio to dense, predicted against measured (the variants; the dense model's level taken out): " +
                  "; ".join(f"{which} median {pct(float(np.median(e)))}, p90 {pct(float(np.percentile(e, 90)))} "
                            f"(n {len(e)})" for which, e in shape.items() if e) + "."]
    tr = [r for r in results if r.get("transfer")]
    if tr:
        lines += ["", "Transferred profile (recalibrated here from `" + tr[0]["transfer"]["source"] + "`):", "",
                  "| model | recalibration | scales GEMM-like / memory-bound | fitted error (before) | "
                  "variants median / p90 err |",
                  "|---|---|---|---|---|"]
        for r in tr:
            t = r["transfer"]
            sc = t["scales"] or {}
            lines.append(f"| {r['model']} | {t['recalibration_s']} s (whole call {t['seconds']:.1f} s) | "
                         f"{sc.get('gemm', 1):.3f} / {sc.get('memory', 1):.3f} | {pct(t['fitted_error'])} "
                         f"({pct(t['error_before'])}) | {pct(t['median_abs_err'])} / {pct(t['p90_abs_err'])} |")
    lines += ["", "Per variant (predicted / measured ms, ratio to dense measured paired and predicted):", ""]
    for r in results:
        lines.append(f"- **{r['model']}**: " + "; ".join(
            f"{x['variant']} {x['predicted_ms'] if x['predicted_ms'] is None else round(x['predicted_ms'], 3)}"
            f" / {x['measured_ms']:.3f} ({x['measured_ratio']:.3f} vs "
            f"{'-' if x['predicted_ratio'] is None else round(x['predicted_ratio'], 3)})" for x in r["rows"]))
        for f in r["failures"]:
            lines.append(f"  - failed: {f}")
    lines += ["", f"![scatter]({out.name}.png)", "", METHOD]
    if append is not None:
        lines += ["", append.read_text()]
    out.with_suffix(".md").write_text("\n".join(lines))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, which in zip(axes, ("tuning", "held-out")):
        for r in results:
            if r["set"] != which:
                continue
            sel = [x for x in r["rows"] if x["predicted_ms"] is not None]
            ax.scatter([x["measured_ms"] for x in sel], [x["predicted_ms"] for x in sel], label=r["model"], s=22)
        lim = [1e-2, max([x["measured_ms"] for r in results for x in r["rows"]] + [1.0]) * 1.3]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{which} set")
        ax.set_xlabel("measured ms (paired with dense)")
        ax.set_ylabel("predicted ms")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def tools_doc() -> str:
    return ("tuning set " + ", ".join(TUNING) + "; held-out set " + ", ".join(HELD_OUT) + "; n = dense + 3 random "
            "variants (prune --criterion random --ratio 0.2/0.4/0.6); error = |pred - meas| / meas; a variant's meas = "
            "its ratio to dense (median of per-round ratios, turns alternated with the dense model) x the dense "
            "model's least disturbed turn")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", default=os.path.join(tempfile.gettempdir(), "halp-zoo"))
    ap.add_argument("--models", default=",".join(TUNING + HELD_OUT))
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of paired runs per measured variant")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default="docs/fidelity")
    ap.add_argument("--work", default=None, help="where the fresh profiles go (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="reuse per-model results already in --work")
    ap.add_argument("--transfer-from", default=None, help="a profile of another CPU / onnxruntime to transfer")
    ap.add_argument("--transfer-models", default="resnet18", help="models the transfer is measured on")
    ap.add_argument("--append", default=str(Path(__file__).with_name("fidelity_notes.md")),
                    help="a markdown file appended to <out>.md (timings measured apart; default tools/fidelity_notes.md)")
    args = ap.parse_args()
    zoo = Path(args.zoo)
    zoo.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="halp-fidelity-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name, (path, _) in model_paths(zoo, args.models.split(",")).items():
        saved = work / f"{name}-fidelity.json"
        if args.reuse and saved.is_file():
            results.append(finalize(json.loads(saved.read_text())))
            continue
        tf = Path(args.transfer_from) if args.transfer_from and name in args.transfer_models.split(",") else None
        results.append(bench_model(name, path, work, budget_s=args.budget, rounds=args.rounds, transfer_from=tf))
        saved.write_text(json.dumps(results[-1]))
        r = results[-1]
        print(json.dumps({k: r[k] for k in ("model", "median_abs_err", "p90_abs_err", "cold_profile_s")}), flush=True)
    write_docs(results, Path(args.out), "python tools/bench_fidelity.py " + " ".join(sys.argv[1:]),
               Path(args.append) if args.append else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
