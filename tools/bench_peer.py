"""halp-onnx against Torch-Pruning at equal measured latency on ort-cpu -> docs/peer.md (+ docs/peer.json).

    pip install torch-pruning==1.6.1        # benchmark-only dependency (not in pyproject)
    python tools/bench_peer.py run --work /tmp/halp-peer        # every row (cached per row in --work)
    python tools/bench_peer.py report --work /tmp/halp-peer --out docs/peer --json docs/peer.json

Model: the pretrained CIFAR ResNet-56 of ../shared (held out: halp-onnx's defaults were tuned on
ResNet-20), with BatchNorm kept as nodes for both tools (``bench.zoo.cifar_resnet_bn_onnx`` for halp-onnx
and as the dense reference; Torch-Pruning prunes the torch model with its BatchNorm layers and its result
is exported with ``torch.onnx.export(training=TrainingMode.PRESERVE)``, BatchNorm kept too).

Rows:

* ``dense``: the model as is (latency 1 by definition);
* ``halp-<t>``: ``halp-onnx compile dense.onnx --target ort-cpu --latency <t> --calib calib.npz`` (2,000
  labelled JPEG training images; repaired, the default), t = 0.5 and 0.7;
* ``tp-<importance>-<trunk>-<round>-<t>``: ``torch_pruning.pruner.MetaPruner`` with
  ``MagnitudeImportance(p=2)`` or ``TaylorImportance()`` (gradients of the cross-entropy on the same 2,000
  calibration images), ``global_pruning=True``, ``round_to=None`` or ``8``, ``ignored_layers=[linear]``, and
  the trunk (the residual stream) either kept (every conv that writes the residual stream ignored too, so
  only the inner conv of each basic block is pruned) or pruned. Torch-Pruning cannot follow the option-A
  shortcut (strided slice + zero channel pad): pruning the trunk of the original model gives a broken
  model (mismatched widths at the classifier). For "trunk pruned" the shortcut is replaced by a 1x1
  stride-2 convolution whose weight is the fixed zero-padded identity selection (it computes exactly what
  option A computes; asserted), which Torch-Pruning can trace; after pruning, that convolution (still a
  0/1 selection, asserted) is turned back into a weight-free strided slice + channel gather, so the
  exported model carries no extra weights and nothing trainable in the shortcut.

Equal measured latency: for each Torch-Pruning setting and target t, the global ``pruning_ratio`` is
searched by bisection (each step: prune a fresh copy, export to ONNX, check onnxruntime against torch,
paired timing against the dense ONNX) for the smallest ratio whose measured ratio is <= max(halp-onnx's
measured ratio at t, t) x (1 + TOL). Where even the largest ratio tried does not get there, the row is
"cannot reach" (halp-onnx ahead by definition) and keeps the best measured point.

Every latency figure is ``halp_onnx.profiles.timing.paired_timing`` (the median of per-round
candidate/dense ratios, the two models timed alternately in this process, onnxruntime one thread,
batch 1). Every model gets top-1 on the 1,017 byte-exact test images and the 10,000 JPEG test images,
one-shot and after the same recipe (``tools/bench_accuracy.py``'s: ``halp-onnx finetune pruned.onnx
--teacher dense.onnx --data <10,000 JPEG training images> --epochs 1 --batch-size 128``, defaults
otherwise), the dense model included. Rows at 0.5 run (and fine-tune) before rows at 0.7.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = (0.5, 0.7)
IMPORTANCES = ("magnitude", "taylor")
TRUNKS = ("kept", "pruned")
ROUNDS = (None, 8)
TOL = 0.02  # equal latency: within 2% of the goal
RATIO_HI = 0.9  # the largest global pruning ratio tried
# Scanned upwards (stopping at the first that is fast enough) before bisecting: Torch-Pruning's latency is
# not monotone in its global ratio (at high ratios, layers it would empty are left unpruned, round_to=8 makes
# that worse), so a bisection over the whole range alone could miss every fast enough ratio.
GRID = (0.3, 0.45, 0.6, 0.75, 0.9)
STEPS = 5  # bisection steps per (setting, target) beyond what is already measured
RESOLUTION = 0.01  # stop bisecting once the bracket is this narrow
TIMING = {"rounds": 7, "budget_s": 4.2}  # as halp-onnx's own closed loop


# --------------------------------------------------------------------------------------------
# pure logic (tested in tests/test_bench_peer.py without torch-pruning or ../shared)


def setting_name(importance: str, trunk: str, round_to: int | None) -> str:
    return f"tp-{importance}-{trunk}-{'r8' if round_to == 8 else ('r' + str(round_to) if round_to else 'none')}"


def settings() -> list[tuple[str, str, int | None]]:
    return [(i, t, r) for i in IMPORTANCES for t in TRUNKS for r in ROUNDS]


def row_names(targets=TARGETS) -> list[str]:
    """Run order: dense, then per target halp-onnx and every Torch-Pruning setting (0.5 before 0.7)."""
    names = ["dense"]
    for t in targets:
        names.append(f"halp-{t}")
        names += [f"{setting_name(*s)}-{t}" for s in settings()]
    return names


def match_ratio(measure: Callable[[float], float], goal: float, *, known: dict[float, float] | None = None,
                lo: float = 0.0, hi: float = RATIO_HI, steps: int = STEPS, tol: float = TOL,
                resolution: float = RESOLUTION, grid: tuple[float, ...] = GRID) -> dict:
    """The smallest pruning ratio in (lo, hi] whose measured latency ratio is <= goal x (1 + tol).

    ``measure(ratio)`` returns the measured ratio (x dense; ``inf`` for a ratio that gives no valid
    model); ``known`` holds points already measured (ratio -> measured) and is extended in place, so the
    search for a second goal reuses the first one's points. ``lo`` is taken as too slow without measuring
    it (the dense model). Without a known passing point, the ``grid`` ratios in (lo, hi] (and ``hi``) are
    measured upwards until one passes. Bisection: the bracket starts at the largest known failing ratio
    below the smallest known passing one; ``steps`` new measurements at most.

    Returns ``reached`` (bool), ``ratio`` / ``measured`` (the chosen point, or the fastest point seen when
    not reached), ``limit`` (goal x (1 + tol)) and ``tried`` (new measurements)."""
    known = {} if known is None else known
    limit = goal * (1 + tol)
    tried: list[float] = []

    def m(r: float) -> float:
        r = round(float(r), 4)
        if r not in known:
            known[r] = float(measure(r))
            tried.append(r)
        return known[r]

    def ok(v: float) -> bool:
        return v <= limit

    inside = {r: v for r, v in known.items() if lo < r <= hi}
    if not any(ok(v) for v in inside.values()):
        for g in sorted({r for r in grid if lo < r <= hi} | {hi}):
            if ok(m(g)):
                break
        inside = {r: v for r, v in known.items() if lo < r <= hi}
    passing = [r for r, v in inside.items() if ok(v)]
    if not passing:
        best = min(inside, key=lambda r: (inside[r], r))
        return {"reached": False, "ratio": best, "measured": inside[best], "limit": limit, "tried": tried}
    b = min(passing)
    a = max([r for r, v in inside.items() if not ok(v) and r < b], default=lo)
    for _ in range(steps):
        if b - a <= resolution:
            break
        mid = round((a + b) / 2, 4)
        if ok(m(mid)):
            b = mid
        else:
            a = mid
    return {"reached": True, "ratio": b, "measured": known[b], "limit": limit, "tried": tried}


def _ft(row: dict | None) -> dict | None:
    ft = (row or {}).get("ft")
    return ft if ft and not ft.get("rc") and "exact" in ft else None


def acceptance(rows: dict[str, dict], targets=TARGETS) -> dict:
    """Per target: is halp-onnx (fine-tuned) ahead of every Torch-Pruning row on both test sets?

    A Torch-Pruning row that cannot reach the latency counts as behind halp-onnx; a reached row not yet
    fine-tuned (or a halp-onnx row missing) makes the verdict ``None`` (not measured). ``margin``: the
    smallest (halp-onnx - Torch-Pruning) fine-tuned top-1 over the reached rows, per test set."""
    out: dict = {}
    for t in targets:
        halp = _ft(rows.get(f"halp-{t}"))
        tp_rows = {n: r for n, r in rows.items() if n.startswith("tp-") and n.endswith(f"-{t}")}
        expected = {f"{setting_name(*s)}-{t}" for s in settings()}
        res: dict = {"ahead": None, "behind": [], "cannot_reach": [], "missing": sorted(expected - set(tp_rows)),
                     "margin": {"exact": None, "jpeg": None}, "closest": None,
               "unreached_margin": None, "unreached_behind": []}
        if halp is None:
            res["missing"].insert(0, f"halp-{t}")
        ahead_all = halp is not None and not res["missing"]
        for name in sorted(tp_rows):
            r = tp_rows[name]
            if not r.get("match", {}).get("reached", False):
                res["cannot_reach"].append(name)
                ft = _ft(r)
                if ft is not None and halp is not None:  # fine-tuned at its fastest point (slower than halp-onnx)
                    d = round(min(halp["exact"] - ft["exact"], halp["jpeg"] - ft["jpeg"]), 2)
                    if res["unreached_margin"] is None or d < res["unreached_margin"]:
                        res["unreached_margin"] = d
                    if d <= 0:
                        res["unreached_behind"].append(name)
                continue
            ft = _ft(r)
            if ft is None or halp is None:
                ahead_all = False
                res["missing"].append(name)
                continue
            for k in ("exact", "jpeg"):
                d = round(halp[k] - ft[k], 2)
                cur = res["margin"][k]
                if cur is None or d < cur:
                    res["margin"][k] = d
                    if k == "jpeg":
                        res["closest"] = name
            if not (halp["exact"] > ft["exact"] and halp["jpeg"] > ft["jpeg"]):
                res["behind"].append(name)
        if res["missing"]:
            res["ahead"] = None
        else:
            res["ahead"] = bool(ahead_all and not res["behind"])
        out[str(t)] = res
    return out


# --------------------------------------------------------------------------------------------
# data, evaluation, fine-tuning


def _data(args, work: Path) -> tuple[Path, Path]:
    from bench_accuracy import _data as data  # the same split as tools/bench_accuracy.py

    return data(args, work)


_EVAL: dict = {}


def top1(model) -> dict:
    """Top-1 (%) on the exact 1,017 images and the 10,000 JPEG test images, onnxruntime one thread."""
    import onnx
    import onnxruntime as ort
    from bench import zoo

    if not _EVAL:
        xe, ye = zoo.load_cifar_exact1017()
        xt, yt = zoo.load_cifar_jpeg("test")
        _EVAL["exact"] = (zoo.normalize_cifar(xe), np.asarray(ye).reshape(-1))
        _EVAL["jpeg"] = (zoo.normalize_cifar(xt), np.asarray(yt).reshape(-1))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = {}
    for k, (x, y) in _EVAL.items():
        hit = 0
        for i in range(0, len(x), 500):
            hit += int((sess.run(None, {name: x[i:i + 500]})[0].argmax(1) == y[i:i + 500]).sum())
        out[k] = round(100 * hit / len(x), 2)
    return out


def _recipe(args, student: Path, dense: Path, train: Path, out: Path) -> dict:
    """tools/bench_accuracy.py's recipe (+ --ft-extra, for smoke tests only), then top-1 here."""
    from bench_accuracy import _recipe as recipe

    extra = tuple(args.ft_extra.split()) if args.ft_extra else ()
    import bench_accuracy

    saved = bench_accuracy.top1
    bench_accuracy.top1 = top1  # evaluate with one onnxruntime thread
    try:
        return recipe(args, student, dense, train, out, extra)
    finally:
        bench_accuracy.top1 = saved


