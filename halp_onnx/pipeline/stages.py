"""The stages, and the one place their order is written (:data:`PIPELINE`).

    load -> channel-groups -> latency-model -> budget -> importance -> select -> rewrite -> measure -> verify
         -> repair -> guard

``prune`` (mode "ratio") runs load, channel-groups, importance (the criterion's scores), select (a
share of every group), rewrite, verify. ``compile`` (mode "budget") runs them all: the knapsack
selects, and on a target that runs here the closed loop (measure) times the result and re-solves.
``compile --iterative`` (mode "iterative") selects by pruning while fine-tuning (torch bridge), and
rewrites and verifies the fine-tuned graph. Each stage is a function ``(config, results) -> result``.
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from ..errors import HalpError
from ..passes.channel_groups import ChannelAnalysis, analyze
from ..passes.importance import Importance, magnitude_importance
from ..passes.latency_cost import build_cost_model, pin_removal, ranked_values, total_latency
from ..passes.load import LoadedModel, load
from ..passes.rewrite import RewriteResult, rewrite
from ..passes.select import channel_scores, keep_by_ratio
from ..passes.solve import Round, first_layer_groups, solve_rounds
from ..passes.verify import verify
from ..profiles.folding import block_sources
from .config import PipelineConfig
from .results import BudgetPlan, Guards, Measurement, Selection, TargetLatency
from .runner import Pipeline, PipelineRun, Stage

Results = Mapping[str, Any]


def require_prunable(analysis: ChannelAnalysis, source: str) -> None:
    """Refuse a model where nothing can be pruned, naming the first reason."""
    if analysis.prunable:
        return
    first = next((g.reasons[0] for g in analysis.groups if g.reasons), "the model has no channels to prune")
    raise HalpError(f"{source}: nothing can be pruned: every channel group is frozen ({first})", stage="channel-groups")


def excluded_groups(analysis: ChannelAnalysis, patterns: tuple[str, ...]) -> dict[int, str]:
    """Prunable groups that ``--exclude`` keeps dense: a pattern (node name or shell glob) matching one of
    the group's producers or consumers. A pattern that matches no node of the model is an error."""
    import fnmatch

    if not patterns:
        return {}
    nodes = {n for g in analysis.groups for n in (*g.producers, *g.consumers)}
    out: dict[int, str] = {}
    for pat in patterns:
        hits = {n for n in nodes if fnmatch.fnmatchcase(n, pat)}
        if not hits:
            raise HalpError(f"--exclude {pat!r}: matches no node that produces or consumes prunable channels",
                            stage="select")
        for g in analysis.prunable:
            names = [n for n in (*g.producers, *g.consumers) if n in hits]
            if names and g.id not in out:
                out[g.id] = f"kept dense by --exclude {pat} (node {names[0]})"
    return out


# ---------------------------------------------------------------------------------------- stages
def _load(cfg: PipelineConfig, r: Results) -> LoadedModel:
    return load(cfg.source, cfg.input_shapes)


def _channel_groups(cfg: PipelineConfig, r: Results) -> ChannelAnalysis:
    analysis = analyze(r["loaded"])
    require_prunable(analysis, r["loaded"].source)
    return analysis


def _latency_model(cfg: PipelineConfig, r: Results) -> TargetLatency:
    from ..profiles.blocks import model_blocks
    from ..profiles.latency import latency_model
    from ..profiles.targets import get_target

    assert cfg.target is not None
    tgt = get_target(cfg.target)
    blocks = model_blocks(r["loaded"], r["analysis"], precision=tgt.precision, fusion=tgt.fusion)
    run = latency_model(r["loaded"], r["analysis"], tgt, threads=cfg.threads, measure=cfg.measure,
                        progress=cfg.progress, blocks=blocks, profile_path=cfg.profile_path)
    return TargetLatency(tgt, tuple(blocks), run.model, run)


