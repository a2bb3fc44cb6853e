"""Latency of a model from a target's profile: profiling on demand, and prediction.

:func:`latency_model` gives a :class:`LatencyModel` for a model on a target: the measured tables of
the target's profile (measuring what is missing, with a progress bar, saving after each signature),
or the analytic roofline for a GPU that is not here (every figure then labelled *estimated*).
:func:`predict` sums the blocks of a model at given widths: ``sum(block - overhead) + overhead``,
because a one-block model pays the per-run overhead that a whole model pays once.

On ort-cpu the missing tables are measured **in context** (:mod:`.incontext`): the user's model runs
at a handful of width settings under onnxruntime's profiler and each block's table is fitted from its
per-node times (:mod:`.fit`); only signatures no whole-model run can show (what is left of a block
whose input branch was removed) are timed alone, and their tables say so (``isolated``). A profile
of the same target from another CPU or onnxruntime is **transferred** (:mod:`.transfer`) with a short
recalibration instead of re-measured from scratch; an exact match is reused as is.
"""
from __future__ import annotations

import time
from pathlib import Path
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import HalpError
from ..passes.channel_groups import ChannelAnalysis
from ..passes.load import LoadedModel
from . import analytic
from .blocks import Block, block_widths, model_blocks, orphan_signatures, vanished_nodes
from .folding import Sources, folded
from .shape_alias import memory_bound_alias
from .signature import MEMORY_BOUND_OPS, BlockSignature
from .store import (ModelContext, Profile, context_id, find_other_device, find_profile, lock, merge_tables,
                    profile_name, read_profile, write_profile)
from .table import LatencyTable, sample
from .targets import Target, device_fingerprint, get_target, target_status

STAGE = "profiles"


def profile_fingerprint(target: Target, *, threads: int = 1) -> dict[str, Any]:
    """The flat fingerprint a profile is matched on (device, runtime versions, settings)."""
    fp = device_fingerprint(target)
    v = fp.get("versions", {})
    gpu = fp.get("gpu") or {}
    flat = {"cpu": fp.get("cpu"), "machine": fp.get("machine"), "gpu_name": gpu.get("name"),
            "onnxruntime": v.get("onnxruntime") if target.backend.startswith("ort") else None,
            "tensorrt": v.get("tensorrt") if target.backend == "tensorrt" else None,
            "torch": v.get("torch") if target.backend == "torch-cuda" else None,
            "threads": threads if target.backend == "ort-cpu" else None,
            "precision": target.precision, "batch": target.batch}
    if target.backend != "ort-cpu":
        flat["cpu"] = flat["machine"] = None
        flat["driver"] = gpu.get("driver")
    return flat


@dataclass(frozen=True)
class Domain:
    """What one signature's table must cover for a model."""

    c_in_max: int
    c_out_max: int
    vary_in: bool
    vary_out: bool
    diagonal: bool
    c_in_multiple: int
    smooth: bool = False

    def table(self) -> LatencyTable:
        return LatencyTable(self.c_in_max, self.c_out_max, self.vary_in, self.vary_out, self.diagonal,
                            self.c_in_multiple, self.smooth)

    def grow(self, other: "Domain") -> "Domain":
        return Domain(max(self.c_in_max, other.c_in_max), max(self.c_out_max, other.c_out_max),
                      self.vary_in or other.vary_in, self.vary_out or other.vary_out, self.diagonal and other.diagonal,
                      max(self.c_in_multiple, other.c_in_multiple), self.smooth and other.smooth)


def _varies(analysis: ChannelAnalysis, tensor: str) -> bool:
    lab = analysis.labels.get(tensor)
    if lab is None:
        return False
    ids = lab.ids[lab.ids >= 0]
    if not ids.size:
        return False
    prunable = {g.id for g in analysis.prunable}
    return any(int(g) in prunable for g in np.unique(analysis.channel_group[ids]))


