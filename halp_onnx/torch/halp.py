"""Iterative HALP (the paper's method): prune progressively while fine-tuning.

    pruner = IterativePruner(module, model, target="ort-cpu", latency=0.5, steps=30, interval=40)
    for x, y in loader:
        loss = ...; loss.backward(); optimizer.step(); optimizer.zero_grad()
        pruner.step()          # accumulates Taylor importance; every `interval` calls, one pruning step
    pruned = pruner.finalize(module.write_back())   # physically smaller ONNX, verified

Each call of :meth:`IterativePruner.step` adds the minibatch's |sum g * gate| per channel (the gates
of :class:`~halp_onnx.torch.gates.ChannelGates`). Every ``interval`` calls, until ``steps`` pruning
steps are done, the knapsack is solved for a latency target that shrinks from the dense latency to
the goal (geometrically, as the authors' code does, or linearly) over the current widths only:
pruned channels are held at zero by the gates and never come back. On a target that runs here the
loop is closed: every ``calibrate_every`` pruning steps, and at the last, the current widths are timed
against the dense model (paired, in this process) and the later targets are rescaled by how far the
measured share of dense latency is from the predicted one; a last step that still misses the budget is
solved again at the rescaled budget. :meth:`finalize` rewrites the
fine-tuned graph with the core's rewrite and checks it against the masked original.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from ..errors import HalpError
from .executor import OnnxModule
from .gates import ChannelGates

STAGE = "iterative-halp"


@dataclass(frozen=True)
class PruneStep:
    step: int
    call: int  # pruner.step() call that triggered it
    target_ms: float
    predicted_ms: float
    kept_channels: int
    seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class IterativeResult:
    model: onnx.ModelProto
    kept: np.ndarray
    widths: dict[int, tuple[int, int]]
    history: tuple[PruneStep, ...]
    dense_predicted_ms: float
    predicted_ms: float
    budget_ms: float
    rewrite: Any
    verification: Any
    calibration: tuple[dict, ...] = ()  # the closed loop's timings (target runs here), one per calibration

    def to_dict(self) -> dict:
        return {"dense_predicted_ms": self.dense_predicted_ms, "predicted_ms": self.predicted_ms,
                "budget_ms": self.budget_ms, "history": [h.to_dict() for h in self.history],
                "calibration": list(self.calibration),
                "widths": {int(g): list(w) for g, w in self.widths.items()},
                "params": list(self.rewrite.params), "macs": list(self.rewrite.macs),
                "verification": self.verification.to_dict() if self.verification else None}


class IterativePruner:
    """HALP's progressive pruning driven from a training loop (see the module docstring)."""

    def __init__(self, module: OnnxModule, model: Any, *, target: str = "ort-cpu", latency: str | float = 0.5,
                 steps: int = 30, interval: int = 40, schedule: str = "geometric", start_after: int = 0,
                 min_keep: float = 0.1, allow_removal: bool = True, prune_first: bool = False,
                 solver: str = "exact", threads: int = 1, input_shapes: dict | None = None,
                 profile_path=None, measure: bool | None = None, progress: bool = False,
                 prepared: Any = None, calibrate_every: int = 10, calibrate_tol: float = 0.03):
        from ..budget import LatencyBudget
        from ..passes.latency_cost import total_latency
        from ..pipeline import PIPELINE, PipelineConfig

        if steps < 1 or interval < 1:
            raise HalpError(f"steps ({steps}) and interval ({interval}) must be positive", stage=STAGE)
        if schedule not in ("geometric", "linear"):
            raise HalpError(f"schedule {schedule!r}: expected geometric or linear", stage=STAGE)
        self.module = module
        if prepared is None:  # the pipeline up to the budget: model, channel groups, latency tables, costs
            cfg = PipelineConfig(source=model, mode="iterative", input_shapes=input_shapes, target=target,
                                 latency=LatencyBudget.parse(latency), threads=threads, measure=measure,
                                 profile_path=profile_path, progress=progress, solver=solver, min_keep=min_keep,
                                 allow_removal=allow_removal, prune_first=prune_first)
            prepared = PIPELINE.run(cfg, until="budget")
        self.loaded, self.analysis = prepared["loaded"], prepared["analysis"]
        self.blocks = prepared["latency"].blocks
        self.lm = prepared["latency"].model
        self.plan = prepared["plan"]
        self._block_ms = self.plan.block_ms
        self.cm = self.plan.cost
        self.widths = dict(self.plan.dense)
        self.dense_ms = self.plan.dense_ms
        self.budget_ms = self.plan.budget.ms
        self.steps, self.interval, self.schedule, self.start_after = steps, interval, schedule, start_after
        self.solver = solver
        self.gates = ChannelGates(module, self.loaded, self.analysis)
        self.kept = np.ones(len(self.analysis.channel_group), dtype=bool)
        self.calls = 0
        self.done = 0
        self.history: list[PruneStep] = []
        self._total_latency = total_latency
        # closed loop on a target that runs here: every ``calibrate_every`` pruning steps (and at the last)
        # the current widths are timed against the dense model, and later targets are rescaled by the miss
        self.scale = 1.0
        self._extra = 0
        self.calibrations: list[dict] = []
        self.calibrate_every, self.calibrate_tol, self.threads = calibrate_every, calibrate_tol, threads
        self._backend: Any = None
        if calibrate_every > 0 and measure is not False and not self.lm.estimated:
            from ..profiles.targets import target_status

            if target_status(self.lm.target)[0]:
                from ..profiles.backends import get_backend

                self._backend = get_backend(self.lm.target, threads=threads)

    # ------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.done >= self.steps

    def target_ms(self, k: int) -> float:
        """Latency target of pruning step ``k`` (1-based): dense -> budget over ``steps`` steps."""
        frac = k / self.steps
        if self.schedule == "geometric":
            return self.dense_ms * (self.budget_ms / self.dense_ms) ** frac
        return self.dense_ms + (self.budget_ms - self.dense_ms) * frac

    def step(self) -> PruneStep | None:
        """Call after each optimizer step (the loss's backward pass must have run)."""
        if self.finished:
            return None
        self.calls += 1
        if self.calls <= self.start_after:
            self.gates.zero_grad()
            return None
        self.gates.accumulate()
        if (self.calls - self.start_after) % self.interval == 0:
            return self.prune_step()
        return None

    def prune_step(self) -> PruneStep:
        """Solve the knapsack for the next target over the channels still kept, and mask the rest."""
        from ..passes.solve import solve_rounds
        from ..passes.latency_cost import GroupChoices

        t0 = time.perf_counter()
        k = self.done + 1
        target = self.target_ms(k) / self.scale
        scores = self.gates.scores()
        choices, values, orders = {}, {}, {}
        an = self.analysis
        for g, ch in self.cm.choices.items():
            cur = self.widths[g]
            members = np.nonzero((an.channel_group == g) & self.kept)[0]
            members = members[np.argsort(an.channel_index[members])]
            order = members[np.argsort(-scores[members], kind="stable")]
            allowed = sorted({w for w in ch.widths if w < cur} | {cur})
            cum = np.concatenate([[0.0], np.cumsum(scores[order])])
            # a tiny tie-breaker keeps the width when importance is flat (all-zero scores after masking)
            values[g] = cum[np.asarray(allowed)] + 1e-12 * np.asarray(allowed)
            choices[g] = GroupChoices(g, ch.size, ch.step, tuple(allowed))
            orders[g] = order
        cm = replace(self.cm, choices=choices)
        widths, _, _ = solve_rounds(cm, values, self._block_ms, self.lm.overhead_ms, target, solver=self.solver,
                                    start=self.widths, compare=False)
        for g, w in widths.items():
            drop = orders[g][w:]
            self.kept[drop] = False
        self.widths = {g: int(w) for g, w in widths.items()}
        self.gates.set_mask(self.kept)
        self.gates.reset()
        self.done = k
        pred = self._total_latency(self.cm, self.widths, self._block_ms, self.lm.overhead_ms)
        rec = PruneStep(k, self.calls, target, pred, int(self.kept.sum()), time.perf_counter() - t0)
        self.history.append(rec)
        if self._backend is not None and (k % self.calibrate_every == 0 or k == self.steps):
            self._calibrate(k)
            if (k == self.steps and self.calibrations[-1]["miss"] > 1 + self.calibrate_tol and self._extra < 2
                    and target > self.budget_ms / self.scale * (1 + 1e-9)):
                self._extra += 1
                self.done = k - 1  # one more solve at the last step, for the rescaled budget
                return self.prune_step()
        return rec

    def _calibrate(self, k: int) -> None:
        """Time the current widths against the dense model (paired, in this process) and set ``scale``: the
        measured share of dense latency over the predicted share, which later targets are divided by."""
        from ..passes.rewrite import rewrite
        from ..profiles.timing import paired_timing

        model = rewrite(self.loaded, self.analysis, self.keep_of(self.analysis), check=False).model
        pt = paired_timing(self._backend, self.loaded.model, model, rounds=5, budget_s=3.0)
        predicted = self.predicted_ms() / self.dense_ms
        miss = pt.ratio / max(predicted, 1e-9)
        self.scale = miss
        self.calibrations.append({"step": k, "predicted_share": predicted, "measured_share": pt.ratio,
                                  "miss": pt.ratio / max(self.budget_ms / self.dense_ms, 1e-9)
                                  if k == self.steps else miss, "scale": miss})

    def finish_now(self) -> None:
        """Run the remaining pruning steps at once (e.g. when training ends early)."""
        while not self.finished:
            self.prune_step()

    # ------------------------------------------------------------------------------------------
    def tuned_selection(self, tuned: onnx.ModelProto | None = None):
        """The kept channels as a pipeline Selection on ``tuned`` (default: the module's current weights
        written into the graph), whose channel groups must be the original's."""
        from ..pipeline import PIPELINE, PipelineConfig, Selection

        if not self.finished:
            self.finish_now()
        tuned = tuned if tuned is not None else self.module.write_back()
        shapes = {n: s for n, s in self.loaded.input_shapes.items()} or None
        run = PIPELINE.run(PipelineConfig(tuned, mode="ratio", input_shapes=shapes), until="channel-groups")
        loaded, analysis = run["loaded"], run["analysis"]
        if [g.size for g in analysis.groups] != [g.size for g in self.analysis.groups]:
            raise HalpError("the fine-tuned graph's channel groups differ from the original's", stage=STAGE)
        return Selection(self.keep_of(analysis), "iterative", dict(self.widths), base=(loaded, analysis), extra=tuple(self.history))

    def keep_of(self, analysis) -> dict[int, np.ndarray]:
        """The kept channels of every pruned group (indices within the group) on ``analysis``, whose groups
        are the original's."""
        keep = {}
        for g in self.cm.choices:
            members = np.nonzero((analysis.channel_group == g) & self.kept)[0]
            if len(members) < self.cm.choices[g].size:
                keep[g] = np.sort(analysis.channel_index[members])
        return keep

    def predicted_ms(self) -> float:
        return self._total_latency(self.cm, self.widths, self._block_ms, self.lm.overhead_ms)

    def finalize(self, tuned: onnx.ModelProto | None = None) -> IterativeResult:
        """The physically smaller model: ``tuned`` (default: the module's current weights written into the
        graph) rewritten to the kept channels, verified against the masked tuned model (the pipeline's
        rewrite and verify stages)."""
        from ..pipeline import PIPELINE, PipelineConfig

        sel = self.tuned_selection(tuned)
        assert sel.base is not None
        loaded, analysis = sel.base
        run = PIPELINE.run(PipelineConfig(loaded.model, mode="ratio"),
                           given={"loaded": loaded, "analysis": analysis, "selection": sel})
        return _result(run["rewritten"], run["verification"], tuple(self.history), self.dense_ms,
                       self.predicted_ms(), self.budget_ms)


