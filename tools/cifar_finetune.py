"""Issue-5 acceptance table: pruning + fine-tuning CIFAR ResNet-56 to a latency target, same budget per row.

    python tools/cifar_finetune.py train --rows all --work /tmp/halp-ft --epochs 2 --train-images 20000
    python tools/cifar_finetune.py report --work /tmp/halp-ft --out docs/cifar_finetune

The model is the pretrained ResNet-56 of ../shared built as ONNX with its BatchNormalization nodes
(`bench.zoo.cifar_resnet_bn_onnx`), so fine-tuning trains BN as BN. Every row gets the same
fine-tuning budget (epochs, images, batch, optimizer, schedule, KD from the dense model + CE):

* ``dense``: the dense model fine-tuned (the fair reference: the JPEG data shifts accuracy);
* ``halp-iterative``: HALP while fine-tuning (30 pruning steps spread over the first half of the
  steps, geometric latency schedule), then fine-tuning to the end;
* ``halp-oneshot``: HALP compile (Taylor importance from 2,000 training images), then fine-tuning;
* ``uniform``: one keep share for every group at the one-shot HALP model's predicted latency, then fine-tuning;
* ``l1``: global L1 magnitude to the one-shot HALP model's MACs, then fine-tuning.

``train`` rows may run in separate processes (each uses one thread); ``report`` evaluates every
model (top-1 on the 10,000 JPEG test images and the 1,017 exact images) and times them all side by
side in one session (ort-cpu, batch 1, 1 thread).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = ("dense", "halp-iterative", "halp-oneshot", "uniform", "l1")


def _data(args):
    from bench import zoo

    x, y = zoo.load_cifar_jpeg("train")
    pick = np.random.default_rng(args.seed).permutation(len(x))[: args.train_images]
    return x[pick], y[pick]


def _config(args):
    from halp_onnx.torch.finetune import FinetuneConfig

    return FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="sgd", lr=args.lr,
                          warmup_epochs=0.05, holdout=0.0, eval_every=0, eval_at_start=False, seed=args.seed,
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), device="cpu")


def _save(model, path: Path, meta: dict) -> None:
    from halp_onnx.passes.rewrite import save_model

    save_model(model, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=float))


def _oneshot(args, work: Path):
    """The one-shot HALP model (cached): the reference the baselines are matched to."""
    import onnx

    from halp_onnx import compile
    from bench import zoo

    p = work / "oneshot-pruned.onnx"
    if p.exists():
        return onnx.load(str(p)), json.loads(p.with_suffix(".json").read_text())
    dense = zoo.cifar_resnet_bn_onnx(56)
    x, y = zoo.load_cifar_jpeg("train")
    pick = np.random.default_rng(args.seed + 1).permutation(len(x))[:2000]
    res = compile(dense, "ort-cpu", args.latency, calib={"input": zoo.normalize_cifar(x[pick]), "labels": y[pick]},
                  input_shapes={"input": (1, 3, 32, 32)}, measure_result=False, profile_path=args.profile)
    meta = {"predicted_ms": res.predicted_ms, "dense_predicted_ms": res.dense_predicted_ms,
            "macs": res.rewrite.macs[1], "importance": res.importance.to_dict()}
    _save(res.model, p, meta)
    return res.model, meta


def train(args) -> int:
    import torch

    from bench import zoo
    from halp_onnx.api import inspect
    from halp_onnx.passes.solve import first_layer_groups
    from bench.baselines import global_for_target, l1_scores, uniform_for_target
    from halp_onnx.passes.rewrite import kept_channels, rewrite
    from halp_onnx.profiles.blocks import model_blocks
    from halp_onnx.profiles.latency import latency_model, predict
    from halp_onnx.torch.finetune import finetune
    from halp_onnx.torch.halp import compile_iterative

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dense = zoo.cifar_resnet_bn_onnx(56)
    rows = ROWS if args.rows == "all" else tuple(args.rows.split(","))
    x, y = _data(args)
    cfg = _config(args)
    with open(work / "train_commands.txt", "a") as fh:
        fh.write("python tools/cifar_finetune.py " + " ".join(sys.argv[1:]) + "\n")
    steps_total = int(np.ceil(args.epochs * (len(x) // args.batch_size)))
    for row in rows:
        t0 = time.perf_counter()
        meta: dict = {"row": row, "epochs": args.epochs, "train_images": len(x), "batch_size": args.batch_size,
                      "lr": args.lr, "steps": steps_total}
        if row == "dense":
            ft = finetune(dense, dense, (x, y), cfg, progress=False)
            model = ft.model
        elif row == "halp-iterative":
            interval = max(1, int(steps_total * args.prune_share) // args.prune_steps)
            res, ft = compile_iterative(dense, (x, y), target="ort-cpu", latency=args.latency, config=cfg,
                                        steps=args.prune_steps, interval=interval, progress=False,
                                        input_shapes={"input": (1, 3, 32, 32)}, profile_path=args.profile)
            model = res.model
            meta.update({"interval": interval, "pruning_steps": args.prune_steps, **res.to_dict()})
        else:
            pruned, ref = _oneshot(args, work)
            if row == "halp-oneshot":
                start = pruned
            else:
                loaded, an = inspect(dense, {"input": (1, 3, 32, 32)})
                blocks = model_blocks(loaded, an)
                lm = latency_model(loaded, an, "ort-cpu", blocks=blocks, profile_path=args.profile).model
                groups = [g.id for g in an.prunable if g.id not in first_layer_groups(an, blocks)]
                l1 = l1_scores(loaded, an)
                if row == "uniform":
                    share, keep = uniform_for_target(
                        an, l1, groups, lambda k: predict(blocks, lm, an, kept_channels(an, k)).total_ms,
                        ref["predicted_ms"])
                    meta["share"] = share
                else:
                    removed, keep = global_for_target(
                        an, l1, groups, lambda k: rewrite(loaded, an, k, check=False).macs[1], ref["macs"])
                    meta["removed_channels"] = removed
                start = rewrite(loaded, an, keep).model
            _save(start, work / f"{row}-pruned.onnx", meta)
            ft = finetune(start, dense, (x, y), cfg, progress=False)
            model = ft.model
        meta["train_seconds"] = time.perf_counter() - t0
        meta["finetune_history"] = ft.history
        _save(model, work / f"{row}.onnx", meta)
        print(f"{row}: {meta['train_seconds']:.0f} s", flush=True)
    return 0


def report(args) -> int:
    import onnx

    from bench import zoo
    from halp_onnx.profiles.backends import OrtCpuBackend, with_batch

    work = Path(args.work)
    tx, ty = zoo.load_cifar_jpeg("test")
    tx = zoo.normalize_cifar(tx)
    ex, ey = zoo.load_cifar_exact1017()
    ex = zoo.normalize_cifar(ex)
    entries = [("dense (not fine-tuned)", zoo.cifar_resnet_bn_onnx(56), {})]
    for row in ROWS:
        p = work / f"{row}.onnx"
        if p.exists():
            entries.append((row, onnx.load(str(p)), json.loads(p.with_suffix(".json").read_text())))
        pre = work / f"{row}-pruned.onnx"
        if pre.exists():
            entries.append((f"{row} before fine-tuning", onnx.load(str(pre)), {}))
    backend = OrtCpuBackend()
    rows = []
    for name, model, meta in entries:
        rows.append({"name": name, "top1_jpeg": zoo.top1_onnx(model, tx, ty),
                     "top1_exact1017": zoo.top1_onnx(model, ex, ey), "meta": {k: v for k, v in meta.items()
                                                                              if k not in ("history", "finetune_history")}})
    one = [with_batch(m) for _, m, _ in entries]
    for _ in range(2):
        for r, m in zip(rows, one):
            t = backend.time_model(m, budget_s=args.budget).median_ms
            r["measured_ms"] = min(r.get("measured_ms", t), t)
    base = rows[0]["measured_ms"]
    for r in rows:
        r["latency_share"] = r["measured_ms"] / base
        print(json.dumps({k: v for k, v in r.items() if k != "meta"}), flush=True)
    command = "python tools/cifar_finetune.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1, default=float))
    meta = next((m for _, _, m in entries if m.get("epochs")), {})
    lines = [f"# CIFAR ResNet-56: pruning to {args.latency:g} x ort-cpu latency + fine-tuning", "",
             f"Made by `{command}` after the `train` step(s): " + "; ".join(
                 f"`{c}`" for c in _train_commands(work)) + ". Same fine-tuning budget for every row: "
             f"{meta.get('epochs')} epoch(s) over {meta.get('train_images')} JPEG training images, batch "
             f"{meta.get('batch_size')}, SGD lr {meta.get('lr')} cosine, KD from the dense model + CE, on CPU. "
             "Top-1 on the 10,000 JPEG test images and the 1,017 exact images; latency measured side by side "
             "(ort-cpu, batch 1, 1 thread, median, best of two passes).", "",
             "| model | top-1 JPEG | top-1 exact 1,017 | measured ms | x dense |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {100 * r['top1_jpeg']:.2f}% | {100 * r['top1_exact1017']:.2f}% | "
                     f"{r['measured_ms']:.3f} | {r['latency_share']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


def _train_commands(work: Path) -> list[str]:
    f = work / "train_commands.txt"
    return [c for c in f.read_text().splitlines() if c] if f.exists() else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("train", "report"))
    ap.add_argument("--rows", default="all", help=f"comma list of {', '.join(ROWS)} or all")
    ap.add_argument("--work", required=True)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--train-images", type=int, default=50000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--prune-steps", type=int, default=30)
    ap.add_argument("--prune-share", type=float, default=0.5, help="share of the steps spent pruning (iterative)")
    ap.add_argument("--profile", help="ort-cpu profile JSON (default: the user cache)")
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/cifar_finetune")
    args = ap.parse_args()
    return train(args) if args.mode == "train" else report(args)


if __name__ == "__main__":
    sys.exit(main())
