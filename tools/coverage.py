"""Coverage of the compiler core over the torchvision classification zoo -> docs/coverage.md.

Every model of ``torchvision.models.list_models(module=torchvision.models)`` with random weights is
exported to ONNX (1x3x224x224, 299 for inception_v3), then inspected, pruned at ratio 0.3 (L2
criterion) and verified against the masked original in onnxruntime. Each model runs in its own
subprocess with a time limit.

    python tools/coverage.py --zoo /tmp/zoo                     # all 80, writes docs/coverage.{md,json}
    python tools/coverage.py --zoo /tmp/zoo --models resnet18,vit_b_16 --out /tmp/cov
    python tools/coverage.py --zoo2 /tmp/zoo2                   # detection / segmentation (tools/zoo_detect.py)

``--zoo2 DIR`` runs the second zoo (``tools/zoo_detect.py``: torchvision detection / segmentation,
ultralytics YOLO, segmentation_models_pytorch, exported into DIR from configs): per model the channel
groups, the share of parameters and MACs that prunable groups shrink, ``prune --ratio 0.3`` verified,
and ``compile --target trt-v100 --latency 0.5 --no-measure`` feasible and verified; the rows go to
``coverage_zoo2.json`` and a second table in ``coverage.md``.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the repo root: halp_onnx from a checkout, and bench (never installed)
    sys.path.insert(0, str(ROOT))


def export_redrawn(name: str, path: Path) -> str:
    """Export with degenerate initial weights redrawn; returns the exporter used."""
    if path.exists():
        return "torchscript (cached)"
    import torch
    import torchvision

    from bench.zoo import export_torch_module, redraw_degenerate_weights, torchvision_input_size

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    redraw_degenerate_weights(model)
    side = torchvision_input_size(name)
    x = torch.randn(1, 3, side, side)
    try:
        export_torch_module(model, x, path, "torchscript")
        return "torchscript"
    except Exception:
        export_torch_module(model, x, path, "dynamo")
        return "dynamo"


def run_one(name: str, zoo: Path, ratio: float, redraw: bool = False) -> dict:
    """Export, inspect, prune and verify one model; returns a JSON-able record (in a subprocess)."""
    import numpy as np

    from halp_onnx.api import inspect, require_prunable
    from halp_onnx.passes.rewrite import rewrite
    from halp_onnx.passes.select import channel_scores, keep_by_ratio
    from halp_onnx.passes.verify import verify
    from bench.zoo import export_torchvision

    record: dict = {"model": name}
    exported = export_torchvision(name, zoo)
    record["exporter"] = exported.exporter
    record["export_s"] = round(exported.seconds, 1)
    record["weights"] = "torchvision init"
    path = exported.path
    if redraw:
        path = zoo / f"{name}_redrawn.onnx"
        t0 = time.perf_counter()
        record["exporter"] = export_redrawn(name, path)
        record["export_s"] = round(time.perf_counter() - t0, 1)
        record["weights"] = "degenerate weights redrawn"
    t0 = time.perf_counter()
    loaded, analysis = inspect(path)
    record["analyze_s"] = round(time.perf_counter() - t0, 2)
    record["groups"] = len(analysis.groups)
    record["prunable_groups"] = len(analysis.prunable)
    record["params"] = analysis.total_params
    record["prunable_param_share"] = round(analysis.prunable_params / max(analysis.total_params, 1), 4)
    reasons = collections.Counter()
    for g in analysis.groups:
        if not g.prunable:
            reasons[_reason_kind(g.reasons[0])] += 1
    record["frozen"] = dict(reasons)
    record["frozen_examples"] = sorted({g.reasons[0] for g in analysis.groups if not g.prunable})[:6]
    require_prunable(analysis, str(path))
    t0 = time.perf_counter()
    keep = keep_by_ratio(analysis, channel_scores(loaded, analysis, "l2"), ratio)
    result = rewrite(loaded, analysis, keep)
    record["rewrite_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    check = verify(loaded, analysis, result.kept, result.model, trials=2, strict=False)
    record["verify_s"] = round(time.perf_counter() - t0, 2)
    record["params_after"] = result.params[1]
    record["macs"] = list(result.macs)
    record["max_rel_error"] = float(np.format_float_scientific(check.max_rel_error, precision=2))
    record["verified"] = check.passed
    record["input_sensitive"] = check.input_sensitive
    record["status"] = ("verified" if check.input_sensitive else "constant output") if check.passed else "mismatch"
    return record


def run_zoo2_one(name: str, zoo: Path, ratio: float, latency: float = 0.5) -> dict:
    """Export (cached), inspect, prune and verify, compile for trt-v100 (analytic, no measurement)."""
    import numpy as np

    import halp_onnx
    from halp_onnx.api import inspect
    from halp_onnx.errors import HalpError
    from halp_onnx.passes.rewrite import rewrite
    from halp_onnx.passes.select import channel_scores, keep_by_ratio
    from halp_onnx.passes.verify import compare, verify

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zoo_detect import MODELS, export

    record: dict = {"model": name, "family": MODELS[name][0]}
    t0 = time.perf_counter()
    path = export(name, zoo)
    record["export_s"] = round(time.perf_counter() - t0, 1)
    loaded, analysis = inspect(path)
    record["groups"] = len(analysis.groups)
    record["prunable_groups"] = len(analysis.prunable)
    record["params"] = analysis.total_params
    record["prunable_param_share"] = round(analysis.prunable_params / max(analysis.total_params, 1), 4)
    shrinking = {n for g in analysis.prunable for n in g.producers + g.consumers}
    record["macs"] = analysis.total_macs
    record["prunable_mac_share"] = round(sum(analysis.node_macs.get(n, 0) for n in shrinking)
                                         / max(analysis.total_macs, 1), 4)
    record["removable_groups"] = sum(g.removable for g in analysis.groups)
    reasons = collections.Counter(_reason_kind(g.reasons[0]) for g in analysis.groups if not g.prunable)
    record["frozen"] = dict(reasons)
    record["frozen_examples"] = sorted({g.reasons[0] for g in analysis.groups if not g.prunable})[:6]
    try:
        keep = keep_by_ratio(analysis, channel_scores(loaded, analysis, "l2"), ratio)
        result = rewrite(loaded, analysis, keep)
        check = verify(loaded, analysis, result.kept, result.model, trials=2, strict=False)
        record["prune_params_after"] = round(result.params[1] / max(result.params[0], 1), 3)
        record["prune_max_rel_error"] = float(np.format_float_scientific(check.max_rel_error, precision=2))
        # how far the pruned model is from the dense one: the check has teeth if this exceeds the tolerance
        record["prune_vs_dense"] = float(np.format_float_scientific(
            compare(loaded.model, result.model, trials=1).max_rel_error, precision=2))
        record["prune"] = ("verified" if check.input_sensitive else "constant output") if check.passed else "mismatch"
    except HalpError as err:
        record["prune"] = f"failed: {err.message[:200]}"
    try:
        res = halp_onnx.compile(path, target="trt-v100", latency=latency, measure=False)
        ok = res.verification is not None and res.verification.passed
        record["compile"] = "verified" if ok else "mismatch"
        record["compile_predicted"] = round(res.predicted_ms / max(res.dense_predicted_ms, 1e-12), 3)
        record["compile_params_after"] = round(res.rewrite.params[1] / max(res.rewrite.params[0], 1), 3)
        record["compile_removed_groups"] = sum(1 for b, a in res.rewrite.widths.values() if a == 0 < b)
    except HalpError as err:
        text = err.message
        smallest = re.search(r"smallest achievable [\d.]+ ms \(([\d.]+) x\)", text)
        if smallest:
            record["compile"] = f"infeasible (smallest achievable {smallest.group(1)}x)"
        elif err.stage == "guard":
            record["compile"] = "refused by the guard"
        else:
            record["compile"] = f"failed ({err.stage}): {text[:160]}"
        record["compile_error"] = text[:300]
    return record


def _reason_kind(reason: str) -> str:
    """A short class of a frozen-group reason, for the summary table."""
    for needle, kind in [("graph output", "graph output"), ("does not know", "unknown op"),
                         ("mixes values", "channel-mixing op"), ("reduces over the channel", "channel reduction"),
                         ("reshape", "reshape"), ("spreads", "reshape"), ("multiplies", "matmul of activations"),
                         ("broadcasts", "broadcast"), ("grouped convolution", "grouped conv input"),
                         ("shared", "shared constant"), ("padding", "constant padding"),
                         ("concatenates", "concat"), ("runtime", "computed at runtime")]:
        if needle in reason:
            return kind
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="/tmp/halp-zoo", help="folder for the exported ONNX files (cache)")
    ap.add_argument("--models", help="comma-separated subset (default: all 80)")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per model")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder for coverage.md / coverage.json")
    ap.add_argument("--zoo2", help="run the detection / segmentation zoo (tools/zoo_detect.py), exported here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--one2", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.zoo2:
        return _main_zoo2(args)
    zoo = Path(args.zoo)
    zoo.mkdir(parents=True, exist_ok=True)
    if args.one:
        try:
            record = run_one(args.one, zoo, args.ratio)
            if record.get("status") == "constant output":  # the check had no teeth: redraw and redo
                record = run_one(args.one, zoo, args.ratio, redraw=True)
        except Exception as err:  # reported in the table
            record = {"model": args.one, "status": "failed", "error": f"{type(err).__name__}: {str(err)[:400]}"}
        print("RECORD " + json.dumps(record))
        return 0
    if args.models:
        names = args.models.split(",")
    else:
        from bench.zoo import list_classification_models
        names = list_classification_models()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "coverage.json"
    records = {}
    if json_path.exists():
        records = {r["model"]: r for r in json.loads(json_path.read_text())["models"]}
    for name in names:
        record = _run_child(["--one", name, "--zoo", str(zoo), "--ratio", str(args.ratio)], name, "status",
                            args.timeout)
        records[name] = record
        print(f"{name:28} {record['status']:9} {record.get('max_rel_error', '')!s:10} "
              f"{record.get('prunable_param_share', '')!s:8} {record.get('error', '')[:120]}", flush=True)
        _write(records, out, args.ratio)
    return 0


def _run_child(argv: list[str], name: str, status_key: str, timeout: int) -> dict:
    """This script on one model in a child process (a crash or a hang costs that model only): the record it
    prints on its ``RECORD`` line, or a failed one saying why, with the wall time."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, timeout=timeout)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RECORD ")), None)
        record = json.loads(line[7:]) if line else {
            "model": name, status_key: "failed",
            "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:400]}
    except subprocess.TimeoutExpired:
        record = {"model": name, status_key: "failed", "error": f"timed out after {timeout}s"}
    record["total_s"] = round(time.perf_counter() - t0, 1)
    return record


def _main_zoo2(args) -> int:
    zoo = Path(args.zoo2)
    zoo.mkdir(parents=True, exist_ok=True)
    if args.one2:
        try:
            record = run_zoo2_one(args.one2, zoo, args.ratio)
        except Exception as err:  # reported in the table
            record = {"model": args.one2, "prune": "failed", "error": f"{type(err).__name__}: {str(err)[:400]}"}
        print("RECORD " + json.dumps(record))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zoo_detect import MODELS

    names = args.models.split(",") if args.models else list(MODELS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "coverage_zoo2.json"
    records = {r["model"]: r for r in json.loads(json_path.read_text())["models"]} if json_path.exists() else {}
    for name in names:
        record = _run_child(["--zoo2", str(zoo), "--one2", name, "--ratio", str(args.ratio)], name, "prune",
                            args.timeout)
        records[name] = record
        print(f"{name:32} {record.get('prune', '')[:20]:20} {record.get('compile', '')[:40]:40} "
              f"{record.get('error', '')[:100]}", flush=True)
        rows = sorted(records.values(), key=lambda r: (r.get("family", ""), r["model"]))
        json_path.write_text(json.dumps({"ratio": args.ratio, "models": rows}, indent=1))
        cls = out / "coverage.json"
        if cls.exists():
            data = json.loads(cls.read_text())
            _write({r["model"]: r for r in data["models"]}, out, data.get("ratio", args.ratio))
    return 0


def _zoo2_lines(out: Path) -> list[str]:
    """The second table of coverage.md, from coverage_zoo2.json (empty if it was never run)."""
    path = out / "coverage_zoo2.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = data["models"]
    ratio = data.get("ratio", 0.3)
    pruned = sum(r.get("prune") == "verified" for r in rows)
    compiled = sum(r.get("compile") == "verified" for r in rows)
    lines = [
        "", "# Coverage: detection and segmentation models", "",
        "Generated by `python tools/coverage.py --zoo2 DIR` over the models of `tools/zoo_detect.py`, built from",
        "configs with random weights (no downloads) and exported with `torch.onnx.export` (TorchScript, opset 17):",
        "torchvision segmentation (the `out` map), torchvision detection as backbone + head (no anchors, box",
        "decoding or NMS), ultralytics YOLO with its decoding head in export mode (320x320), segmentation_models_pytorch.",
        "'params' / 'MACs' prunable: the share of parameters in initializers a prunable group slices, and of",
        "multiply-accumulates in nodes whose channels a prunable group shrinks. 'prune': `prune --ratio "
        f"{ratio}` (L2),",
        "verified against the masked original (2 random inputs, 1e-4 relative); 'vs dense' is the pruned model's",
        "distance to the dense one (the check has teeth where it exceeds the tolerance). 'compile':",
        "`compile --target trt-v100 --latency 0.5 --no-measure` (analytic latencies), feasible and verified.",
        "",
        f"**prune {ratio} verified: {pruned} of {len(rows)}; compile 0.5 feasible and verified: {compiled} of {len(rows)}.**",
        "",
        "| model | family | groups (prunable) | params prunable | MACs prunable | prune | vs dense | compile trt-v100 0.5 | frozen groups by reason |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "groups" not in r:
            lines.append(f"| {r['model']} | {r.get('family', '')} | | | | **failed** | | | {r.get('error', '')} |")
            continue
        frozen = ", ".join(f"{k}: {v}" for k, v in collections.Counter(r.get("frozen", {})).most_common(3))
        compile_cell = r.get("compile", "")
        if compile_cell == "verified":
            compile_cell = (f"verified (predicted {r['compile_predicted']:.2f}x, params {r['compile_params_after']:.2f}"
                            + (f", {r['compile_removed_groups']} groups removed" if r.get("compile_removed_groups")
                               else "") + ")")
        prune_cell = r.get("prune", "")
        if prune_cell == "verified":
            prune_cell = f"verified ({r['prune_max_rel_error']:.1e}, params {r['prune_params_after']:.2f})"
        lines.append(
            f"| {r['model']} | {r.get('family', '')} | {r['groups']} ({r['prunable_groups']}) | "
            f"{100 * r['prunable_param_share']:.1f}% | {100 * r['prunable_mac_share']:.1f}% | {prune_cell} | "
            f"{r.get('prune_vs_dense', '')} | {compile_cell} | {frozen} |")
    lines += ["", "## Reasons of frozen groups (detection / segmentation; first reason of each)", ""]
    for r in rows:
        if r.get("frozen_examples"):
            lines.append(f"- **{r['model']}**: " + "; ".join(r["frozen_examples"]))
    return lines


def _write(records: dict, out: Path, ratio: float) -> None:
    rows = sorted(records.values(), key=lambda r: r["model"])
    (out / "coverage.json").write_text(json.dumps({"ratio": ratio, "models": rows}, indent=1))
    ok = sum(r["status"] == "verified" for r in rows)
    lines = [
        "# Coverage: torchvision classification models",
        "",
        f"Generated by `python tools/coverage.py` (export, `inspect`, `prune --ratio {ratio}` with the L2 criterion,",
        "verification against the masked original in onnxruntime on 2 random inputs, tolerance 1e-4 relative).",
        "Random weights; 1x3x224x224 (299 for inception_v3). 'prunable params' is the share of parameters in",
        "initializers that at least one prunable channel group slices. Where torchvision's own initialisation",
        "makes the outputs independent of the input (GoogLeNet's std-0.01 convolutions, ViT's zero head), the",
        "equivalence check would prove nothing, so those weights are redrawn (Kaiming-like, fan-in) and the",
        "model is exported and checked again ('weights' column).",
        "",
        f"**{ok} of {len(rows)} verified.**",
        "",
        "| model | exporter | weights | status | groups (prunable) | prunable params | params after/before | MACs after/before | max rel. error | frozen groups by reason | time s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] == "failed":
            lines.append(f"| {r['model']} | {r.get('exporter', '-')} | | **failed** | | | | | | {r['error']} | {r.get('total_s', '')} |")
            continue
        frozen = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("frozen", {}).items()))
        macs = r.get("macs", [1, 1])
        lines.append(
            f"| {r['model']} | {r['exporter']} | {r.get('weights', '')} | {r['status']} | {r['groups']} ({r['prunable_groups']}) | "
            f"{100 * r['prunable_param_share']:.1f}% | {r['params_after'] / max(r['params'], 1):.3f} | "
            f"{macs[1] / max(macs[0], 1):.3f} | {r['max_rel_error']:.1e} | {frozen} | {r.get('total_s', '')} |")
    lines += ["", "## Reasons of frozen groups (first reason of each, per model)", ""]
    for r in rows:
        if r.get("frozen_examples"):
            lines.append(f"- **{r['model']}**: " + "; ".join(r["frozen_examples"]))
    lines += _zoo2_lines(out)
    (out / "coverage.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