def _budget(cfg: PipelineConfig, r: Results) -> BudgetPlan:
    loaded, analysis, tl = r["loaded"], r["analysis"], r["latency"]
    lm = tl.model
    assert cfg.latency is not None
    block_ms = lru_cache(maxsize=None)(lambda sig, ci, co: lm.block_ms(sig, ci, co))
    held = {} if cfg.prune_first else first_layer_groups(analysis, tl.blocks)
    held.update({g: why for g, why in excluded_groups(analysis, cfg.exclude).items() if g not in held})
    cm = build_cost_model(analysis, tl.blocks, lm.step, min_keep=cfg.min_keep, allow_removal=cfg.allow_removal,
                          frozen=held, round_to=cfg.round_to, block_ms=block_ms,
                          sources=block_sources(loaded.model.graph, tl.blocks), align=lm.align)
    if not cm.choices:
        raise HalpError(f"{loaded.source}: every prunable group is held dense ({'; '.join(held.values())})",
                        stage="compile")
    dense = {g: ch.size for g, ch in cm.choices.items()}
    dense_ms = total_latency(cm, dense, block_ms, lm.overhead_ms)
    smallest = {g: ch.widths[0] for g, ch in cm.choices.items()}
    min_ms = total_latency(cm, smallest, block_ms, lm.overhead_ms)
    budget = cfg.latency.resolve(dense_ms)
    if budget.ms < min_ms:
        raise budget.infeasible(min_ms, tl.target.name, cfg.min_keep)
    return BudgetPlan(cm, held, budget, dense, min_ms, block_ms, lm.overhead_ms)


def _importance(cfg: PipelineConfig, r: Results) -> Importance:
    import time

    loaded, analysis = r["loaded"], r["analysis"]
    if cfg.importance is not None:
        return cfg.importance
    if cfg.mode == "ratio":
        t0 = time.perf_counter()
        scores = channel_scores(loaded, analysis, cfg.criterion, cfg.seed)
        return Importance(scores=scores, method=cfg.criterion, loss=None, batches=0, samples=0,
                          seconds=time.perf_counter() - t0, note=f"{cfg.criterion} scores (prune --criterion)")
    if cfg.calib is not None:
        from ..passes.calibration import calibration_batches
        from ..passes.importance import taylor_importance

        batches = calibration_batches(loaded, cfg.calib, mean=cfg.mean, std=cfg.std,
                                      size=cfg.size,
                                      samples=cfg.calib_samples, batch_size=cfg.calib_batch)
        return taylor_importance(loaded, analysis, batches, device=cfg.device)
    return magnitude_importance(loaded, analysis, note="magnitude fallback (no calibration data): L2 norm per "
                                                       "channel, normalised per group")


def solve_budget(cfg: PipelineConfig, plan: BudgetPlan, orders: dict, values: dict, budget_ms: float) -> Selection:
    """One knapsack solve (with width rounds) for ``budget_ms``, as a Selection; blocks priced at the
    widths the importance ``orders`` leave them (``CostModel.with_orders``)."""
    cm = plan.cost.with_orders(orders) if orders else plan.cost
    rounds: list[Round]
    if budget_ms >= plan.dense_ms:
        widths, rounds, stats = dict(plan.dense), [], {"solver": cfg.solver, "rounds": 0,
                                                       "note": "budget >= dense latency"}
    else:
        widths, rounds, stats = solve_rounds(cm, values, plan.block_ms, plan.overhead_ms, budget_ms,
                                             solver=cfg.solver)
    keep = {g: np.sort(orders[g][:n]) for g, n in widths.items() if n < cm.choices[g].size}
    return Selection(keep, "knapsack", widths, tuple(rounds), stats, orders, values)


