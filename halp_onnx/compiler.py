"""``halp_onnx.compile``: HALP one-shot, from an ONNX model to a smaller one that meets a latency budget.

``compile`` is a configuration of the pipeline (:mod:`halp_onnx.pipeline`, mode "budget");
:func:`compile_result` turns a finished run into the :class:`CompileResult` the CLI and the reports read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import onnx

from .budget import LatencyBudget
from .passes.descent import with_block_ends
from .passes.importance import Importance
from .passes.rewrite import RewriteResult
from .passes.solve import Round
from .passes.verify import VerifyResult
from .pipeline import PIPELINE, PipelineConfig, PipelineRun
from .pipeline.stages import final_choice

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
    budget: Any = None  # the ResolvedBudget every figure above was computed against
    repair: dict | None = None  # the repair stage's summary (None: no calibration data or --no-repair)
    # the knapsack re-solved over budgets from the smallest achievable to dense: per point budget_ms,
    # predicted_ms, importance (the knapsack objective), importance_share, kept_channels (report_html)
    tradeoff: tuple[dict, ...] | None = None

    @property
    def measured_speedup(self) -> float | None:
        return self.dense_measured_ms / self.measured_ms if self.measured_ms and self.dense_measured_ms else None

    def to_dict(self) -> dict:
        return {
            "source": self.source, "target": self.target, "label": self.label, "latency": self.latency_request,
            "budget_ms": self.budget_ms, "dense_predicted_ms": self.dense_predicted_ms,
            "predicted_ms": self.predicted_ms, "min_predicted_ms": self.min_predicted_ms,
            "dense_measured_ms": self.dense_measured_ms, "measured_ms": self.measured_ms,
            "measured_over_target": (self.measured_ms / self.budget.with_measured(self.dense_measured_ms)
                                     .target_measured_ms
                                     if self.measured_ms and self.dense_measured_ms and self.budget else None),
            "budget": self.budget.to_dict() if self.budget else None,
            "repair": self.repair,
            "measured_speedup": self.measured_speedup,
            "params": list(self.rewrite.params), "macs": list(self.rewrite.macs),
            "importance": self.importance.to_dict(), "solver": self.solver,
            "rounds": [r.to_dict() for r in self.rounds], "groups": [g.to_dict() for g in self.groups],
            "blocks": list(self.blocks), "verification": self.verification.to_dict() if self.verification else None,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "profile": self.profile,
            "warnings": list(self.warnings),
            "tradeoff": list(self.tradeoff) if self.tradeoff is not None else None,
        }


def compile(model, target: str = "ort-cpu", latency: str | float | LatencyBudget = 0.5, *, calib=None,
            mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
            size: int | tuple[int, int] | None = None, calib_samples: int = 2000, calib_batch: int = 32,
            solver: str = "exact",
            min_keep: float = 0.1, allow_removal: bool = True, prune_first: bool = False, threads: int = 1,
            input_shapes: dict | None = None, measure: bool | None = None, measure_result: bool = True,
            progress: bool = False, profile_path=None, device: str = "cpu",
            importance: Importance | None = None, calibrate: int = 3,
            calibrate_tol: float = 0.03, on_stage: Callable[[str, float], None] | None = None,
            exclude: Sequence[str] = (), round_to: int = 1, min_params: float = 0.25,
            strict: bool = False, repair: bool | None = None, reconstruct: bool = True,
            descent: bool = True) -> CompileResult:
    """HALP one-shot: keep the most important channels within a latency budget on ``target``.

    Returns a :class:`CompileResult` whose ``model`` is the verified pruned ONNX model. Where the target
    can be measured here, the result is timed against ``latency`` x the measured dense latency and, if it
    misses by more than ``calibrate_tol``, solved again with the knapsack budget rescaled (at most
    ``calibrate`` times; the best result within the target is kept). ``on_stage(name, seconds)`` is
    called as each pipeline stage ends (the CLI's progress lines). Guards: ``exclude`` (node names or
    globs whose groups stay dense), ``round_to`` (channel multiples), ``min_params`` (warn below this share
    of kept parameters), ``strict`` (refuse a result a guard warns about). With ``calib``, the result is
    repaired (``repair=False`` skips it): the disturbed layers refitted by least squares
    (``reconstruct=False`` skips that part) and trained block by block towards the dense model (with
    torch; ``descent=False`` skips that part), then per-channel statistics matched to the dense model."""
    cfg = PipelineConfig(source=model, mode="budget", input_shapes=input_shapes, target=target,
                         latency=LatencyBudget.parse(latency), threads=threads, measure=measure,
                         profile_path=profile_path, progress=progress, calib=calib, mean=mean, std=std, size=size,
                         calib_samples=calib_samples, calib_batch=calib_batch, device=device, importance=importance,
                         solver=solver, min_keep=min_keep, allow_removal=allow_removal, prune_first=prune_first,
                         measure_result=measure_result, calibrate=calibrate, calibrate_tol=calibrate_tol,
                         exclude=tuple(exclude), round_to=round_to, min_params=min_params, strict=strict,
                         repair=repair, reconstruct=reconstruct, descent=descent)
    return compile_result(PIPELINE.run(cfg, on_stage=on_stage))


def compile_result(run: PipelineRun) -> CompileResult:
    """The report of a finished budget-mode run: per-group widths and costs, per-block latency, staircases."""
    from .profiles.latency import predict
    from .passes.latency_cost import group_costs

    loaded, analysis, tl, plan = run["loaded"], run["analysis"], run["latency"], run["plan"]
    lm, blocks, cm = tl.model, tl.blocks, plan.cost
    selection, result = final_choice(run)
    base_loaded, base_analysis = selection.base or (loaded, analysis)  # iterative HALP: its fine-tuned graph
    measured = run.get("measured")
    widths = selection.widths or plan.dense
    warn = list(tl.warnings)
    if lm.estimated:
        from .profiles.targets import target_status

        _, reason = target_status(lm.target)
        warn.append(f"latencies on {tl.target.name} are analytic estimates, not measurements ({reason})")
    guards = run.get("guards")
    if guards is not None:
        warn.extend(guards.warnings)
    pred_dense = predict(blocks, lm)
    pred_after = predict(blocks, lm, analysis, result.kept, sources=cm.sources)
    rows = []
    group_ms_dense, _ = group_costs(cm, plan.dense, plan.block_ms)
    group_ms_after, _ = group_costs(cm, widths, plan.block_ms)
    for g in analysis.prunable:
        ch = cm.choices.get(g.id)
        if ch is None:
            rows.append(GroupRow(g.id, g.producers, g.size, g.size, 1, "-", 0.0, 0.0, plan.held.get(g.id, "held dense")))
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
    seconds = dict(run.seconds)
    profile = tl.profile.to_dict()
    prof = lm.profile
    if prof is not None:  # where the tables come from: measured here, or measured elsewhere (transferred)
        from .profiles.latency import profile_fingerprint

        profile.update({k: getattr(prof, k) for k in ("name", "precision", "batch", "threads", "estimated",
                                                       "overhead_ms", "block_time", "created", "updated")})
        profile["fingerprint"] = dict(prof.fingerprint)
        here = profile_fingerprint(lm.target, threads=prof.threads) if not lm.estimated else {}
        differs = sorted(k for k, v in prof.match_key().items() if here and here.get(k) != v)
        profile["differs_here"] = differs
        profile["provenance"] = "estimated" if lm.estimated else "transferred" if differs else "measured"
    else:
        profile.update({"fingerprint": None, "differs_here": [], "provenance": "estimated", "analytic_gpu": lm.target.gpu,
                        "precision": lm.target.precision, "batch": lm.target.batch})
    tradeoff = None
    if selection.method == "knapsack" and selection.orders and selection.values:
        from .report_html import tradeoff_curve

        tradeoff = tradeoff_curve(run.config, plan, selection.orders, selection.values)
    return CompileResult(
        model=with_block_ends(base_loaded, base_analysis, result.kept,
                              run["repaired"].model if run.get("repaired") is not None else result.model,
                              result.macs[1]),
        source=loaded.source, target=tl.target.name, label=lm.label, budget_ms=plan.budget.ms,
        latency_request=plan.budget.request, dense_predicted_ms=plan.dense_ms, predicted_ms=pred_after.total_ms,
        min_predicted_ms=plan.min_ms, dense_measured_ms=measured.dense_ms if measured else None,
        measured_ms=measured.ms if measured else None, groups=tuple(rows), importance=run["importance"],
        solver=selection.stats, rounds=selection.rounds, rewrite=result, verification=run["verification"],
        blocks=block_rows, seconds=seconds, profile=profile, warnings=tuple(warn),
        staircases=tuple(stairs), budget=plan.budget,
        repair=run["repaired"].to_dict() if run.get("repaired") is not None else None, tradeoff=tradeoff)
