"""``halp_onnx.compile``: HALP one-shot, from an ONNX model to a smaller one that meets a latency budget.

Stages (each timed in :attr:`CompileResult.seconds`): load + channel groups, latency model (the
target's profile, measured on demand, or the analytic model for a GPU not here), importance (Taylor
with calibration data, else magnitude), knapsack rounds, rewrite, verification, measurement.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from .errors import HalpError
from .passes.channel_groups import ChannelAnalysis
from .passes.importance import Importance, magnitude_importance
from .passes.knapsack import KnapsackItem, solve
from .passes.latency_cost import CostModel, build_cost_model, group_costs, ranked_values, total_latency
from .passes.load import LoadedModel
from .passes.rewrite import RewriteResult, rewrite
from .passes.verify import VerifyResult, verify

STAGE = "compile"
SOLVERS = ("exact", "augmented")


def parse_latency(value: str | float) -> tuple[str, float]:
    """``0.5`` (share of the dense model's predicted latency) or ``3.2ms`` (absolute)."""
    text = str(value).strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms|x|%)?", text)
    if not m:
        raise HalpError(f"--latency {value!r}: expected a share of the dense latency (0.5, 50%) or a time (3.2ms)",
                        stage=STAGE)
    number, unit = float(m.group(1)), m.group(2)
    if unit == "ms":
        if number <= 0:
            raise HalpError(f"--latency {value!r}: must be positive", stage=STAGE)
        return "ms", number
    share = number / 100 if unit == "%" else number
    if not 0 < share <= 1:
        raise HalpError(f"--latency {value!r}: a share must be in (0, 1] (or give a time such as 3.2ms)", stage=STAGE)
    return "share", share


@dataclass(frozen=True)
class Round:
    index: int
    budget_ms: float  # what the knapsack was given (corrected between rounds)
    predicted_ms: float  # whole model at the solution's widths
    value: float
    changed_groups: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class GroupRow:
    group: int
    producers: tuple[str, ...]
    size: int
    kept: int
    step: int
    allowed: str  # "min..max step s" summary
    latency_dense_ms: float
    latency_ms: float
    frozen: str = ""

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["producers"] = list(self.producers)
        return d


@dataclass(frozen=True)
class CompileResult:
    """Everything ``compile`` decided and measured; ``model`` is the verified pruned ONNX."""

    model: onnx.ModelProto
    source: str
    target: str
    label: str  # "measured" (ort-cpu/torch-cuda/TensorRT tables) | "estimated" (analytic)
    budget_ms: float
    latency_request: str
    dense_predicted_ms: float
    predicted_ms: float
    min_predicted_ms: float
    dense_measured_ms: float | None
    measured_ms: float | None
    groups: tuple[GroupRow, ...]
    importance: Importance
    solver: dict[str, Any]
    rounds: tuple[Round, ...]
    rewrite: RewriteResult
    verification: VerifyResult | None
    blocks: tuple[dict, ...]  # per block: node, op, widths and latency before/after
    seconds: dict[str, float]
    profile: dict[str, Any]
    warnings: tuple[str, ...] = field(default=())
    staircases: tuple[dict, ...] = field(default=())  # latency vs c_out of the most expensive layers

    @property
    def measured_speedup(self) -> float | None:
        return self.dense_measured_ms / self.measured_ms if self.measured_ms and self.dense_measured_ms else None

    def to_dict(self) -> dict:
        return {
            "source": self.source, "target": self.target, "label": self.label, "latency": self.latency_request,
            "budget_ms": self.budget_ms, "dense_predicted_ms": self.dense_predicted_ms,
            "predicted_ms": self.predicted_ms, "min_predicted_ms": self.min_predicted_ms,
            "dense_measured_ms": self.dense_measured_ms, "measured_ms": self.measured_ms,
            "measured_over_target": (self.measured_ms / (self.budget_ms / self.dense_predicted_ms
                                                          * self.dense_measured_ms)
                                     if self.measured_ms and self.dense_measured_ms else None),
            "measured_speedup": self.measured_speedup,
            "params": list(self.rewrite.params), "macs": list(self.rewrite.macs),
            "importance": self.importance.to_dict(), "solver": self.solver,
            "rounds": [r.to_dict() for r in self.rounds], "groups": [g.to_dict() for g in self.groups],
            "blocks": list(self.blocks), "verification": self.verification.to_dict() if self.verification else None,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "profile": self.profile,
            "warnings": list(self.warnings),
        }