def domains(blocks: Sequence[Block], analysis: ChannelAnalysis, fusion: str = "ort") -> dict[str, Domain]:
    out: dict[str, Domain] = {}
    for b in blocks:
        sig = b.signature
        grouped = sig.groups.startswith("grouped")
        # depthwise and grouped convs: pruning removes whole convolution groups, so both widths move together
        diagonal = sig.op in MEMORY_BOUND_OPS or sig.is_depthwise or grouped
        d = Domain(b.c_in, b.c_out, _varies(analysis, b.in_tensor), _varies(analysis, b.out_tensor), diagonal,
                   sig.channels_per_group or 1 if grouped else 1)
        if diagonal:
            d = Domain(b.c_in, b.c_out, d.vary_out or d.vary_in, d.vary_out or d.vary_in, True, d.c_in_multiple,
                       sig.op in MEMORY_BOUND_OPS)
        key = sig.key()
        out[key] = out[key].grow(d) if key in out else d
        if d.vary_in and not diagonal:  # the input side may be removed: time what would be left
            for o in orphan_signatures(sig, fusion):
                od = Domain(b.c_out, b.c_out, d.vary_out, d.vary_out, True, 1, True)
                out[o.key()] = out[o.key()].grow(od) if o.key() in out else od
    return out


class LatencyModel:
    """Block latency (ms) by signature and widths, from a measured profile or the analytic model."""

    def __init__(self, target: Target, profile: Profile | None, *, path=None):
        self.target = target
        self.profile = profile
        self.path = path
        self.estimated = profile is None or profile.estimated

    @property
    def overhead_ms(self) -> float:
        return self.profile.overhead_ms if self.profile is not None else 0.0

    @property
    def label(self) -> str:
        return analytic.LABEL if self.estimated else "measured"

    def _gpu_spec(self) -> analytic.GpuSpec:
        """The target's analytic spec; a target without a GPU fails as ``analytic.get_gpu_spec(None)`` does."""
        spec = self.target.gpu_spec
        if spec is None:
            raise HalpError(f"unknown GPU None; known: {', '.join(analytic.GPU_SPECS)}", stage=analytic.STAGE)
        return spec

    def block_ms(self, sig: BlockSignature, c_in: int, c_out: int) -> float:
        """Latency of a block at ``(c_in, c_out)``; with no input channel left, what its epilogue
        costs on its own (the branch folded to a constant, the join and activation remain)."""
        if c_out <= 0:
            return 0.0
        if c_in <= 0:
            return sum(self.block_ms(o, c_out, c_out) for o in orphan_signatures(sig, self.target.fusion)
                       if self.profile is None or o.key() in self.profile.tables)
        if self.profile is None:
            return analytic.estimate_ms(sig, c_in, c_out, self._gpu_spec())
        key = table_key(self.profile, sig, c_in)
        if key is None and (shape := memory_bound_alias(self.profile.tables, sig, c_out)) is not None:
            kin = BlockSignature.from_key(shape.key)  # the same op at another shape, by element count
            return max(raw_block_ms(self.profile, kin, shape.c_equiv, shape.c_equiv) * shape.factor
                       * self.scale(kin, self.profile.tables[shape.key]), 0.0)
        if key is None:
            raise HalpError(f"profile {self.profile.name}: no table for block {sig.key()}; run "
                            f"halp-onnx profile MODEL --target {self.target.name}", stage=STAGE)
        table = self.profile.tables[key]
        alias = BlockSignature.from_key(key) if key != sig.key() else sig
        return max(raw_block_ms(self.profile, alias, c_in, c_out) * self.scale(alias, table), 0.0)

    def scale(self, sig: BlockSignature, table) -> float:
        """The recalibration factor of a transferred table (1 for tables measured here)."""
        if self.profile is None or not table.transferred or not self.profile.transfer:
            return 1.0
        from .transfer import op_class

        return float(self.profile.transfer.get("scales", {}).get(op_class(sig), 1.0))

    def is_measured(self, sig: BlockSignature, c_in: int, c_out: int) -> bool:
        if self.profile is None:
            return False
        key = table_key(self.profile, sig, c_in)
        table = self.profile.tables.get(key) if key is not None else None
        return bool(table and table.is_measured(c_in, c_out))

    def step(self, sig: BlockSignature) -> int:
        if self.profile is None:
            return analytic.step_size(sig, self._gpu_spec())
        key = table_key(self.profile, sig, 0)
        table = self.profile.tables.get(key) if key is not None else None
        return table.step if table is not None else 1

    @property
    def align(self) -> int:
        """The channel multiple that keeps a width on the runtime's blocked kernels
        (:attr:`~halp_onnx.profiles.fit.LayoutRule.width_multiple` of the profile's probed rule); 1 where
        the runtime has no such layout or nothing probed it."""
        from .fit import LayoutRule

        return LayoutRule.from_dict(self.profile.layout if self.profile is not None else None).width_multiple