def solve_live(cfg: PipelineConfig, plan: BudgetPlan, loaded: LoadedModel, analysis: ChannelAnalysis,
               orders: dict, values: dict, budget_ms: float, *, tries: int = 4) -> Selection:
    """:func:`solve_budget`, refusing a solution whose removed branches together cut an output off from
    the inputs (passes.liveness): the removed groups that bring the outputs back are kept (at least at
    their smallest widths) and the knapsack solves again."""
    from ..passes.liveness import live_outputs, restorer

    sel = solve_budget(cfg, plan, orders, values, budget_ms)
    dense_live: frozenset[str] | None = None
    pinned: list[int] = []
    for _ in range(tries):
        removed = sorted(g for g, w in (sel.widths or {}).items() if w == 0)
        if not removed:
            break
        if dense_live is None:
            dense_live = live_outputs(loaded.model)
        current, cm = sel, plan.cost

        def alive_without(restored: frozenset[int]) -> bool:
            keep = dict(current.keep)
            for g in restored:
                w = cm.choices[g].widths[1]
                if w < cm.choices[g].size:
                    keep[g] = np.sort(orders[g][:w])
                else:
                    keep.pop(g, None)
            return dense_live <= live_outputs(rewrite(loaded, analysis, keep, check=False).model, like=loaded.model)

        if alive_without(frozenset()):
            break
        # the cheapest branches first: the restorer brings back the earliest it can
        back = restorer(sorted(removed, key=lambda g: (analysis.groups[g].macs, g)), alive_without)
        if not back:
            break  # the guard refuses what is left
        pinned.extend(back)
        plan = replace(plan, cost=pin_removal(plan.cost, pinned))
        trimmed = {k: (v[1:] if k in pinned else v) for k, v in values.items()}  # the width-0 choice is gone
        sel = solve_budget(cfg, plan, orders, trimmed, budget_ms)
    if pinned:
        widths = dict(sel.widths or {})
        ordered = plan.cost.with_orders(orders)
        pred = total_latency(ordered, widths, plan.block_ms, plan.overhead_ms)
        if pred > budget_ms * (1 + 1e-6):
            smallest = {g: ch.widths[0] for g, ch in plan.cost.choices.items()}
            floor = total_latency(ordered, smallest, plan.block_ms, plan.overhead_ms)
            raise HalpError(f"{loaded.source}: latency budget {budget_ms:.4g} ms cannot be met with the outputs "
                            f"still depending on the inputs: keeping the branches they need ({len(pinned)} "
                            f"group(s)), the smallest achievable is {floor:.4g} ms "
                            f"({floor / plan.dense_ms:.3f} x dense)", stage="compile")
    # the values stay those of the unpinned plan, which the closed loop solves with again
    return replace(sel, values=values, stats={**sel.stats, "kept_for_liveness": pinned}) if pinned else sel


def _select(cfg: PipelineConfig, r: Results) -> Selection:
    analysis = r["analysis"]
    if cfg.mode == "ratio":
        held = excluded_groups(analysis, cfg.exclude)
        return Selection(keep_by_ratio(analysis, r["importance"].scores, cfg.ratio, held=held,
                                       round_to=cfg.round_to), "ratio")
    if cfg.mode == "iterative":  # the torch bridge's settings carry the training loop (torch.halp)
        if cfg.iterative is None or not callable(getattr(cfg.iterative, "select", None)):
            raise HalpError("iterative mode needs the torch bridge's IterativeSettings (training data) in "
                            "PipelineConfig.iterative", stage="select")
        return cfg.iterative.select(cfg, r)
    plan: BudgetPlan = r["plan"]
    orders, values = {}, {}
    for g, ch in plan.cost.choices.items():
        orders[g], values[g] = ranked_values(analysis, r["importance"].scores, ch)
    return solve_live(cfg, plan, r["loaded"], analysis, orders, values, plan.budget.ms)


def base_of(r: Results, selection: Selection) -> tuple[LoadedModel, ChannelAnalysis]:
    """The graph a selection applies to: the input model's, or the fine-tuned one of iterative HALP."""
    return selection.base if selection.base is not None else (r["loaded"], r["analysis"])


def _rewrite(cfg: PipelineConfig, r: Results) -> RewriteResult:
    loaded, analysis = base_of(r, r["selection"])
    return rewrite(loaded, analysis, r["selection"].keep, check=cfg.check)


