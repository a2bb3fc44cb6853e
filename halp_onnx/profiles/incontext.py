"""In-context measurement on ort-cpu: per-node kernel times taken inside whole-model runs.

A block timed alone in a one-block model misses what the whole model does around it: the layout
reorders (NCHW <-> NCHWc) that onnxruntime inserts where a layer falls off its blocked kernels, the
fusions that depend on the neighbours (a residual ``Add`` folds into an NCHWc convolution only when
both of its inputs are NCHWc), and the cache state. This module runs the *user's model* at a handful
of width settings (dense, and every prunable group at once at random widths: multiples of the
runtime's channel block, misaligned ones, and a mix) with onnxruntime's profiler on
(``SessionOptions.enable_profiling``), reads the ``Node`` events' ``*_kernel_time`` and maps each
onnxruntime node back to the block it belongs to:

* a node keeps its ONNX name when it is not rewritten (``FusedConv`` takes the anchor's name, an
  unfused ``Add``/``Relu`` keeps its own, which the block lists among its fused nodes);
* the NCHWc transformer names its convolutions and pools after their *output tensor*:
  ``<output>_nchwc`` (``Conv_3`` + ``Relu_4`` becomes ``Relu_4_output_0_nchwc``), so the name,
  stripped of the suffix, is looked up among the tensors the block writes;
* the layout reorders (``ReorderInput`` / ``ReorderOutput``) and every other node the graph
  optimiser created are charged to the block on their NCHW side (the layer whose width put it off the
  blocked kernels), found through the optimised graph (``optimized_model_filepath``): a
  ``ReorderOutput`` (back to NCHW) to the block that reads it, a ``ReorderInput`` (into NCHWc) to the
  block that wrote its input; a node with no block on that side goes to the other, so the per-run sum
  is kept.

The result is a list of :class:`Observation` (signature, widths, milliseconds); :mod:`.fit` turns
them into the per-signature tables the knapsack reads.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from ..errors import HalpError
from ..passes.channel_groups import ChannelAnalysis
from ..passes.load import LoadedModel
from .blocks import Block, block_widths, constant_nodes, orphan_signatures
from .folding import block_sources, folded, half_constant

STAGE = "profiles"
NCHWC_DOMAIN = "com.microsoft.nchwc"
REORDERS = ("ReorderInput", "ReorderOutput")
_NCHWC_NAME = re.compile(r"^(?P<tensor>.*)_nchwc(?:_token_\d+)?$")
# a node a fusion of onnxruntime rewrote is named after the node it replaces: ``<name>/<Kind>Fusion``,
# sometimes with a trailing ``/`` (onnxruntime 1.32: a MatMul + Add on a 3-D input becomes the Gemm
# ``/blocks.0/qkv/MatMul/MatMulAddFusion`` between two new Reshapes; ``.../MatMul/MatMulScaleFusion/``)
_FUSION_NAME = re.compile(r"^(?P<name>.+)/[A-Za-z0-9]+Fusion/?$")


@dataclass(frozen=True)
class Observation:
    """One block's kernel time (ms per run) inside one whole-model run at widths ``(c_in, c_out)``."""

    key: str  # signature key
    node: str  # the block's anchor node
    c_in: int
    c_out: int
    ms: float
    layout: str  # "nchwc" when onnxruntime ran the anchor on its blocked kernels, else "nchw"
    setting: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------- events