def grouped_alias(sig: BlockSignature, c_in: int) -> BlockSignature | None:
    """The grouped signature a dense convolution of ``c_in`` inputs is at one group: a grouped conv
    (ResNeXt, RegNet) pruned to a single group is written as a plain conv, priced by its grouped table."""
    if sig.op != "Conv" or sig.groups != "dense" or c_in <= 0:
        return None
    d = sig.to_dict()
    d["groups"] = f"grouped:{c_in}"
    return BlockSignature.from_dict(d)


def table_key(profile: Profile, sig: BlockSignature, c_in: int) -> str | None:
    """The key of the table that prices ``sig`` at ``c_in`` inputs: its own, else its grouped alias."""
    if sig.key() in profile.tables:
        return sig.key()
    alias = grouped_alias(sig, c_in)
    return alias.key() if alias is not None and alias.key() in profile.tables else None


def raw_block_ms(profile: Profile, sig: BlockSignature, c_in: int, c_out: int) -> float:
    """A block's ms from ``profile``'s table, before any recalibration: an in-context table's value as
    it is (it holds the per-node costs of a real run); a one-block kernel time plus the per-block
    correction; a one-block run time less the per-run overhead it paid."""
    table = profile.tables[sig.key()]
    if table.fit:
        return table.lookup(c_in, c_out)
    if profile.block_time == "kernel":
        return table.lookup(c_in, c_out) + profile.node_overhead_ms
    return table.lookup(c_in, c_out) - profile.overhead_ms


@dataclass(frozen=True)
class BlockLatency:
    node: str
    op: str
    signature: str
    c_in: int
    c_out: int
    ms: float
    measured_point: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Prediction:
    """Predicted latency of a model: the per-block terms and the total (ms)."""

    total_ms: float
    overhead_ms: float
    blocks: tuple[BlockLatency, ...]
    label: str  # "measured" (table of measurements) | "estimated" (analytic)

    def to_dict(self) -> dict:
        return {"predicted_ms": self.total_ms, "overhead_ms": self.overhead_ms, "label": self.label,
                "blocks": [b.to_dict() for b in self.blocks]}


def predict(blocks: Sequence[Block], lm: LatencyModel, analysis: ChannelAnalysis | None = None,
            kept: np.ndarray | None = None, sources: Sequence[Sources] = ()) -> Prediction:
    """Latency of the model whose blocks are ``blocks`` with ``kept`` channels (dense when None);
    with ``sources`` (:func:`~halp_onnx.profiles.folding.block_sources`), blocks the choice leaves computing
    from constants only are folded away, as the rewrite does."""
    gone = vanished_nodes(analysis, kept) if kept is not None and analysis is not None else set()
    widths = []
    for b in blocks:
        if kept is None:
            widths.append((b.c_in, b.c_out))
        elif analysis is None:  # the AttributeError block_widths(None, ...) raised before this check
            raise AttributeError("predict: 'kept' channels need the analysis that numbers them")
        else:
            ci, co = block_widths(analysis, kept, b)
            widths.append((ci, 0 if b.node in gone else co))
    rows = []
    for b, (ci, co) in zip(blocks, folded(sources, widths) if kept is not None else widths):
        ms = lm.block_ms(b.signature, ci, co) if co > 0 else 0.0
        rows.append(BlockLatency(b.node, b.signature.op, b.signature.key(), ci, co, ms,
                                 lm.is_measured(b.signature, ci, co)))
    total = sum(r.ms for r in rows) + lm.overhead_ms
    return Prediction(total, lm.overhead_ms, tuple(rows), lm.label)


# ---------------------------------------------------------------------------------------- profiling
@dataclass(frozen=True)
class ProfileRun:
    """What :func:`latency_model` did: the model to use and the measuring it took."""

    model: LatencyModel
    path: str | None
    signatures: int
    new_points: int
    reused_points: int
    seconds: float
    warnings: tuple[str, ...] = field(default=())
    incontext_runs: int = 0  # whole-model runs measured in context for this model
    isolated_signatures: int = 0  # signatures timed alone (no whole-model run could show them)
    context: str | None = None  # the id of the model context whose tables price this model (store.ModelContext)

    @property
    def source(self) -> str:
        """``"estimated"``, ``"transferred"`` (recalibrated from another device / runtime) or ``"measured"``."""
        prof = self.model.profile
        return "estimated" if self.model.estimated else (prof.source if prof is not None else "measured")

    def to_dict(self) -> dict:
        prof = self.model.profile
        return {"target": self.model.target.name, "label": self.model.label, "path": self.path,
                "signatures": self.signatures, "new_points": self.new_points, "reused_points": self.reused_points,
                "seconds": round(self.seconds, 3), "source": self.source,
                "transfer": dict(prof.transfer) if prof is not None and prof.transfer else None,
                "incontext_runs": self.incontext_runs, "isolated_signatures": self.isolated_signatures,
                "context": ({"id": self.context, "model": prof.contexts[self.context].model}
                            if prof is not None and self.context in prof.contexts else None)}


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]profiling[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False)