def _measure(cfg: PipelineConfig, r: Results) -> Measurement | None:
    """Closed loop: the table sets the widths, the measurement checks them. Each candidate is timed
    alternately with the dense model in this process (the median of per-round ratios, robust to a loaded
    machine); where it misses the target, the knapsack budget is rescaled by the miss and solved again."""
    from ..profiles.backends import get_backend
    from ..profiles.targets import target_status
    from ..profiles.timing import PairedTiming, paired_timing

    lm = r["latency"].model
    available, _ = target_status(lm.target)
    if not available or lm.estimated:
        return None
    loaded, plan, sel = r["loaded"], r["plan"], r["selection"]
    backend = get_backend(lm.target, threads=cfg.threads)
    share = plan.budget.budget.share

    def timed(model) -> PairedTiming:
        return paired_timing(backend, loaded.model, model, rounds=7, budget_s=4.2)

    def miss_of(pt: PairedTiming, dense_ms: float) -> float:  # measured / target
        if share is not None:
            return pt.ratio / share
        return pt.ratio * dense_ms / plan.budget.budget.amount

    result = r["rewritten"]
    pt = timed(result.model)
    dense_samples = [pt.reference_ms]
    solver_budget = plan.budget.ms
    candidates = [(pt, sel, result)]
    calibration = [{"knapsack_budget_ms": solver_budget, "ratio": pt.ratio, "measured_ms": pt.ms,
                    "dense_ms": pt.reference_ms}]
    tol = cfg.calibrate_tol
    for _ in range(cfg.calibrate):
        miss = miss_of(pt, float(np.median(dense_samples)))
        if 1 - tol <= miss <= 1.0 + tol / 3:
            break
        solver_budget = min(max(solver_budget / miss, plan.min_ms), plan.dense_ms)
        sel2 = solve_live(cfg, plan, loaded, r["analysis"], sel.orders or {}, sel.values or {}, solver_budget)
        if sel2.widths == candidates[-1][1].widths:
            break
        res2 = rewrite(loaded, r["analysis"], sel2.keep, check=cfg.check)
        pt = timed(res2.model)
        dense_samples.append(pt.reference_ms)
        calibration.append({"knapsack_budget_ms": solver_budget, "ratio": pt.ratio, "measured_ms": pt.ms,
                            "dense_ms": pt.reference_ms})
        candidates.append((pt, sel2, res2))
    dense_ms = float(np.median(dense_samples))
    fits = [c for c in candidates if miss_of(c[0], dense_ms) <= 1 + tol / 3]
    best, chosen, res = max(fits, key=lambda c: c[0].ratio) if fits else min(candidates, key=lambda c: c[0].ratio)
    chosen = Selection(chosen.keep, chosen.method, chosen.widths, chosen.rounds,
                       dict(chosen.stats, calibration=calibration), chosen.orders, chosen.values)
    budget = plan.budget.with_measured(dense_ms)
    return Measurement(dense_ms, best.ratio * dense_ms, budget, tuple(calibration), chosen, res, best.ratio,
                       best.to_dict())


def final_choice(r: Results | PipelineRun) -> tuple[Selection, RewriteResult]:
    """The selection and rewrite that stand: the closed loop's pick where it ran, else the first."""
    m = r.get("measured")
    return (m.selection, m.rewrite) if m is not None else (r["selection"], r["rewritten"])


def _verify(cfg: PipelineConfig, r: Results):
    selection, result = final_choice(r)
    loaded, analysis = base_of(r, selection)
    return verify(loaded, analysis, result.kept, result.model)


def _repair(cfg: PipelineConfig, r: Results):
    """Per-channel statistics of the verified pruned model matched to the dense model's on the calibration
    data (passes.repair); the repaired model is what is written."""
    from ..passes.calibration import calibration_batches
    from ..passes.reconstruct import reconstruct_and_repair

    selection, result = final_choice(r)
    loaded, analysis = base_of(r, selection)
    batches = calibration_batches(loaded, cfg.calib, mean=cfg.mean, std=cfg.std, size=cfg.size,
                                  samples=cfg.calib_samples, batch_size=cfg.calib_batch)
    return reconstruct_and_repair(loaded, analysis, result, batches, threads=cfg.threads,
                                  reconstruct_first=cfg.reconstruct, descent=cfg.descent)


def _repairs(cfg: PipelineConfig) -> bool:
    return cfg.calib is not None and cfg.repair is not False and cfg.mode != "iterative"