def _result(result, check, history, dense_ms, predicted_ms, budget_ms) -> IterativeResult:
    return IterativeResult(result.model, result.kept, dict(result.widths), history, dense_ms, predicted_ms,
                           budget_ms, result, check)


@dataclass(frozen=True)
class IterativeSettings:
    """The torch side of ``compile --iterative`` (``PipelineConfig.iterative``)."""

    data: Any
    finetune: Any = None  # FinetuneConfig (default: its defaults)
    steps: int = 30
    interval: int = 40
    schedule: str = "geometric"
    teacher: Any = "self"
    eval_data: Any = None

    def select(self, cfg, results):
        """The pipeline's ``select`` stage in iterative mode."""
        return iterative_selection(cfg, results)


def _raw_proto(model: Any) -> onnx.ModelProto:
    from ..passes.load import read_model

    if isinstance(model, onnx.ModelProto):
        return model
    return read_model(model)  # the tool's own checks and confined external-data resolution


def iterative_selection(cfg, results):
    """The pipeline's ``select`` stage in iterative mode: fine-tune the model (KD from the teacher, default
    the dense model itself, plus CE when labeled) while pruning every ``interval`` optimizer steps for
    ``steps`` steps, then keep fine-tuning to the end; the kept channels, on the fine-tuned graph."""
    from .finetune import FinetuneConfig, finetune

    st: IterativeSettings = cfg.iterative
    proto = _raw_proto(cfg.source)
    ftcfg = st.finetune if st.finetune is not None else FinetuneConfig()
    module = OnnxModule(proto, train_bn=True)
    pruner = IterativePruner(module, proto, steps=st.steps, interval=st.interval, schedule=st.schedule,
                             solver=cfg.solver, prepared=results, threads=cfg.threads, measure=cfg.measure,
                             calibrate_every=10 if cfg.measure_result else 0, calibrate_tol=cfg.calibrate_tol)

    def callback(trainer, step):
        rec = pruner.step()
        if rec is not None and cfg.progress:
            print(f"pruning step {rec.step}/{pruner.steps}: target {rec.target_ms:.4g} ms, predicted "
                  f"{rec.predicted_ms:.4g} ms, {rec.kept_channels} channels kept", flush=True)

    ft = finetune(module, proto if st.teacher == "self" else st.teacher, st.data, ftcfg, progress=cfg.progress,
                  callback=callback, eval_data=st.eval_data)
    if not pruner.finished:
        raise HalpError(f"training ended after {ft.steps} optimizer steps, before the {st.steps} pruning steps of "
                        f"{st.interval} steps each ({st.steps * st.interval} steps); give more --epochs or a smaller "
                        "--interval", stage=STAGE)
    sel = pruner.tuned_selection(ft.model)
    return replace(sel, extra=(tuple(pruner.history), ft, pruner.predicted_ms()),
                   stats={**sel.stats, "calibration": list(pruner.calibrations)})