def _expected_points(d: Domain) -> int:
    if d.diagonal:
        return (6 if d.smooth else 36) if d.vary_out else 1
    n = 1
    if d.vary_out:
        n += 33 + 4
    if d.vary_in:
        n += 4 + 7
    if d.vary_in and d.vary_out:
        n += 20
    return n


def model_batch(loaded: LoadedModel) -> int:
    """The batch size of the model's first input (1 when it has no leading dim)."""
    first = next((i.name for i in loaded.model.graph.input), None)
    shape = loaded.shapes.get(first) if first else None
    return int(shape[0]) if shape and isinstance(shape[0], (int, np.integer)) and shape[0] > 0 else 1


def latency_model(loaded: LoadedModel, analysis: ChannelAnalysis, target: str | Target, *, threads: int = 1,
                  measure: bool | None = None, progress: bool = False, remeasure: bool = False,
                  backend=None, blocks: Sequence[Block] | None = None, profile_path=None) -> ProfileRun:
    """The latency model of ``loaded`` on ``target``, profiling whatever the cached profile lacks.

    ``measure=None``: measure when the target can run here, else fall back to the analytic model for a
    named GPU (estimated) or fail with the reason. ``measure=True`` insists on measuring (clear error
    where it cannot); ``measure=False`` never measures (analytic for GPUs; error for ort-cpu without a
    complete profile)."""
    t0 = time.perf_counter()
    t = get_target(target)
    batch = model_batch(loaded)
    t = t.with_batch(batch) if batch != t.batch else t
    blocks = list(blocks) if blocks is not None else model_blocks(loaded, analysis, precision=t.precision, fusion=t.fusion)
    available, reason = target_status(t)
    if measure is None:
        measure = available or t.gpu is None
    if not measure:
        if t.gpu is not None:
            return ProfileRun(LatencyModel(t, None), None, len({b.signature.key() for b in blocks}), 0, 0,
                              time.perf_counter() - t0, (f"{t.name}: {reason}; latencies are analytic estimates",))
    if measure and not available:
        raise HalpError(f"--target {t.name}: cannot measure here: {reason}", stage=STAGE)

    name = profile_name(t.name, threads=threads, batch=t.batch)
    fp = profile_fingerprint(t, threads=threads)
    notes: list[str] = []
    if profile_path is not None:
        path = Path(profile_path)
        prof = read_profile(path) if path.is_file() else None
    else:
        prof, path = find_profile(name, fp, warn=not _transferable(t, backend, measure, remeasure))
    if prof is None and profile_path is None and _transferable(t, backend, measure, remeasure):
        src, src_path = find_other_device(name, fp)
        if src is not None:
            backend = backend if backend is not None else _backend(t, threads)
            from .transfer import transfer

            prof = transfer(src, str(src_path), loaded, analysis, blocks, backend, fp, block_ms=raw_block_ms)
            with lock(path):
                write_profile(prof, path)
    if prof is None or remeasure:
        prof = Profile(name=name, target=t.name, precision=t.precision, batch=t.batch, threads=threads,
                       estimated=False, fingerprint=fp)
    if prof.transfer:
        from .transfer import describe

        notes.append(describe(prof))
    doms = domains(blocks, analysis, t.fusion)
    keys = sorted({b.signature.key() for b in blocks})
    cid = prof.find_context(keys)
    view = prof.with_context(cid)
    todo = {k: d for k, d in doms.items() if remeasure or not _covered(view, k, d)}
    if measure and cid is None and _in_context(t, backend):
        # other models' in-context points do not price this one: measured in its own runs
        todo = dict(doms)
    reused = sum(len(view.tables[k].points) for k in doms if k in view.tables and k not in todo)
    new = runs = isolated = 0
    if todo and not measure:  # a memory-bound op at a shape not measured: its kin by element count
        kin = {k for k in todo if memory_bound_alias(view.tables, BlockSignature.from_key(k), todo[k].c_out_max)}
        if kin == set(todo):  # (when others are missing too, the error below counts them all)
            notes.append(f"{loaded.source}: {len(kin)} memory-bound signature(s) not in the profile (a shape the "
                         "measured model did not have) priced from the same op at another shape, by element count")
            todo = {}
    if todo:
        if not measure:
            raise HalpError(f"--target {t.name}: the profile lacks {len(todo)} block signature(s) and measuring "
                            "is off", stage=STAGE)
        backend = backend if backend is not None else _backend(t, threads)
        if not prof.overhead_ms or remeasure:
            prof.overhead_ms = backend.run_overhead_ms()
            prof.block_time = getattr(backend, "block_time", "run")
            prof.node_overhead_ms = backend.node_overhead_ms() if prof.block_time == "kernel" else 0.0
        with _progress(progress) as bar:
            if getattr(backend, "in_context", False):
                cid = cid or context_id(keys)
                # a pruned model may hold what is left of a removed branch (its epilogue): still this context
                may_hold = set(keys) | {o.key() for b in blocks for o in orphan_signatures(b.signature, t.fusion)}
                new, runs, todo = _measure_in_context(prof, path, loaded, analysis, blocks, backend, todo, bar,
                                                      remeasure=remeasure, context=(cid, tuple(sorted(may_hold))))
                # what no whole-model run shows is timed alone, unless the general tables have it
                todo = {k: d for k, d in todo.items() if remeasure or not _covered(prof, k, d)}
            isolated = len(todo)
            new += _measure_isolated(prof, path, blocks, backend, todo, bar, remeasure=remeasure)
    if cid is None and _in_context(t, backend) and any(tb.fit for tb in prof.tables.values()):
        notes.append(f"{loaded.source}: not measured in its own runs (measuring is off); priced from the "
                     "in-context tables of other models, which may be off for it")
    return ProfileRun(LatencyModel(t, prof.with_context(cid), path=path), str(path), len(doms), new, reused,
                      time.perf_counter() - t0, tuple(notes), runs, isolated, cid)


