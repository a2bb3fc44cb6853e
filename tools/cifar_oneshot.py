"""One-shot accuracy at equal latency on CIFAR ResNet-56 (no fine-tuning).

    python tools/cifar_oneshot.py --latency 0.5 --out docs/cifar_oneshot

Real weights and data from ../shared. The model is the pretrained ResNet-56 exported by torch
(BatchNorm folded, as deployed), batch 1 for latency. Rows:

* dense;
* HALP (exact knapsack, ort-cpu profile) with Taylor importance from 2,000 labeled training images;
* HALP with magnitude importance (no data);
* (a) uniform width scaling: one keep share for every group, the largest whose predicted latency fits
  the HALP model's predicted latency;
* (b) global L1 magnitude: lowest-L1 channels removed globally until the MACs equal the HALP model's.

Every row: top-1 on the 10,000 JPEG test images and on the 1,017 exact images, MACs, and the
measured ort-cpu latency (median, all rows timed side by side in one session).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--calib", type=int, default=2000, help="training images for Taylor importance")
    ap.add_argument("--profile", help="ort-cpu profile JSON to use (default: the user cache)")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of runs per latency measurement")
    ap.add_argument("--out", default="docs/cifar_oneshot")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from halp_onnx import compile
    from bench import zoo
    from halp_onnx.api import inspect
    from halp_onnx.passes.solve import first_layer_groups
    from bench.baselines import global_for_target, l1_scores, uniform_for_target
    from halp_onnx.passes.rewrite import kept_channels, rewrite
    from halp_onnx.profiles.backends import OrtCpuBackend, with_batch
    from halp_onnx.profiles.blocks import model_blocks
    from halp_onnx.profiles.latency import latency_model, predict

    if zoo.shared_dir() is None:
        print("../shared is absent: this benchmark needs the CIFAR data and weights", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="halp-cifar-"))
    path = zoo.export_cifar_resnet(56, work / "resnet56.onnx", npz=zoo.cifar_resnet_weights(56))
    shapes = {"input": (1, 3, 32, 32)}
    test_x, test_y = zoo.load_cifar_jpeg("test")
    test_x = zoo.normalize_cifar(test_x)
    ex_x, ex_y = zoo.load_cifar_exact1017()
    ex_x = zoo.normalize_cifar(ex_x)
    train_x, train_y = zoo.load_cifar_jpeg("train")
    pick = np.random.default_rng(args.seed).permutation(len(train_x))[: args.calib]
    calib = {"input": zoo.normalize_cifar(train_x[pick]), "labels": train_y[pick]}

    loaded, analysis = inspect(str(path), shapes)
    blocks = model_blocks(loaded, analysis)
    lm = latency_model(loaded, analysis, "ort-cpu", profile_path=args.profile, blocks=blocks).model
    groups = [g.id for g in analysis.prunable if g.id not in first_layer_groups(analysis, blocks)]

    models = {"dense": loaded.model}
    info = {"dense": {"macs": analysis.total_macs}}
    taylor = compile(str(path), "ort-cpu", args.latency, calib=calib, calib_batch=32, input_shapes=shapes,
                     profile_path=args.profile, measure_result=False)
    models["HALP (Taylor, 2,000 images)"] = taylor.model
    info["HALP (Taylor, 2,000 images)"] = {"macs": taylor.rewrite.macs[1], "predicted_ms": taylor.predicted_ms}
    mag = compile(str(path), "ort-cpu", args.latency, input_shapes=shapes, profile_path=args.profile,
                  measure_result=False)
    models["HALP (magnitude)"] = mag.model
    info["HALP (magnitude)"] = {"macs": mag.rewrite.macs[1], "predicted_ms": mag.predicted_ms}

    l1 = l1_scores(loaded, analysis)

    def latency_of(keep):
        return predict(blocks, lm, analysis, kept_channels(analysis, keep)).total_ms

    share, keep = uniform_for_target(analysis, l1, groups, latency_of, taylor.predicted_ms)
    res = rewrite(loaded, analysis, keep)
    models[f"uniform width x{share:.3f}"] = res.model
    info[f"uniform width x{share:.3f}"] = {"macs": res.macs[1], "predicted_ms": latency_of(keep)}

    def macs_of(keep):
        return rewrite(loaded, analysis, keep, check=False).macs[1]

    removed, keep = global_for_target(analysis, l1, groups, macs_of, taylor.rewrite.macs[1])
    res = rewrite(loaded, analysis, keep)
    models["global L1, equal MACs"] = res.model
    info["global L1, equal MACs"] = {"macs": res.macs[1], "predicted_ms": latency_of(keep), "removed": removed}

    backend = OrtCpuBackend()
    rows = []
    for name, m in models.items():
        row = {"name": name, **info[name]}
        row["top1_jpeg"] = zoo.top1_onnx(m, test_x, test_y)
        row["top1_exact1017"] = zoo.top1_onnx(m, ex_x, ex_y)
        rows.append(row)
    for _ in range(2):  # two interleaved passes; the median of each pass, best of two
        for row, m in zip(rows, models.values()):
            t = backend.time_model(with_batch(m), budget_s=args.budget).median_ms
            row["measured_ms"] = min(row.get("measured_ms", t), t)
    dense_ms = rows[0]["measured_ms"]
    for row in rows:
        row["latency_share"] = row["measured_ms"] / dense_ms
        row["macs_share"] = row["macs"] / rows[0]["macs"]
        print(json.dumps(row), flush=True)
    command = "python tools/cifar_oneshot.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows,
                                                    "importance": taylor.importance.to_dict()}, indent=1))
    lines = [f"# One-shot pruning of CIFAR ResNet-56 to {args.latency:g} x latency (ort-cpu), no fine-tuning", "",
             f"Made by `{command}`. Pretrained weights from ../shared; top-1 on the 10,000 JPEG test images and "
             "on the 1,017 exact images; latency measured side by side in one session (batch 1, 1 thread).", "",
             "| model | top-1 JPEG | top-1 exact 1,017 | measured ms | x dense | MACs x dense |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {100 * r['top1_jpeg']:.2f}% | {100 * r['top1_exact1017']:.2f}% | "
                     f"{r['measured_ms']:.3f} | {r['latency_share']:.3f} | {r['macs_share']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