def compile_iterative(model: Any, data: Any, *, target: str = "ort-cpu", latency: str | float = 0.5,
                      config=None, steps: int = 30, interval: int = 40, schedule: str = "geometric",
                      teacher: Any = "self", eval_data: Any = None, progress: bool = True,
                      min_keep: float = 0.1, allow_removal: bool = True, prune_first: bool = False,
                      solver: str = "exact", threads: int = 1, input_shapes: dict | None = None,
                      profile_path=None) -> tuple[IterativeResult, Any]:
    """Iterative HALP end to end (the pipeline in mode "iterative"); returns the finalized (rewritten,
    verified) result and the fine-tuning result."""
    from ..budget import LatencyBudget
    from ..pipeline import PIPELINE, PipelineConfig

    settings = IterativeSettings(data=data, finetune=config, steps=steps, interval=interval, schedule=schedule,
                                 teacher=teacher, eval_data=eval_data)
    cfg = PipelineConfig(source=model, mode="iterative", input_shapes=input_shapes, target=target,
                         latency=LatencyBudget.parse(latency), threads=threads, profile_path=profile_path,
                         progress=progress, solver=solver, min_keep=min_keep, allow_removal=allow_removal,
                         prune_first=prune_first, iterative=settings)
    run = PIPELINE.run(cfg)
    history, ft, predicted = run["selection"].extra
    plan = run["plan"]
    res = _result(run["rewritten"], run["verification"], history, plan.dense_ms, predicted, plan.budget.ms)
    return replace(res, calibration=tuple(run["selection"].stats.get("calibration", ()))), ft