def _covered(prof: Profile, key: str, d: Domain) -> bool:
    table = prof.tables.get(key)
    if table is None:  # a grouped conv left with one group: its grouped table at one group
        alias = grouped_alias(BlockSignature.from_key(key), d.c_in_max)
        table = prof.tables.get(alias.key()) if alias is not None else None
        return table is not None and table.complete and table.c_in_max >= d.c_in_max and \
            table.c_out_max >= d.c_out_max
    return table.covers(d.c_in_max, d.c_out_max, d.vary_in, d.vary_out)


def _in_context(t: Target, backend) -> bool:
    """Whether ``backend`` (or the target's, when none is given) times blocks inside whole-model runs."""
    if backend is not None:
        return bool(getattr(backend, "in_context", False))
    return t.backend == "ort-cpu"


def _backend(t: Target, threads: int):
    from .backends import get_backend

    return get_backend(t, threads=threads)


def _transferable(t: Target, backend, measure: bool, remeasure: bool) -> bool:
    """A profile of another device may be recalibrated here: ort-cpu, measuring allowed, a backend that
    measures in context (the real one unless a test gave another)."""
    return t.backend == "ort-cpu" and bool(measure) and not remeasure and _in_context(t, backend)


def _save(prof: Profile, path, remeasure: bool) -> None:
    with lock(path):  # another profiler may have saved meanwhile: keep its points too
        if path.is_file() and not remeasure:
            try:
                merge_tables(prof, read_profile(path))
            except HalpError:
                pass
        write_profile(prof, path)