def params_of(model) -> int:
    """Weights and biases of the Conv and Gemm nodes (what structural pruning removes)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    inits = {t.name: t for t in m.graph.initializer}
    consts = {n.output[0]: n for n in m.graph.node if n.op_type == "Constant"}
    total = 0
    for n in m.graph.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        for name in n.input[1:]:
            if name in inits:
                total += int(np.prod(inits[name].dims))
            elif name in consts:
                total += int(numpy_helper.to_array(consts[name].attribute[0].t).size)
    return total


# --------------------------------------------------------------------------------------------
# timing


_BACKEND: list = []


def measured(dense, candidate) -> dict:
    import onnx
    from halp_onnx.profiles.backends import get_backend
    from halp_onnx.profiles.targets import get_target
    from halp_onnx.profiles.timing import paired_timing

    if not _BACKEND:
        _BACKEND.append(get_backend(get_target("ort-cpu"), threads=1))
    load = (lambda p: p if isinstance(p, onnx.ModelProto) else onnx.load(str(p)))
    pt = paired_timing(_BACKEND[0], load(dense), load(candidate), **TIMING)
    return {"ratio": round(pt.ratio, 4), "p10": round(pt.ratio_p10, 4), "p90": round(pt.ratio_p90, 4),
            "dense_ms": round(pt.reference_ms, 4), "ms": round(pt.ms, 4), "rounds": pt.rounds}


# --------------------------------------------------------------------------------------------
# Torch-Pruning


class _TP:
    """Builds, prunes and exports the torch ResNet-56 for one trunk mode; Taylor gradients cached."""

    def __init__(self, args, calib: Path):
        import torch
        from bench import zoo

        self.args, self.torch, self.zoo = args, torch, zoo
        with np.load(calib) as z:
            self.x = torch.from_numpy(zoo.normalize_cifar(z["images"]))
            self.y = torch.from_numpy(z["labels"].astype(np.int64))
        self.bases: dict = {}
        self.grads: dict = {}

    # -- models
    def _classes(self):
        import torch.nn as nn
        import torch.nn.functional as F

        torch = self.torch

        class GatherShortcut(nn.Module):
            """Strided slice, then output channel j = input channel idx[j] (idx == C: a zero channel)."""

            def __init__(self, idx):
                super().__init__()
                self.register_buffer("idx", torch.as_tensor(idx, dtype=torch.long))

            def forward(self, x):
                y = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 1))
                return y.index_select(1, self.idx)

        return GatherShortcut

    def base(self, trunk: str):
        if trunk in self.bases:
            return self.bases[trunk]
        torch, nn = self.torch, self.torch.nn
        model = self.zoo.load_cifar_resnet(self.args.depth)
        if trunk == "pruned":
            orig = copy.deepcopy(model)
            option_a = self.zoo._cifar_classes().OptionAShortcut
            for block in model.modules():
                sc = getattr(block, "shortcut", None)
                if isinstance(sc, option_a):
                    cin, cout, p = block.conv1.in_channels, sc.planes, sc.planes // 4
                    conv = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
                    with torch.no_grad():
                        conv.weight.zero_()
                        for i in range(cin):
                            conv.weight[p + i, i, 0, 0] = 1.0
                    block.shortcut = conv
            with torch.no_grad():
                diff = (orig(self.x[:64]) - model(self.x[:64])).abs().max().item()
            assert diff < 1e-4, f"the 1x1 selection shortcut changes the logits by {diff}"
        model.eval()
        self.bases[trunk] = model
        return model

    def ignored(self, model, trunk: str) -> list:
        ign = [model.linear]
        if trunk == "kept":  # every conv that writes the residual stream: the stem and each block's conv2
            ign += [model.conv1] + [b.conv2 for s in (model.layer1, model.layer2, model.layer3) for b in s]
        return ign

    def taylor_grads(self, trunk: str) -> dict:
        if trunk not in self.grads:
            torch = self.torch
            model = copy.deepcopy(self.base(trunk)).eval()
            model.zero_grad()
            t0 = time.perf_counter()
            for i in range(0, len(self.x), 100):
                loss = torch.nn.functional.cross_entropy(model(self.x[i:i + 100]), self.y[i:i + 100])
                loss.backward()
            self.grads[trunk] = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                                 if p.grad is not None}
            print(f"taylor gradients ({trunk}): {len(self.x)} images, {time.perf_counter() - t0:.0f} s", flush=True)
        return self.grads[trunk]

    def prune(self, importance: str, trunk: str, round_to: int | None, ratio: float):
        import torch_pruning as tp

        torch = self.torch
        model = copy.deepcopy(self.base(trunk)).eval()
        if ratio > 0:
            if importance == "taylor":
                grads = self.taylor_grads(trunk)
                for n, p in model.named_parameters():
                    if n in grads:
                        p.grad = grads[n].clone()
                imp = tp.importance.TaylorImportance()
            else:
                imp = tp.importance.MagnitudeImportance(p=2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pruner = tp.pruner.MetaPruner(model, torch.zeros(1, 3, 32, 32), importance=imp, global_pruning=True,
                                              pruning_ratio=ratio, ignored_layers=self.ignored(model, trunk),
                                              round_to=round_to)
                pruner.step()
            model.zero_grad(set_to_none=True)
        if trunk == "pruned":
            gather = self._classes()
            for block in list(model.modules()):
                sc = getattr(block, "shortcut", None)
                if isinstance(sc, torch.nn.Conv2d):
                    w = sc.weight.detach()[:, :, 0, 0]
                    assert bool(((w == 0) | (w == 1)).all()) and bool((w.sum(1) <= 1).all()), \
                        "the pruned selection shortcut is no longer a 0/1 selection"
                    idx = [int(r.argmax()) if float(r.sum()) > 0 else w.shape[1] for r in w]
                    block.shortcut = gather(idx)
        return model.eval()

    def export(self, model, path: Path):
        """BatchNorm kept (TrainingMode.PRESERVE on an eval-mode model), dynamic batch, small constant
        subgraphs folded like bench.zoo's exports; checked against torch in onnxruntime."""
        import onnx
        import onnxruntime as ort

        torch = self.torch
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.zeros(1, 3, 32, 32), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
        m = onnx.load(str(path))
        self.zoo._fold_small_constants(m)
        onnx.checker.check_model(m)
        onnx.save(m, str(path))
        bn = sum(n.op_type == "BatchNormalization" for n in m.graph.node)
        assert bn > 0, "BatchNorm was folded by the exporter"
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        x = self.x[:16]
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        err = float(np.abs(got - ref).max())
        assert err < 1e-3, f"onnxruntime differs from torch by {err}"
        return m, err