# ---------------------------------------------------------------------------------------- calibration
def calibration_batches(loaded: LoadedModel, calib: str | os.PathLike | dict | np.ndarray, *,
                        mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                        size: int | None = None, samples: int = 2000, batch_size: int = 32, seed: int = 0):
    """(inputs, labels) batches from a calibration source:

    * an ``.npz`` whose keys are the model's input names (preprocessed arrays, batch first) and
      optionally ``labels``; or an ``.npz`` with ``images`` (uint8 N x H x W x C) and optional ``labels``;
    * a folder of images (class subfolders give labels), preprocessed with ``mean``/``std``/``size``.
    """
    from .data import load_data, to_nchw

    names = [i.name for i in loaded.model.graph.input if i.name not in {t.name for t in loaded.model.graph.initializer}]
    labels = None
    arrays: dict[str, np.ndarray] | None = None
    if isinstance(calib, dict):
        arrays = {k: np.asarray(v) for k, v in calib.items() if k != "labels"}
        labels = calib.get("labels")
    elif isinstance(calib, np.ndarray):
        arrays = {names[0]: calib}
    else:
        path = os.fspath(calib)
        if path.endswith(".npz") and os.path.isfile(path):
            with np.load(path, allow_pickle=False) as z:
                if all(n in z.files for n in names):
                    arrays = {n: z[n] for n in names}
                    labels = z["labels"] if "labels" in z.files else None
        if arrays is None:
            data = load_data(path, size=size)
            n = len(data)
            take = np.random.default_rng(seed).permutation(n)[: min(samples, n)]
            imgs = data.take(take) if hasattr(data, "take") else np.asarray(data.images)[take]
            arrays = {names[0]: to_nchw(imgs, mean, std)}
            labels = data.labels[take] if data.labels is not None else None
            samples = len(take)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise HalpError(f"--calib: no array for model input(s) {missing} (keys: {sorted(arrays)})", stage=STAGE)
    n = min(len(next(iter(arrays.values()))), samples)
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) < n:
            raise HalpError(f"--calib: {len(labels)} labels for {n} inputs", stage=STAGE)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield ({k: np.ascontiguousarray(v[start:stop]).astype(np.float32) if v.dtype.kind == "f" else v[start:stop]
                for k, v in arrays.items()}, None if labels is None else labels[start:stop])


# ---------------------------------------------------------------------------------------- solving
def first_layer_groups(analysis: ChannelAnalysis, blocks) -> dict[int, str]:
    """Groups fed by the first GEMM-like block (the stem conv): kept dense by default."""
    for b in blocks:
        if b.signature.op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            lab = analysis.labels.get(b.out_tensor)
            if lab is None:
                return {}
            ids = lab.ids[lab.ids >= 0]
            return {int(g): f"output of the first layer {b.node} (kept by default; --prune-first to allow)"
                    for g in np.unique(analysis.channel_group[ids])}
    return {}