def _measure_in_context(prof: Profile, path, loaded: LoadedModel, analysis: ChannelAnalysis,
                        blocks: Sequence[Block], backend, todo: dict[str, Domain], bar, *, remeasure: bool,
                        context: tuple[str, tuple[str, ...]]) -> tuple[int, int, dict[str, Domain]]:
    """Fit the tables of ``todo`` from whole-model runs of this model; returns (points, runs, what is
    left for one-block timing). ``context``: (id, signatures) of this model: its tables are fitted
    from its own points (:class:`~.store.ModelContext`); the general tables gather every model's."""
    from . import incontext as ic
    from .fit import LayoutRule, probe_rule

    if not set(todo) & {b.signature.key() for b in blocks}:  # only what no whole-model run shows
        return 0, 0, todo
    rule = LayoutRule.from_dict(prof.layout) if prof.layout and not remeasure else probe_rule()
    prof.layout = rule.to_dict()
    task = bar.add_task("whole-model runs in context", total=None) if bar else None
    obs, _ = ic.observe(loaded, analysis, blocks, backend, ic.width_settings(analysis, blocks, 1, block=rule.block),
                        runs=3)
    dense_ms = max(sum(o.ms for o in obs), 1e-3)
    n, runs = ic.plan(dense_ms)
    settings = ic.width_settings(analysis, blocks, n, block=rule.block)
    if bar:
        bar.update(task, total=n)
    if not prof.incontext_node_ms or remeasure:
        calib = [loaded.model]
        for w in settings[1:3]:
            try:
                calib.append(ic.variant(loaded, analysis, w)[0])
            except HalpError:  # a width the rewrite refuses (observe leaves it out too)
                pass
        prof.incontext_node_ms = ic.node_cost(backend, calib, run_overhead_ms=prof.overhead_ms,
                                              runs=max(runs, 8), fallback=prof.node_overhead_ms)
    kw = dict(per_node_ms=prof.incontext_node_ms)

    def tick():
        if bar:
            bar.advance(task)

    passes = ic.passes()
    more, _ = ic.observe(loaded, analysis, blocks, backend, settings, runs=runs, on_setting=tick,
                         passes=passes, **kw)
    if passes > 1:  # (one pass: the tests' tiny timing budgets)
        more, _ = ic.retime_slow(loaded, analysis, blocks, backend, settings, more, rule, runs=runs, **kw)
    pts = ic.points_by_key(more)
    new = 0
    left: dict[str, Domain] = {}
    cid, signatures = context
    ctx = prof.contexts.get(cid)
    if ctx is None or remeasure:
        ctx = prof.contexts[cid] = ModelContext(Path(loaded.source).name, signatures)
    for key, d in sorted(todo.items()):
        got = {p: v for p, v in pts.get(key, {}).items() if p[0] <= d.c_in_max and p[1] <= d.c_out_max}
        if not got:
            left[key] = d
            continue
        sig = BlockSignature.from_key(key)
        for tables in (ctx.tables, prof.tables):  # this model's own, and every model's
            tables[key] = _grown(d.table(), None if remeasure else tables.get(key))
            ic.fitted_table(tables[key], sig, got, rule)
        new += len(got)
    _save(prof, path, remeasure)
    return new, n, left


def _grown(table: LatencyTable, old: LatencyTable | None) -> LatencyTable:
    """``table`` (a new domain) holding ``old``'s in-context points and widths too: one table answers
    both models (one domain replacing the other's made two models re-profile each other in turn)."""
    if old is None or not old.fit:
        return table
    table.points.update({k: v for k, v in old.points.items() if old.sources.get(k) == "incontext"})
    table.sources.update({k: "incontext" for k in table.points})
    table.vary_in = table.vary_in or old.vary_in or old.c_in_max != table.c_in_max
    table.vary_out = table.vary_out or old.vary_out or old.c_out_max != table.c_out_max
    table.c_in_max, table.c_out_max = max(table.c_in_max, old.c_in_max), max(table.c_out_max, old.c_out_max)
    return table


def _measure_isolated(prof: Profile, path, blocks: Sequence[Block], backend, todo: dict[str, Domain], bar, *,
                      remeasure: bool) -> int:
    """One-block timing of ``todo`` (staircase sampling, :mod:`.table`); returns the points measured."""
    new = 0
    task = bar.add_task("", total=sum(_expected_points(d) for d in todo.values())) if bar and todo else None
    done_expected = 0
    for i, (key, d) in enumerate(sorted(todo.items())):
        sig = BlockSignature.from_key(key)
        old = prof.tables.get(key)
        table = d.table()
        if old is not None and not remeasure and not old.fit:
            table.points.update(old.points)
        before = len(table.points)
        if bar:
            bar.update(task, description=f"{sig.op} {'x'.join(map(str, sig.kernel)) or ''} "
                                         f"in={'x'.join(map(str, sig.in_hw))} ({i + 1}/{len(todo)}, alone)")

        def tick():
            if bar:
                bar.advance(task)

        dense = tuple(sorted({(b.c_in, b.c_out) for b in blocks if b.signature.key() == key}))

        def measure_point(ci: int, co: int, s: BlockSignature = sig) -> float:
            return backend.measure(s, ci, co)

        sample(table, measure_point, on_point=tick, extra=dense)
        table.sources.update({k: "isolated" for k in table.points})
        new += len(table.points) - before
        prof.tables[key] = table
        done_expected += _expected_points(d)
        if bar:
            bar.update(task, completed=done_expected)
        _save(prof, path, remeasure)
    return new