def run_windows(events: Sequence[Mapping]) -> list[tuple[int, int]]:
    return sorted((int(e["ts"]), int(e["ts"]) + int(e["dur"])) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")


def node_times(events: Sequence[Mapping], *, skip: int = 1) -> dict[str, float]:
    """Per onnxruntime node: the median over runs (the first ``skip`` runs dropped) of its summed
    ``_kernel_time`` in a run, in ms. Events outside any ``model_run`` window are ignored."""
    runs = run_windows(events)
    if not runs:
        raise HalpError("onnxruntime's profiler recorded no runs", stage=STAGE)
    starts = np.asarray([r[0] for r in runs])
    per_run: list[dict[str, float]] = [dict() for _ in runs]
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        ts = int(e["ts"])
        i = int(np.searchsorted(starts, ts, side="right")) - 1
        if i < 0 or ts > runs[i][1]:
            continue
        node = name[: -len("_kernel_time")]
        per_run[i][node] = per_run[i].get(node, 0.0) + float(e["dur"]) / 1e3
    steady = per_run[min(skip, len(per_run) - 1):]
    names = {n for r in steady for n in r}
    return {n: _central([r.get(n, 0.0) for r in steady]) for n in sorted(names)}


def _central(values: Sequence[float]) -> float:
    """Mean of the second quarter of the sorted times: the profiler's whole microseconds averaged, and
    robust to the other tenants of a shared machine, who only ever add time (a node preempted in a run
    is slow in that run)."""
    v = np.sort(np.asarray(values, dtype=float))
    if v.size < 4:
        return float(np.median(v))
    lo, hi = v.size // 4, max(v.size // 2, v.size // 4 + 1)
    return float(v[lo:hi].mean())


# ---------------------------------------------------------------------------------------- mapping
@dataclass
class _Graph:
    nodes: dict[str, onnx.NodeProto]
    producer: dict[str, str]
    consumers: dict[str, list[str]]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "_Graph":
        nodes: dict[str, onnx.NodeProto] = {}
        producer: dict[str, str] = {}
        consumers: dict[str, list[str]] = {}
        for i, n in enumerate(model.graph.node):
            name = n.name or f"#{i}"
            nodes[name] = n
            for t in n.output:
                producer[t] = name
            for t in n.input:
                if t:
                    consumers.setdefault(t, []).append(name)
        return cls(nodes, producer, consumers)


class BlockMap:
    """Which block an onnxruntime node (of the optimised graph) belongs to."""

    def __init__(self, original: onnx.ModelProto, blocks: Sequence[Block]):
        self.blocks = {b.node: b for b in blocks}
        self.by_name: dict[str, str] = {}
        self.by_tensor: dict[str, str] = {}
        names = {n.name: n for n in original.graph.node}
        for b in blocks:
            for n in (b.node, *b.fused):
                self.by_name.setdefault(n, b.node)
                node = names.get(n)
                if node is not None:
                    for t in node.output:
                        self.by_tensor.setdefault(t, b.node)
            self.by_tensor.setdefault(b.out_tensor, b.node)

    def direct(self, name: str, node: onnx.NodeProto | None) -> str | None:
        """The block a node is by name or by the tensors it writes (None for glue)."""
        if name in self.by_name:
            return self.by_name[name]
        base = name
        while (f := _FUSION_NAME.match(base)) is not None:  # (fusions of fusions: peel each)
            base = f.group("name")
            if base in self.by_name:
                return self.by_name[base]
        m = _NCHWC_NAME.match(name)
        if m and m.group("tensor") in self.by_tensor:
            return self.by_tensor[m.group("tensor")]
        if node is not None and node.op_type not in REORDERS:
            for t in node.output:
                if t in self.by_tensor:
                    return self.by_tensor[t]
        return None


def attribute(times: Mapping[str, float], optimized: onnx.ModelProto, bmap: BlockMap, *, per_node_ms: float = 0.0
              ) -> tuple[dict[str, float], dict[str, str], float]:
    """Per block: the summed ms of its nodes and of the glue charged to it (each node plus
    ``per_node_ms``, what a node costs a real run beyond its profiled kernel time); the layout its
    anchor ran in; and the ms no block could take (nodes with no block upstream or downstream)."""
    g = _Graph.of(optimized)
    direct = {n: bmap.direct(n, g.nodes.get(n)) for n in g.nodes}
    layout: dict[str, str] = {}
    for name, blk in direct.items():
        if blk is not None and (blk not in layout or layout[blk] == "nchw"):
            node = g.nodes[name]
            if bmap.blocks[blk].node == name or node.op_type in ("Conv", "FusedConv", "Gemm", "MatMul",
                                                                  "ConvTranspose", "FusedGemm"):
                layout[blk] = "nchwc" if node.domain == NCHWC_DOMAIN else "nchw"

    def walk(name: str, down: bool, depth: int = 0) -> str | None:
        """The nearest block through glue nodes, downstream or upstream."""
        if depth > 8:
            return None
        node = g.nodes.get(name)
        if node is None:
            return None
        nexts = ([c for t in node.output for c in g.consumers.get(t, [])] if down
                 else [g.producer[t] for t in node.input[:1] if t in g.producer])
        for nx in nexts:
            if direct.get(nx) is not None:
                return direct[nx]
        for nx in nexts:
            hit = walk(nx, down, depth + 1)
            if hit is not None:
                return hit
        return None

    out: dict[str, float] = {}
    lost = 0.0
    for name, ms in times.items():
        blk = direct.get(name)
        if blk is None:
            glue = g.nodes.get(name)
            up, down = walk(name, False), walk(name, True)
            # a ReorderOutput exists for what follows (a layer that reads NCHW: misaligned, or fewer input
            # channels than the block); a ReorderInput, and any other glue, for what precedes
            order = (down, up) if glue is not None and glue.op_type == "ReorderOutput" else (up, down)
            blk = next((b for b in order if b is not None), None)
        if blk is None:
            lost += ms + per_node_ms
        else:
            out[blk] = out.get(blk, 0.0) + ms + per_node_ms
    return out, layout, lost


# ---------------------------------------------------------------------------------------- settings
def group_multiplicity(analysis: ChannelAnalysis, blocks: Sequence[Block]) -> dict[int, int]:
    """Channels per unit of each prunable group (1, or the channels of one convolution group when a
    grouped convolution ties them)."""
    out: dict[int, int] = {g.id: 1 for g in analysis.prunable}
    for b in blocks:
        for t in (b.in_tensor, b.out_tensor):
            lab = analysis.labels.get(t)
            if lab is None:
                continue
            ids = lab.ids.reshape(lab.ids.shape[0], -1)[:, 0] if lab.ids.ndim > 1 else lab.ids
            ids = ids[ids >= 0]
            for g, n in zip(*np.unique(analysis.channel_group[ids], return_counts=True)):
                g = int(g)
                if g in out:
                    out[g] = max(out[g], int(n) // max(analysis.groups[g].size, 1))
    return out


# in a misaligned draw, the chance a group that may go below one channel block is drawn there: a share
# drawn from [low, 1] seldom lands below the block, and the direct path that the consumers take there
# is the slowest per channel (the knapsack would squeeze a group there if its price were guessed)
NARROW = 0.25


def width_settings(analysis: ChannelAnalysis, blocks: Sequence[Block], n: int, *, block: int,
                   seed: int = 0, low: float = 0.1, spread: float = 0.2, removal: float = 0.3
                   ) -> list[dict[int, int]]:
    """``n`` width settings (group id -> kept units): dense first, then cycles of every group at a random
    multiple of the channel ``block``, every group at a random misaligned width, a random mix, and
    removals. Each setting draws a keep share ``f`` in [``low``, 1] (the range the knapsack picks from)
    and each group keeps about ``f`` (+- ``spread``) of its units, so the settings run whole models from
    small to large, as pruned models are (their weights and activations in cache with them). In the
    mixed settings a removable group is removed (width 0, its branch gone) with probability ``removal``;
    in the removal settings every group is at a multiple of the block, as the knapsack's choices are,
    and a removable group is removed with probability 0.5: what is left of such a block (its residual
    Add and activation, on the blocked tensors of its neighbours) is then measured in context too. A
    misaligned draw puts a group below one block with probability :data:`NARROW` where it can go there."""
    rng = np.random.default_rng(seed)
    mult = group_multiplicity(analysis, blocks)
    out: list[dict[int, int]] = [{g.id: g.size for g in analysis.prunable}]
    kinds = ("aligned", "misaligned", "mixed", "removal")
    drop = {"mixed": removal, "removal": 0.5}  # per kind: the chance a removable group is removed
    while len(out) < n:
        kind = kinds[(len(out) - 1) % len(kinds)]
        share = rng.uniform(low, 1.0)
        widths = {}
        for g in analysis.prunable:
            size, m = g.size, mult[g.id]
            lo = max(1, int(np.ceil(low * size)))
            cand = np.arange(lo, size + 1)
            aligned = cand[(cand * m) % max(block, 1) == 0] if block > 1 else cand
            misaligned = cand[(cand * m) % max(block, 1) != 0] if block > 1 else cand
            pick_aligned = kind in ("aligned", "removal") or (kind == "mixed" and rng.random() < 0.5)
            pool = aligned if (pick_aligned and aligned.size) or not misaligned.size else misaligned
            want = float(np.clip(share + rng.normal(0.0, spread), low, 1.0)) * size
            near = pool[np.argsort(np.abs(pool - want), kind="stable")[:3]] if pool.size else pool
            narrow = cand[cand * m < block]  # below one block: its consumers read it on the direct path
            if not pick_aligned and narrow.size and rng.random() < NARROW:
                near = narrow
            widths[g.id] = int(rng.choice(near)) if near.size else size
            if g.removable and kind in drop and rng.random() < drop[kind]:
                widths[g.id] = 0
        out.append(widths)
    return out


def keep_of(analysis: ChannelAnalysis, widths: Mapping[int, int], seed: int = 0) -> dict[int, np.ndarray]:
    """Kept units per group: a random subset of each group's size (a group whose channels lie on several
    tensors then shrinks on each of them in proportion, as pruning by importance does)."""
    rng = np.random.default_rng(seed)
    out = {}
    for g, w in sorted(widths.items()):
        size = analysis.groups[g].size
        if w < size:
            out[g] = np.sort(rng.choice(size, size=w, replace=False))
    return out


# ---------------------------------------------------------------------------------------- measuring
def profile_run(backend, model: onnx.ModelProto, *, runs: int, feeds=None) -> tuple[dict[str, float],
                                                                                    onnx.ModelProto, float]:
    """Run ``model`` ``runs`` times (after a warm-up) with onnxruntime's profiler: per-node ms, the
    optimised graph and the wall-clock ms per run (median, profiled)."""
    from .timing import block_feeds_for

    feeds = block_feeds_for(model) if feeds is None else feeds
    with tempfile.TemporaryDirectory(prefix="halp-ctx-") as tmp:
        opt_path = os.path.join(tmp, "opt.onnx")
        sess = backend.session(model, profile_prefix=os.path.join(tmp, "p"), optimized_path=opt_path)
        walls = []
        for _ in range(runs + 2):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            walls.append(time.perf_counter() - t0)
        path = sess.end_profiling()
        with open(path) as fh:
            events = json.load(fh)
        opt = onnx.load(opt_path, load_external_data=False)
    return node_times(events, skip=2), opt, float(np.median(walls[2:])) * 1e3


def variant(loaded: LoadedModel, analysis: ChannelAnalysis, widths: Mapping[int, int]
            ) -> tuple[onnx.ModelProto, np.ndarray]:
    """The model at ``widths`` (the first channels of each group kept) and its kept-channel mask."""
    from ..passes.rewrite import rewrite

    keep = keep_of(analysis, widths, seed=sum(widths.values()))
    if not keep:
        return loaded.model, np.ones(len(analysis.channel_group), dtype=bool)
    res = rewrite(loaded, analysis, keep)
    return res.model, res.kept


def run_sums(events: Sequence[Mapping]) -> tuple[list[float], list[int]]:
    """Per profiled run: the summed kernel ms of its nodes, and how many node executions it had."""
    runs = run_windows(events)
    starts = np.asarray([r[0] for r in runs])
    sums = [0.0] * len(runs)
    counts = [0] * len(runs)
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        i = int(np.searchsorted(starts, int(e["ts"]), side="right")) - 1
        if 0 <= i and int(e["ts"]) <= runs[i][1]:
            sums[i] += float(e["dur"]) / 1e3
            counts[i] += 1
    return sums, counts


def node_cost(backend, models: Sequence[onnx.ModelProto], *, run_overhead_ms: float, runs: int = 10,
              fallback: float = 0.0) -> float:
    """What one onnxruntime node costs a real run beyond its profiled kernel time (ms; often negative:
    the profiler's own timing inflates every kernel). A profiled and an unprofiled session of each of
    ``models`` run alternately, one run each in turn (so both see the same load from other tenants);
    per pair ``(wall - run overhead - kernel sum) / nodes``; the median over all pairs. ``fallback``
    (the null-model estimate) where the pairs disagree with it wildly (a loaded machine)."""
    from .timing import block_feeds_for

    est: list[float] = []
    for model in models:
        feeds = block_feeds_for(model)
        with tempfile.TemporaryDirectory(prefix="halp-ctx-") as tmp:
            prof = backend.session(model, profile_prefix=os.path.join(tmp, "p"))
            plain = backend.session(model)
            walls = []
            for i in range(runs + 2):
                prof.run(None, feeds)
                t0 = time.perf_counter()
                plain.run(None, feeds)
                walls.append((time.perf_counter() - t0) * 1e3)
            with open(prof.end_profiling()) as fh:
                sums, counts = run_sums(json.load(fh))
        for wall, k, nodes in list(zip(walls, sums, counts))[2:]:
            if nodes:
                est.append((wall - run_overhead_ms - k) / nodes)
    if not est:
        return fallback
    value = float(np.median(est))
    # a node's dispatch costs microseconds: anything far outside that is other tenants' noise
    return value if abs(value - fallback) <= 0.01 else fallback


def _widths_record(widths: Mapping[int, int]) -> dict[str, int]:
    return {str(g): int(w) for g, w in widths.items()}


def observe(loaded: LoadedModel, analysis: ChannelAnalysis, blocks: Sequence[Block], backend,
            settings: Iterable[Mapping[int, int]], *, runs: int = 10, per_node_ms: float = 0.0, on_setting=None,
            passes: int = 1) -> tuple[list[Observation], list[dict]]:
    """Time the model at each width setting in context: the observations of every block, and one
    record per setting (widths, profiled wall ms, kernel ms, unattributed ms).

    ``passes`` > 1 times every setting again in later passes over all of them (every other pass in
    reverse order, so a setting's turns lie far apart in time) and keeps, per block, the smallest of its
    per-pass medians: a busy spell of the shared machine inflates the turns it falls on, not all of a
    setting's turns at once, so one disturbed turn no longer bends a table."""
    from ..passes.liveness import live_outputs

    settings = list(settings)
    bmap = BlockMap(loaded.model, blocks)
    sources = block_sources(loaded.model.graph, blocks)
    records: list[dict | None] = [None] * len(settings)
    best: dict[int, dict] = {}  # setting -> per_block, layout, kept, wall, kernel, lost of the best turns
    dense_live: frozenset[str] | None = None
    for k in range(max(1, int(passes))):
        order = range(len(settings)) if k % 2 == 0 else reversed(range(len(settings)))
        for i in order:
            widths = settings[i]
            if k and i not in best:
                continue  # refused in the first pass
            try:
                model, kept = variant(loaded, analysis, widths)
                if k == 0 and any(w == 0 for w in widths.values()):  # removals can cut the outputs off
                    # together: the runtime then folds the rest of the model away, and its layers would
                    # read as free
                    dense_live = live_outputs(loaded.model) if dense_live is None else dense_live
                    if not dense_live <= live_outputs(model, like=loaded.model):
                        raise HalpError("its removed branches cut the outputs off from the inputs")
                times, opt, wall = profile_run(backend, model, runs=runs)
            except Exception as exc:  # noqa: BLE001 - a width the runtime refuses: that setting is left out
                if k:
                    continue  # it ran in the first pass: that pass's turn stands
                if not keep_of(analysis, widths):
                    raise  # the dense model itself: a real error
                records[i] = {"setting": i, "widths": _widths_record(widths),
                              "error": " ".join(str(exc).split())[:200]}
                continue
            per_block, layout, lost = attribute(times, opt, bmap, per_node_ms=per_node_ms)
            kernel = float(sum(times.values()))
            got = best.get(i)
            if got is None:
                best[i] = {"per_block": dict(per_block), "layout": layout, "kept": kept, "wall": wall,
                           "kernel": kernel, "lost": lost}
            else:
                for node, ms in per_block.items():
                    got["per_block"][node] = min(ms, got["per_block"].get(node, ms))
                got["wall"], got["kernel"] = min(got["wall"], wall), min(got["kernel"], kernel)
            if on_setting is not None and k == 0:
                on_setting()
    obs: list[Observation] = []
    for i in sorted(best):
        got = best[i]
        per_block, layout, kept = got["per_block"], got["layout"], got["kept"]
        gone = constant_nodes(analysis, kept, blocks)  # not in the variant, or folded: no observation
        widths_at = [(0, 0) if b.node in gone else block_widths(analysis, kept, b) for b in blocks]
        at = folded(sources, widths_at)
        fused = half_constant(sources, widths_at)  # an op on a constant: fused by the runtime, not its table's
        for j, (b, (ci, co)) in enumerate(zip(blocks, at)):
            if co <= 0 or j in fused:
                continue
            if ci <= 0:  # the input branch was removed: what is left (the epilogue ops, if any) is its orphans'
                parts = orphan_signatures(b.signature)
                for o in parts:  # (a block without epilogue folds away whole: nothing to record)
                    obs.append(Observation(o.key(), b.node, co, co, per_block.get(b.node, 0.0) / len(parts),
                                           "nchw", i))
                continue
            obs.append(Observation(b.signature.key(), b.node, ci, co, per_block.get(b.node, 0.0),
                                   layout.get(b.node, "nchw"), i))
        records[i] = {"setting": i, "widths": _widths_record(settings[i]), "wall_ms": got["wall"],
                      "kernel_ms": got["kernel"], "unattributed_ms": got["lost"]}
    return obs, [r for r in records if r is not None]


# ---------------------------------------------------------------------------------------- tables
def retime_slow(loaded: LoadedModel, analysis: ChannelAnalysis, blocks: Sequence[Block], backend,
                settings: Sequence[Mapping[int, int]], obs: Sequence[Observation], rule, *, runs: int = 10,
                per_node_ms: float = 0.0, tol: float = 0.08) -> tuple[list[Observation], list[int]]:
    """Time again the settings whose blocks, summed, ran slower than the tables fitted from all the
    settings price them (by more than ``tol`` and three deviations of the settings' spread): a busy spell
    of the shared machine that held a setting's turns in every pass slows all of its blocks at once,
    which no per-block comparison sees. Per block the smaller of the two times is kept (other tenants
    only add time); returns the observations and the settings timed again."""
    from .fit import evaluate, fit_points
    from .signature import BlockSignature

    pts = points_by_key(obs)
    fits = {k: fit_points(BlockSignature.from_key(k), v, rule) for k, v in pts.items()}
    meas: dict[int, float] = {}
    pred: dict[int, float] = {}
    for o in obs:
        meas[o.setting] = meas.get(o.setting, 0.0) + o.ms
        pred[o.setting] = pred.get(o.setting, 0.0) + evaluate(fits[o.key], o.c_in, o.c_out)
    ids = sorted(i for i in meas if pred[i] > 0 and meas[i] > 0)
    if len(ids) < 4:
        return list(obs), []
    logr = np.log([meas[i] / pred[i] for i in ids])
    mid = float(np.median(logr))
    spread = 1.4826 * float(np.median(np.abs(logr - mid)))
    slow = [i for i, r in zip(ids, logr) if r - mid > max(np.log1p(tol), 3.0 * spread)]
    if not slow:
        return list(obs), []
    again, _ = observe(loaded, analysis, blocks, backend, [settings[i] for i in slow], runs=runs,
                       per_node_ms=per_node_ms)
    best = {(o.setting, o.node, o.key, o.c_in, o.c_out): o for o in obs}
    for o in again:
        o = replace(o, setting=slow[o.setting])
        k = (o.setting, o.node, o.key, o.c_in, o.c_out)
        if k in best and o.ms < best[k].ms:
            best[k] = o
    return list(best.values()), slow


def points_by_key(observations: Iterable[Observation]) -> dict[str, dict[tuple[int, int], float]]:
    """Per signature: ``(c_in, c_out) -> ms``, the median over the blocks and settings that ran there."""
    acc: dict[str, dict[tuple[int, int], list[float]]] = {}
    for o in observations:
        acc.setdefault(o.key, {}).setdefault((o.c_in, o.c_out), []).append(o.ms)
    return {k: {p: float(np.median(v)) for p, v in pts.items()} for k, pts in acc.items()}


def _quick(point_budget_s: float | None) -> bool:
    """A tiny per-point timing budget (``$HALP_ONNX_TIMING_BUDGET_S`` below 0.05 s: the tests)."""
    if point_budget_s is None:
        point_budget_s = float(os.environ.get("HALP_ONNX_TIMING_BUDGET_S", "0.1"))
    return point_budget_s < 0.05


def plan(dense_ms: float, *, budget_s: float | None = None, point_budget_s: float | None = None
         ) -> tuple[int, int]:
    """(settings, profiled runs per setting) for a model whose dense run takes ``dense_ms``: about
    ``budget_s`` seconds of whole-model runs (``$HALP_ONNX_INCONTEXT_S``, default 40), fewer runs when
    the per-point timing budget is small (``$HALP_ONNX_TIMING_BUDGET_S``, tests)."""
    if budget_s is None:
        budget_s = float(os.environ.get("HALP_ONNX_INCONTEXT_S", "40"))
    quick = _quick(point_budget_s)
    runs = 3 if quick else int(np.clip(round(400.0 / max(dense_ms, 1e-3)), 6, 30))
    per_setting_s = 0.3 + 15 * dense_ms / 1e3 + (runs + 2) * dense_ms / 1e3  # session (graph optimiser) + runs
    n = 6 if quick else int(np.clip(budget_s / per_setting_s, 9, 24))
    return n, runs


def passes(point_budget_s: float | None = None) -> int:
    """Passes over the settings of a cold profile (:func:`observe`): ``$HALP_ONNX_INCONTEXT_PASSES``,
    default 2 (1 where the per-point timing budget is tiny: tests)."""
    if _quick(point_budget_s):
        return 1
    try:
        return max(1, int(os.environ.get("HALP_ONNX_INCONTEXT_PASSES", "2")))
    except ValueError:
        raise HalpError(f"$HALP_ONNX_INCONTEXT_PASSES {os.environ['HALP_ONNX_INCONTEXT_PASSES']!r}: expected a "
                        "positive integer", stage=STAGE) from None


def fitted_table(table, sig, points: Mapping[tuple[int, int], float], rule) -> None:
    """Fill ``table`` (a :class:`~halp_onnx.profiles.table.LatencyTable` of the right domain) from
    in-context points: its points (source ``incontext``), fit, step."""
    from .fit import fit_points, fit_step

    for (ci, co), ms in points.items():
        k = f"{ci},{co}"
        table.points[k] = float(ms)
        table.sources[k] = "incontext"
    pts: dict[tuple[int, int], float] = {}
    for k, v in table.points.items():
        if table.sources.get(k) == "incontext":
            a, b = k.split(",")
            pts[(int(a), int(b))] = v
    table.fit = fit_points(sig, pts, rule)
    table.step = fit_step(table.fit, table.c_in_max, table.c_out_max)
    table.complete = True