def _curve_path(work: Path, setting: str) -> Path:
    return work / f"{setting}-curve.json"


def _load_curve(work: Path, setting: str) -> dict:
    p = _curve_path(work, setting)
    return json.loads(p.read_text()) if p.exists() else {}


def _tp_point(tpb: _TP, work: Path, dense: Path, s: tuple, ratio: float) -> dict:
    """Prune at ``ratio``, export, check, time against dense; cached in the setting's curve file."""
    name = setting_name(*s)
    curve = _load_curve(work, name)
    key = f"{ratio:.4f}"
    if key in curve:
        return curve[key]
    path = work / f"{name}-{key}.onnx"
    t0 = time.perf_counter()
    try:
        model = tpb.prune(s[0], s[1], s[2], ratio)
        m, err = tpb.export(model, path)
        pt = measured(dense, m)
        point = {"measured": pt["ratio"], "timing": pt, "params": params_of(m), "ort_vs_torch": err,
                 "path": str(path)}
    except Exception as exc:  # noqa: BLE001 - an invalid pruned model is a data point, not a crash
        point = {"measured": float("inf"), "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    point["seconds"] = round(time.perf_counter() - t0, 1)
    curve[key] = point
    _curve_path(work, name).write_text(json.dumps(curve, indent=1, default=float))
    print(f"  {name} ratio {key}: {point.get('measured')} x dense"
          + (f" ({point['error']})" if "error" in point else ""), flush=True)
    return point


# --------------------------------------------------------------------------------------------
# rows


def _halp_compile(args, dense: Path, calib: Path, t: float, work: Path) -> dict:
    out, rep = work / f"halp-{t}.onnx", work / f"halp-{t}.report.json"
    from bench_accuracy import halp_subprocess

    proc, seconds, cmd = halp_subprocess(
        ["halp_onnx", "compile", str(dense), "--target", "ort-cpu", "--latency", str(t), "--calib", str(calib),
         "--threads", "1", "-o", str(out), "--report", str(rep), "--quiet"], args.profile)
    if proc.returncode != 0:
        raise SystemExit(f"halp-onnx compile failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    report = json.loads(rep.read_text())
    return {"command": "halp-onnx " + " ".join(cmd[3:]), "compile_seconds": round(seconds, 1),
            "path": str(out), "compile_latency": report.get("latency")}


def run_rows(args) -> int:
    import torch
    from bench import zoo

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train, calib = _data(args, work)
    dense = work / f"resnet{args.depth}-bn.onnx"
    if not dense.exists():
        import onnx

        onnx.save(zoo.cifar_resnet_bn_onnx(args.depth), str(dense))
    targets = tuple(float(t) for t in args.targets.split(","))
    wanted = set(args.settings.split(",")) if args.settings != "all" else None
    tpb = _TP(args, calib)
    names = [n for n in row_names(targets)
             if wanted is None or not n.startswith("tp-") or n.rsplit("-", 1)[0] in wanted]
    dense_params = params_of(dense)
    for name in names:
        path = work / f"{name}.json"
        row = json.loads(path.read_text()) if path.exists() else {}
        reached = row.get("match", {}).get("reached", True)
        done = row.get("ft") and not row["ft"].get("rc")
        if (args.no_ft or (not reached and not args.ft_unreached)) and row.get("oneshot") or done:
            print(f"{name}: cached ({path})", flush=True)
            continue
        t0 = time.perf_counter()
        if not row.get("oneshot"):
            if name == "dense":
                row = {"tool": "dense", "setting": "-", "target": 1.0, "path": str(dense), "pruning_ratio": 0.0,
                       "measured": measured(dense, dense)}
                # the torch exports of the unpruned model, timed like every Torch-Pruning point (sanity)
                for trunk in TRUNKS:
                    p = _tp_point(tpb, work, dense, ("magnitude", trunk, None), 0.0)
                    row[f"tp_unpruned_{trunk}"] = {k: p.get(k) for k in ("measured", "params", "error")}
            elif name.startswith("halp-"):
                t = float(name.split("-")[1])
                row = {"tool": "halp-onnx", "setting": "compile --calib (Taylor, repaired)", "target": t,
                       **_halp_compile(args, dense, calib, t, work)}
                row["measured"] = measured(dense, row["path"])
            else:
                setting, t = name.rsplit("-", 1)
                t = float(t)
                s = next(x for x in settings() if setting_name(*x) == setting)
                halp_row = json.loads((work / f"halp-{t}.json").read_text())
                goal = max(halp_row["measured"]["ratio"], t)
                curve = _load_curve(work, setting)
                known = {float(k): v["measured"] for k, v in curve.items() if float(k) > 0}
                match = match_ratio(lambda r: _tp_point(tpb, work, dense, s, r)["measured"], goal, known=known,
                                    steps=args.steps)
                point = _load_curve(work, setting)[f"{match['ratio']:.4f}"]
                row = {"tool": "torch-pruning", "setting": setting, "importance": s[0], "trunk": s[1],
                       "round_to": s[2], "target": t, "goal": goal, "match": match,
                       "pruning_ratio": match["ratio"], "path": point.get("path"),
                       "measured": point.get("timing") or {"ratio": point["measured"]}}
            if row.get("path"):
                row["params"] = params_of(row["path"])
                row["params_kept"] = round(row["params"] / dense_params, 4)
                row["oneshot"] = top1(row["path"])
            path.write_text(json.dumps(row, indent=1, default=float))
        reached = row.get("match", {}).get("reached", True)
        if not args.no_ft and (reached or args.ft_unreached) and row.get("path"):
            stem = Path(row["path"]).stem
            row["ft"] = _recipe(args, Path(row["path"]), dense, train, work / f"{stem}-ft.onnx")
        row["seconds"] = round(row.get("seconds", 0) + time.perf_counter() - t0, 1)
        path.write_text(json.dumps(row, indent=1, default=float))
        show = {k: row.get(k) for k in ("pruning_ratio", "params_kept", "oneshot", "ft")}
        show["measured"] = (row.get("measured") or {}).get("ratio")
        print(f"{name}: {json.dumps(show, default=float)}", flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# report


def _pct(t: dict | None, k: str) -> str:
    return f"{t[k]:.2f}%" if t and k in t else "-"


def report(args) -> int:
    work = Path(args.work)
    rows = {n: json.loads((work / f"{n}.json").read_text()) for n in row_names() if (work / f"{n}.json").exists()}
    dft = _ft(rows.get("dense"))
    acc = acceptance(rows)
    dense_params = rows.get("dense", {}).get("params")
    cmd_run = f"python tools/bench_peer.py run --work {args.work}"
    if any(_ft(r) and not r.get("match", {}).get("reached", True) for r in rows.values()):
        cmd_run += f"`, then `python tools/bench_peer.py run --work {args.work} --ft-unreached"
    cmd_rep = f"python tools/bench_peer.py report --work {args.work} --out {args.out}" + (
        f" --json {args.json}" if args.json else "")
    lines = [f"# halp-onnx against Torch-Pruning at equal measured latency (CIFAR ResNet-{args.depth}, ort-cpu)", "",
             f"Made by `{cmd_run}` then `{cmd_rep}` (Torch-Pruning {_tp_version()}, installed with "
             "`pip install torch-pruning==1.6.1`; a benchmark-only dependency). Every figure below is measured by "
             "the tool; none is typed in.", "",
             f"**Model.** The pretrained CIFAR ResNet-{args.depth} of ../shared (option-A shortcuts), with BatchNorm "
             "kept as nodes for both tools. halp-onnx's defaults (repair, Taylor importance, the fine-tuning "
             "recipe) were tuned on ResNet-20; ResNet-56 is held out. Torch-Pruning's settings are its own "
             "defaults plus the options the issue names; nothing was tuned for either tool on this model.", "",
             "**halp-onnx.** `halp-onnx compile resnet56-bn.onnx --target ort-cpu --latency T --calib calib.npz "
             "--threads 1` (2,000 labelled JPEG training images for the Taylor importance and the repair, "
             "which is on by default).", "",
             "**Torch-Pruning.** `tp.pruner.MetaPruner(model, example, importance, global_pruning=True, "
             "pruning_ratio=R, ignored_layers=[linear, ...], round_to=None|8)` on the torch model, "
             "`MagnitudeImportance(p=2)` or `TaylorImportance()` (cross-entropy gradients on the same 2,000 "
             "calibration images). Torch-Pruning cannot follow the option-A shortcut: pruning the residual "
             "stream of the original model yields a model whose widths do not match at the classifier. So it is "
             "given two trunks: *kept* (the stem and every block's conv2, the convs that write the residual "
             "stream, are ignored: only the inner conv of each basic block is pruned) and *pruned* (each option-A "
             "shortcut replaced by a 1x1 stride-2 conv whose weight is the fixed zero-padded identity selection, "
             "which computes exactly the same logits, asserted, so the residual streams become prunable groups; "
             "after pruning it is turned back into a weight-free strided slice + channel gather). Each result is "
             "exported with `torch.onnx.export(training=TrainingMode.PRESERVE)` (BatchNorm kept) and checked "
             "in onnxruntime against torch.", "",
             "**Equal measured latency.** Every latency is `paired_timing` (onnxruntime, one thread, batch 1): "
             f"the median over {TIMING['rounds']} rounds of candidate/dense ratios, the two timed alternately in "
             f"one process ({TIMING['budget_s']} s per pair). For each Torch-Pruning setting and target T its "
             "global pruning ratio is bisected (each step prunes a fresh copy, exports and times it) for the "
             f"smallest ratio measured at <= max(halp-onnx's measured ratio at T, T) x {1 + TOL:.2f}, so "
             f"Torch-Pruning may be up to {100 * TOL:.0f}% slower than halp-onnx. Torch-Pruning's latency is not "
             "monotone in its global ratio (at high ratios the layers it would empty are left unpruned, and "
             "`round_to=8` rounds small layers back up), so the ratios "
             f"{', '.join(str(g) for g in GRID)} are scanned upwards to the first one fast enough before "
             f"bisecting (at most {STEPS} steps, to {RESOLUTION}); a setting none of whose measured ratios is fast "
             "enough is *cannot reach* (listed with its fastest point; it counts as behind halp-onnx; where it was "
             "fine-tuned at that slower point, for information, its fine-tuned top-1 is in brackets). Every "
             "point measured is listed under the table.", "",
             "**Accuracy.** Top-1 on the 1,017 byte-exact test images (standard error about ±0.9 points) and on "
             "the 10,000 JPEG test images, one-shot and after the same recipe for every model, the dense one "
             "included: `halp-onnx finetune model.onnx --teacher resnet56-bn.onnx --data <10,000 JPEG training "
             "images> --epochs 1 --batch-size 128` (every other option at its default; 9,000 images trained, "
             "10% held out), CPU, one thread. The fine-tune and calibration images are disjoint. One-shot, "
             "halp-onnx's figures include its repair (the disturbed layers refitted to the dense model by least "
             "squares, then per-channel statistics matched, on the calibration images); Torch-Pruning has no "
             "such step, so its one-shot figures are the pruned model as it comes "
             "out (mostly at chance, 10%).", ""]
    lines += ["| tool | setting | target | pruning ratio | params kept | measured latency x dense | one-shot top-1 "
              "exact / JPEG | fine-tuned top-1 exact / JPEG | points vs dense fine-tuned (exact / JPEG) |",
              "|---|---|---|---|---|---|---|---|---|"]

    def lat(r: dict) -> str:
        m = r.get("measured") or {}
        if "p10" in m:
            return f"{m['ratio']:.3f} ({m['p10']:.3f}-{m['p90']:.3f})"
        return f"{m['ratio']:.3f}" if "ratio" in m else "-"

    for name, r in rows.items():
        ft = _ft(r)
        tool = r.get("tool", "?")
        setting = r.get("setting", "-")
        target = "-" if name == "dense" else f"{r.get('target')}"
        if tool == "torch-pruning":
            setting = f"{r['importance']}, trunk {r['trunk']}, round_to={r['round_to']}"
        ratio = r.get("pruning_ratio")
        ratio_s = "-" if tool == "halp-onnx" else f"{ratio:.3f}" if ratio is not None else "-"
        reached = r.get("match", {}).get("reached", True)
        lat_s = lat(r) if reached else f"**cannot reach** {r['match']['limit']:.3f}: fastest {lat(r)}"
        one = f"{_pct(r.get('oneshot'), 'exact')} / {_pct(r.get('oneshot'), 'jpeg')}"
        if ft:
            fts = f"{_pct(ft, 'exact')} / {_pct(ft, 'jpeg')}"
            pts = (f"{ft['exact'] - dft['exact']:+.2f} / {ft['jpeg'] - dft['jpeg']:+.2f}" if dft else "-")
        elif (r.get("ft") or {}).get("rc"):
            fts, pts = f"failed: {r['ft'].get('error', '?')}", "-"
        else:
            fts, pts = ("not fine-tuned (cannot reach)" if not reached else "not run"), "-"
        if ft and not reached:
            fts = f"({fts}, at the slower fastest point)"
        params = f"{100 * r['params_kept']:.1f}%" if r.get("params_kept") else ("100.0%" if name == "dense" else "-")
        lines.append(f"| {tool} | {setting} | {target} | {ratio_s} | {params} | {lat_s} | {one} | {fts} | {pts} |")
    lines.append("")
    d = rows.get("dense", {})
    if d:
        lines.append("Sanity: the dense model timed against itself "
                     f"{(d.get('measured') or {}).get('ratio', float('nan')):.3f}; the unpruned torch exports as "
                     "Torch-Pruning's results are exported: trunk kept "
                     f"{(d.get('tp_unpruned_kept') or {}).get('measured', float('nan')):.3f}, trunk pruned (gather "
                     f"shortcut) {(d.get('tp_unpruned_pruned') or {}).get('measured', float('nan')):.3f} x dense.")
        lines.append("")
    curves = {setting_name(*s): _load_curve(work, setting_name(*s)) for s in settings()}
    if any(curves.values()):
        lines += ["Torch-Pruning's measured latency (x dense) at every global pruning ratio measured "
                  "(`ratio: latency`; params kept in brackets):", ""]
        for name, curve in curves.items():
            pts = sorted((float(k), v) for k, v in curve.items() if float(k) > 0)
            if not pts:
                continue
            lines.append(f"- {name}: " + ", ".join(
                f"{r:.3f}: " + ("invalid" if v.get("error") else
                                f"{v['measured']:.3f} ({100 * v['params'] / dense_params:.0f}%)"
                                if dense_params else f"{v['measured']:.3f}") for r, v in pts))
        lines.append("")
    lines += ["## Acceptance", "",
              "\"docs/peer.md keeps halp-onnx ahead of every Torch-Pruning setting (magnitude and Taylor, global, "
              "with and without `round_to=8`, trunk pruned or kept) at equal measured latency, at 0.5 and 0.7.\" "
              "Ahead means: halp-onnx's fine-tuned top-1 above the Torch-Pruning row's on both test sets; a setting "
              "that cannot reach the latency counts as behind. Computed from the rows above:", ""]
    for t, res in acc.items():
        verdict = {True: "**yes**", False: "**no**", None: "not measured"}[res["ahead"]]
        parts = [f"- at {t}: halp-onnx ahead of every setting: {verdict}"]
        mg = res["margin"]
        if mg["jpeg"] is not None:
            parts.append(f"smallest margin over the settings that reach the latency: {mg['exact']:+.2f} points "
                         f"(exact), {mg['jpeg']:+.2f} points (JPEG; closest: {res['closest']})")
        if res["cannot_reach"]:
            parts.append(f"cannot reach the latency: {', '.join(res['cannot_reach'])}")
            if res["unreached_margin"] is not None:
                parts.append("those fine-tuned at their fastest (slower) point: halp-onnx "
                             + (f"**behind or level on a test set against {', '.join(res['unreached_behind'])}**"
                                if res["unreached_behind"] else "still ahead")
                             + f" (smallest margin {res['unreached_margin']:+.2f} points on the worse test set)")
        if res["behind"]:
            parts.append(f"**halp-onnx is behind (or level) on at least one test set against: "
                         f"{', '.join(res['behind'])}**")
        if res["missing"]:
            parts.append(f"not measured yet: {', '.join(res['missing'])}")
        lines.append("; ".join(parts) + ".")
    lines += ["", "Each figure is one run (one pruning, one fine-tune); the exact subset's standard error is about "
              "±0.9 points, the JPEG test set's about ±0.4 points. Latencies are medians of 7 paired rounds; their "
              "10th-90th percentiles are in brackets in the table.", ""]
    secs = {n: r["seconds"] for n, r in rows.items() if "seconds" in r}
    lines += ["Seconds per row (this machine, 2 cores shared with other work): "
              + ", ".join(f"{n} {s:.0f}" for n, s in secs.items()) + f"; total {sum(secs.values()) / 60:.0f} min "
              "(halp-onnx's compile, in a subprocess: " + ", ".join(
                  f"{r['target']} {r['compile_seconds']:.0f} s" for r in rows.values() if "compile_seconds" in r)
              + ").", ""]
    out = Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "acceptance": acc, "curves": curves}, indent=1,
                                              default=float))
    print("\n".join(lines))
    return 0