def solve_rounds(cm: CostModel, values: dict[int, np.ndarray], block_ms: Callable, overhead_ms: float,
                 budget_ms: float, *, solver: str = "exact", max_evals: int = 24, tol: float = 0.005,
                 start: dict[int, int] | None = None, compare: bool = True
                 ) -> tuple[dict[int, int], list[Round], dict[str, Any]]:
    """Solve for the budget with every block's other side priced at the last solution's widths.

    A block's latency depends on both of its widths, so the knapsack (which prices one group at a
    time) is re-solved with the neighbours' widths updated; the budget handed to the knapsack is then
    searched (bracketing + bisection) so that the whole-model prediction at the solution's widths lands
    just under the real budget. The most valuable solution whose prediction fits is kept. ``start``:
    the widths the first solve prices neighbours at (default dense)."""
    state = {"widths": dict(start) if start is not None else {g: ch.widths[-1] for g, ch in cm.choices.items()},
             "items": None, "avail": None, "solve_s": 0.0}
    rounds: list[Round] = []
    best: list = []  # [value, pred, widths]
    index = {g: {w: j for j, w in enumerate(ch.widths)} for g, ch in cm.choices.items()}

    def evaluate(internal: float) -> float:
        widths = state["widths"]
        changed = 0
        for _ in range(3):  # settle the neighbours' widths at this knapsack budget
            per_group, const = group_costs(cm, widths, block_ms)
            items = [KnapsackItem(g, np.asarray(ch.widths), values[g], per_group[g])
                     for g, ch in cm.choices.items()]
            floor = sum(float(c.min()) for c in per_group.values())
            avail = max(internal - const - overhead_ms, floor)
            sol = solve(items, avail, solver=solver)
            state["solve_s"] += sol.seconds
            state["items"], state["avail"] = items, avail
            new = {g: int(w) for g, w in sol.widths.items()}
            changed = sum(1 for g in new if new[g] != widths[g])
            widths = new
            if not changed:
                break
        state["widths"] = widths
        pred = total_latency(cm, widths, block_ms, overhead_ms)
        value = float(sum(values[g][index[g][w]] for g, w in widths.items()))
        rounds.append(Round(len(rounds), internal, pred, value, changed))
        if pred <= budget_ms * (1 + 1e-9) and (not best or value > best[0] + 1e-12):
            best[:] = [value, pred, dict(widths)]
        return pred

    lo = hi = None
    b = budget_ms
    while len(rounds) < max_evals:
        pred = evaluate(b)
        if pred <= budget_ms:
            lo = b
            if pred >= budget_ms * (1 - tol):
                break
        else:
            hi = b
        if lo is not None and hi is not None:
            b = (lo + hi) / 2
        elif lo is not None:  # still under the budget: hand the knapsack more
            b = lo * min(2.0, max(1.02, budget_ms / max(pred, 1e-12)))
        else:  # over: hand it less
            b = hi * max(0.5, min(0.98, budget_ms / max(pred, 1e-12)))
        if lo is not None and hi is not None and hi - lo <= 1e-4 * budget_ms:
            break
    if not best:  # fall back to each group's smallest width, feasible by construction
        w = {g: ch.widths[0] for g, ch in cm.choices.items()}
        best[:] = [float(sum(values[g][0] for g in cm.choices)), total_latency(cm, w, block_ms, overhead_ms), w]
    items, avail = state["items"], state["avail"]
    stats: dict[str, Any] = {"solver": solver, "rounds": len(rounds), "solve_seconds": round(state["solve_s"], 4),
                             "items": len(items or []), "choices": int(sum(len(it.widths) for it in items or []))}
    if items and compare:  # both solvers on the last instance: the exact one must not lose
        ex = solve(items, avail, solver="exact")
        au = solve(items, avail, solver="augmented")
        stats.update({"exact_value": ex.value, "augmented_value": au.value, "exact_seconds": ex.seconds,
                      "augmented_seconds": au.seconds})
    return best[2], rounds, stats