def _guard(cfg: PipelineConfig, r: Results) -> Guards:
    """What a user should hear about before shipping the result: a branch removed, too few parameters
    kept, an output cut off from the inputs (always refused); with ``strict``, any warning refuses."""
    selection, result = final_choice(r)
    loaded, analysis = base_of(r, selection)
    if any(after == 0 for _, after in result.widths.values()) or not r["verification"].candidate_input_sensitive:
        from ..passes.liveness import live_outputs

        dead = sorted(live_outputs(loaded.model) - live_outputs(result.model, like=loaded.model))
        if dead:
            raise HalpError(f"{loaded.source}: refused: the pruned model's output '{dead[0]}' no longer depends on "
                            "its inputs (too much was removed); ask for a larger budget or use --no-removal",
                            stage="guard")
    warnings: list[str] = []
    removed = []
    for g, (before, after) in sorted(result.widths.items()):
        if after == 0 and before > 0:
            removed.append(g)
            grp = analysis.group(g)
            layers = sum(1 for n in grp.vanishes if analysis.node_macs.get(n, 0) > 0)
            groups = f", and groups {', '.join(map(str, grp.shadow))}" if grp.shadow else ""
            gone = f" ({layers} layer(s) go with it{groups})" if layers > len(grp.producers) or grp.shadow else ""
            warnings.append(f"group {g} ({', '.join(grp.producers[:2]) or '-'}) removed entirely: its branch is "
                            f"gone from the model{gone}")
    p0, p1 = result.params
    share = p1 / p0 if p0 else 1.0
    if share < cfg.min_params:
        warnings.append(f"only {100 * share:.1f}% of the parameters are kept ({p1:,} of {p0:,}; --min-params "
                        f"{cfg.min_params:g})")
    if cfg.strict and warnings:
        raise HalpError(f"{loaded.source}: refused (--strict): {warnings[0]}"
                        + (f" (+{len(warnings) - 1} more)" if len(warnings) > 1 else ""), stage="guard")
    return Guards(tuple(warnings), tuple(removed), share)


# ---------------------------------------------------------------------------------------- the order
def _targets(cfg: PipelineConfig) -> bool:
    return cfg.uses_target


PIPELINE = Pipeline((
    Stage("load", "loaded", _load, doc="read, check and normalise the ONNX model (passes.load)"),
    Stage("channel-groups", "analysis", _channel_groups, ("loaded",),
          doc="channels that must be removed together, or why not (passes.channel_groups, ops.table)"),
    Stage("latency-model", "latency", _latency_model, ("loaded", "analysis"), when=_targets,
          doc="the target's latency tables for the model's blocks, profiled on demand (profiles)"),
    Stage("budget", "plan", _budget, ("loaded", "analysis", "latency"), when=_targets,
          doc="width choices and costs per group; the latency budget resolved against dense (budget)"),
    Stage("importance", "importance", _importance, ("loaded", "analysis"), when=lambda c: c.mode != "iterative",
          doc="per-channel importance: Taylor with calibration data, else magnitude (passes.importance)"),
    Stage("select", "selection", _select, ("loaded", "analysis"), ("importance", "plan", "latency"),
          doc="the channels each group keeps: ratio, knapsack, or iterative pruning while fine-tuning"),
    Stage("rewrite", "rewritten", _rewrite, ("loaded", "analysis", "selection"),
          doc="the physically smaller ONNX model (passes.rewrite)"),
    Stage("measure", "measured", _measure, ("loaded", "analysis", "latency", "plan", "selection", "rewritten"),
          when=lambda c: c.mode == "budget" and c.measure_result,
          doc="closed loop on a target that runs here: time, re-solve with the budget rescaled by the miss"),
    Stage("verify", "verification", _verify, ("loaded", "analysis", "selection", "rewritten"), ("measured",),
          doc="onnxruntime: the rewrite computes what the masked original computes (passes.verify)"),
    Stage("repair", "repaired", _repair, ("loaded", "analysis", "selection", "rewritten", "verification"),
          ("measured",), when=_repairs,
          doc="the disturbed layers refitted by least squares (passes.reconstruct), then per-channel statistics "
              "matched to the dense model's (passes.repair)"),
    Stage("guard", "guards", _guard, ("loaded", "analysis", "selection", "rewritten", "verification"),
          ("measured",), doc="warn about removed branches and few kept parameters; refuse a dead model"),
))