def _tp_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch-pruning")
    except Exception:  # noqa: BLE001
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        q = sub.add_parser(name)
        q.add_argument("--work", default="/tmp/halp-peer")
        q.add_argument("--depth", type=int, default=56)
    r = sub.choices["run"]
    r.add_argument("--targets", default=",".join(str(t) for t in TARGETS))
    r.add_argument("--settings", default="all", help="comma-separated Torch-Pruning settings (e.g. "
                   "tp-magnitude-kept-none) or 'all'")
    r.add_argument("--steps", type=int, default=STEPS, help="bisection steps per setting and target")
    r.add_argument("--no-ft", action="store_true", help="one-shot only")
    r.add_argument("--ft-unreached", action="store_true", help="also fine-tune the rows that cannot reach the "
                   "latency, at their fastest point (for information; they count as behind halp-onnx anyway)")
    r.add_argument("--ft-extra", default="", help="extra finetune options (smoke tests only, e.g. '--max-steps 2')")
    r.add_argument("--train-images", type=int, default=10000)
    r.add_argument("--calib-images", type=int, default=2000)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--profile", help="ort-cpu profile JSON (default: the user cache, then hw_profiles/)")
    sub.choices["report"].add_argument("--out", default="docs/peer", help="writes OUT.md")
    sub.choices["report"].add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/: bench_accuracy's helpers
    return run_rows(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