# ---------------------------------------------------------------------------------------- compile
def compile(model, target: str = "ort-cpu", latency: str | float = 0.5, *, calib=None,
            mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
            size: int | None = None, calib_samples: int = 2000, calib_batch: int = 32, solver: str = "exact",
            min_keep: float = 0.1, allow_removal: bool = True, prune_first: bool = False, threads: int = 1,
            input_shapes: dict | None = None, measure: bool | None = None, measure_result: bool = True,
            progress: bool = False, profile_path=None, device: str = "cpu",
            importance: Importance | None = None, calibrate: int = 3,
            calibrate_tol: float = 0.03) -> CompileResult:
    """HALP one-shot: keep the most important channels within a latency budget on ``target``.

    Returns a :class:`CompileResult` whose ``model`` is the verified pruned ONNX model. Where the target
    can be measured here, the result is timed against ``latency`` x the measured dense latency and, if it
    misses by more than ``calibrate_tol``, solved again with the knapsack budget rescaled (at most
    ``calibrate`` times; the best result within the target is kept)."""
    from .api import inspect, require_prunable
    from .profiles.backends import best_of_medians, get_backend
    from .profiles.blocks import model_blocks
    from .profiles.latency import latency_model, predict
    from .profiles.targets import target_status

    if solver not in SOLVERS:
        raise HalpError(f"--solver {solver!r}: expected one of {', '.join(SOLVERS)}", stage=STAGE)
    if not 0 <= min_keep < 1:
        raise HalpError(f"--min-keep {min_keep}: expected a share in [0, 1)", stage=STAGE)
    kind, amount = parse_latency(latency)
    seconds: dict[str, float] = {}
    warn: list[str] = []

    t0 = time.perf_counter()
    loaded, analysis = inspect(model, input_shapes)
    require_prunable(analysis, loaded.source)
    seconds["load+analyze"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from .profiles.targets import get_target

    tgt = get_target(target)
    blocks = model_blocks(loaded, analysis, precision=tgt.precision)
    run = latency_model(loaded, analysis, tgt, threads=threads, measure=measure, progress=progress,
                        blocks=blocks, profile_path=profile_path)
    lm = run.model
    warn.extend(run.warnings)
    seconds["latency-model"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if importance is None:
        if calib is not None:
            from .passes.importance import taylor_importance

            batches = calibration_batches(loaded, calib, mean=mean, std=std, size=size, samples=calib_samples,
                                          batch_size=calib_batch)
            importance = taylor_importance(loaded, analysis, batches, device=device)
        else:
            importance = magnitude_importance(
                loaded, analysis, note="magnitude fallback (no calibration data): L2 norm per channel, "
                                       "normalised per group")
    seconds["importance"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    block_ms = lru_cache(maxsize=None)(lambda sig, ci, co: lm.block_ms(sig, ci, co))
    frozen = {} if prune_first else first_layer_groups(analysis, blocks)
    cm = build_cost_model(analysis, blocks, lm.step, min_keep=min_keep, allow_removal=allow_removal, frozen=frozen)
    if not cm.choices:
        raise HalpError(f"{loaded.source}: every prunable group is held dense ({'; '.join(frozen.values())})",
                        stage=STAGE)
    dense = {g: ch.size for g, ch in cm.choices.items()}
    dense_ms = total_latency(cm, dense, block_ms, lm.overhead_ms)
    smallest = {g: ch.widths[0] for g, ch in cm.choices.items()}
    min_ms = total_latency(cm, smallest, block_ms, lm.overhead_ms)
    budget = amount * dense_ms if kind == "share" else amount
    request = f"{amount:g} x dense ({budget:.4g} ms)" if kind == "share" else f"{amount:g} ms"
    if budget < min_ms:
        raise HalpError(f"latency budget {budget:.4g} ms ({budget / dense_ms:.3f} x dense {dense_ms:.4g} ms) is below "
                        f"the smallest achievable {min_ms:.4g} ms ({min_ms / dense_ms:.3f} x) on {tgt.name} with "
                        f"min-keep {min_keep:g}", stage=STAGE)
    orders, values = {}, {}
    for g, ch in cm.choices.items():
        orders[g], values[g] = ranked_values(analysis, importance.scores, ch)
    def solve_for(solver_budget: float):
        if solver_budget >= dense_ms:
            return dense, [], {"solver": solver, "rounds": 0, "note": "budget >= dense latency"}
        return solve_rounds(cm, values, block_ms, lm.overhead_ms, solver_budget, solver=solver)

    def rewrite_for(w: dict[int, int]):
        keep = {g: np.sort(orders[g][:n]) for g, n in w.items() if n < cm.choices[g].size}
        return rewrite(loaded, analysis, keep)

    widths, rounds, stats = solve_for(budget)
    seconds["knapsack"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = rewrite_for(widths)
    seconds["rewrite"] = time.perf_counter() - t0

    dense_measured = measured = None
    calibration: list[dict] = []
    available, reason = target_status(lm.target)
    if measure_result and available and not lm.estimated:
        # closed loop: the table sets the widths, the measurement checks them; where the result misses the
        # measured target, the knapsack budget is rescaled by the miss and the model solved again
        t0 = time.perf_counter()
        backend = get_backend(lm.target, threads=threads)

        def timed(model) -> float:
            return best_of_medians(backend, model, 2.1)

        dense_measured = timed(loaded.model)
        target_ms = amount * dense_measured if kind == "share" else amount
        measured = timed(result.model)
        solver_budget = budget
        candidates = [(measured, widths, rounds, stats, result)]
        calibration.append({"knapsack_budget_ms": solver_budget, "measured_ms": measured, "target_ms": target_ms})
        for _ in range(calibrate):
            miss = measured / target_ms
            if 1 - calibrate_tol <= miss <= 1.0 + calibrate_tol / 3:
                break
            solver_budget = min(max(solver_budget / miss, min_ms), dense_ms)
            w2, r2, s2 = solve_for(solver_budget)
            if w2 == candidates[-1][1]:
                break
            res2 = rewrite_for(w2)
            measured = timed(res2.model)
            calibration.append({"knapsack_budget_ms": solver_budget, "measured_ms": measured, "target_ms": target_ms})
            candidates.append((measured, w2, r2, s2, res2))
        fits = [c for c in candidates if c[0] <= target_ms * (1 + calibrate_tol / 3)]
        pick = max(fits, key=lambda c: c[0]) if fits else min(candidates, key=lambda c: c[0])
        measured, widths, rounds, stats, result = pick
        stats = dict(stats, calibration=calibration)
        seconds["measure"] = time.perf_counter() - t0
    elif lm.estimated:
        warn.append(f"latencies on {tgt.name} are analytic estimates, not measurements ({reason})")
    t0 = time.perf_counter()
    check = verify(loaded, analysis, result.kept, result.model)
    seconds["verify"] = time.perf_counter() - t0
    pred_dense = predict(blocks, lm)
    pred_after = predict(blocks, lm, analysis, result.kept)

    rows = []
    group_ms_dense, _ = group_costs(cm, dense, block_ms)
    group_ms_after, _ = group_costs(cm, widths, block_ms)
    for g in analysis.prunable:
        ch = cm.choices.get(g.id)
        if ch is None:
            rows.append(GroupRow(g.id, g.producers, g.size, g.size, 1, "-", 0.0, 0.0, frozen.get(g.id, "held dense")))
            continue
        j_dense = len(ch.widths) - 1
        j = list(ch.widths).index(widths[g.id])
        allowed = f"{ch.widths[0]}..{ch.size} step {ch.step}"
        rows.append(GroupRow(g.id, g.producers, g.size, widths[g.id], ch.step, allowed,
                             float(group_ms_dense[g.id][j_dense]), float(group_ms_after[g.id][j])))
    stairs = []
    for a, b in sorted(zip(pred_dense.blocks, pred_after.blocks), key=lambda ab: -ab[0].ms)[:3]:
        blk = next(x for x in blocks if x.node == a.node)
        sig = blk.signature
        cs = list(range(1, a.c_out + 1, max(1, a.c_out // 160)))
        table = lm.profile.tables.get(sig.key()) if lm.profile is not None else None
        pts = sorted((int(k.split(",")[1]), v) for k, v in (table.points.items() if table else ())
                     if int(k.split(",")[0]) == a.c_in)
        stairs.append({"node": a.node, "c_in": a.c_in, "c_out": cs, "ms": [lm.block_ms(sig, a.c_in, c) for c in cs],
                       "measured_c_out": [c for c, _ in pts], "measured_ms": [
                           lm.block_ms(sig, a.c_in, c) for c, _ in pts], "kept": b.c_out})
    block_rows = tuple({"node": a.node, "op": a.op, "c_in": [a.c_in, b.c_in], "c_out": [a.c_out, b.c_out],
                        "ms": [a.ms, b.ms]} for a, b in zip(pred_dense.blocks, pred_after.blocks))
    return CompileResult(
        model=result.model, source=loaded.source, target=tgt.name, label=lm.label, budget_ms=budget,
        latency_request=request, dense_predicted_ms=dense_ms, predicted_ms=pred_after.total_ms,
        min_predicted_ms=min_ms, dense_measured_ms=dense_measured, measured_ms=measured, groups=tuple(rows),
        importance=importance, solver=stats, rounds=tuple(rounds), rewrite=result, verification=check,
        blocks=block_rows, seconds=seconds, profile=run.to_dict(), warnings=tuple(warn), staircases=tuple(stairs))
