"""Predict a finished tools/bench_fidelity.py run's variants again with the code here, against that run's
measurements: what a change to the fitting or the prediction does to the errors, with nothing re-timed
(the host's drift between two benchmark runs is larger than most such changes).

    python tools/fidelity_repredict.py --work /tmp/s20/fid --models cifar_resnet56,densenet121

``--work``: the folder bench_fidelity.py's ``--work`` left (``<model>-fidelity.json`` and
``<model>-ort-cpu.json``); the variants are made again (``prune --criterion random``, seed 0, as there).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--models", required=True)
    args = ap.parse_args()
    from bench_fidelity import TUNING
    from halp_onnx import prune
    from halp_onnx.api import inspect
    from halp_onnx.profiles.blocks import model_blocks
    from halp_onnx.profiles.latency import latency_model, predict

    work = Path(args.work)
    sets: dict[str, tuple[list[float], list[float]]] = {"tuning": ([], []), "held-out": ([], [])}
    ratio_sets: dict[str, tuple[list[float], list[float]]] = {"tuning": ([], []), "held-out": ([], [])}
    for name in args.models.split(","):
        d = json.loads((work / f"{name}-fidelity.json").read_text())
        new, old = [], []
        ratios: dict[str, tuple[float, float, float]] = {}  # variant -> (ms now, measured ratio, ratio in the run)
        for r in d["rows"]:
            if r.get("predicted_ms") is None or r.get("measured_ms") is None:
                continue
            v = r["variant"]
            model = d["path"] if v == "dense" else prune(d["path"], float(v.split()[1]), criterion="random",
                                                         seed=0).model
            loaded, an = inspect(model)
            blocks = model_blocks(loaded, an)
            run = latency_model(loaded, an, "ort-cpu", measure=False, blocks=blocks,
                                profile_path=work / f"{name}-ort-cpu.json")
            pred = predict(blocks, run.model).total_ms
            new.append(abs(pred - r["measured_ms"]) / r["measured_ms"])
            old.append(abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"])
            ratios[v] = (pred, r["measured_ratio"], r.get("predicted_ratio") or 0.0)
        which = "tuning" if name in TUNING else "held-out"
        s = sets[which]
        s[0].extend(new)
        s[1].extend(old)
        # the variants' ratios to dense, predicted against measured: the per-model level taken out
        dense = ratios.get("dense", (0.0, 1.0, 1.0))[0]
        rn = [abs(p / dense / m - 1) for v, (p, m, _) in ratios.items() if v != "dense" and dense]
        ro = [abs(q / m - 1) for v, (_, m, q) in ratios.items() if v != "dense" and q]
        ratio_sets[which][0].extend(rn)
        ratio_sets[which][1].extend(ro)
        print(f"{name:22} median error now {100 * np.median(new):5.1f}%, in the run {100 * np.median(old):5.1f}%; "
              f"on the ratios now {100 * np.median(rn) if rn else float('nan'):5.1f}%, in the run "
              f"{100 * np.median(ro) if ro else float('nan'):5.1f}%", flush=True)
    for suffix, what, groups in (("", "points", sets), (", ratios to dense", "variants", ratio_sets)):
        for k, (new, old) in groups.items():
            if new:
                print(f"{k}{suffix}: {len(new)} {what}, now median {100 * np.median(new):.1f}% p90 "
                      f"{100 * np.percentile(new, 90):.1f}%; in the run {100 * np.median(old):.1f}% / "
                      f"{100 * np.percentile(old, 90):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
