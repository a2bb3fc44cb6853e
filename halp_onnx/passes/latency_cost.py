"""Pass ``latency-cost``: per channel group, the allowed widths and the latency of each.

Each timed block (:mod:`halp_onnx.profiles.blocks`) is *attributed* to one group: the group whose
channels are its output channels (its producer side), else the group feeding its input, else
nobody (a constant). A group's cost at width ``k`` is the sum of its blocks' latencies with the
group at ``k`` and every other group at its current width, so the costs of all groups plus the
constant add up to the model's predicted latency at the current widths. Because a block's
latency also depends on its input side, the knapsack is re-solved with updated widths (HALP's
approach) until the widths settle.

Widths are multiples of the group's neuron-group size: the largest latency step (from the
target's profile) among the blocks the group touches, kept between 8 and 64 choices per group; the dense width is always allowed, zero only where the rewrite can remove the branch.

Choices are **monotone**: a width whose latency (every block the group touches, on either side,
the other groups dense) exceeds that of a wider width is dropped, so the knapsack never picks a width
that is slower than a wider one (a CPU layer whose width falls off the runtime's blocked kernels can
cost more than the dense layer).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from ..profiles.blocks import Block
from ..profiles.folding import Sources, folded
from .channel_groups import ChannelAnalysis

STAGE = "latency-cost"


@dataclass(frozen=True)
class Side:
    """Width of one side of a block as a function of group widths: fixed + sum(count_g * w_g / size_g),
    or, once the groups' importance orders are known (:meth:`CostModel.with_orders`), the count of the
    side's own channels among each group's ``w_g`` most important: a group whose channels lie unevenly on
    several tensors (a split after a channel shuffle, a concat) does not shrink each of them in
    proportion, and the rewrite removes exactly the channels the order puts last."""

    fixed: int
    counts: tuple[tuple[int, int], ...]  # (group id, positions of that group on this side)
    members: tuple[tuple[int, ...], ...] = ()  # per count: the group's channel indices at those positions
    ranks: tuple[tuple[int, ...], ...] = ()  # per count: their places in the group's order, ascending

    def width(self, widths: dict[int, int], sizes: dict[int, int]) -> int:
        total = self.fixed
        for i, (g, n) in enumerate(self.counts):
            w = widths.get(g, sizes[g])
            if w == sizes[g]:
                total += n
            elif self.ranks and self.ranks[i]:
                r = self.ranks[i]
                total += int(round(n * bisect.bisect_left(r, w) / len(r)))
            else:
                total += int(round(n * w / sizes[g]))
        return total

    def groups(self) -> tuple[int, ...]:
        return tuple(g for g, _ in self.counts)

    def ordered(self, rank_of: dict[int, np.ndarray]) -> "Side":
        """This side priced by the groups' orders (``rank_of[g][channel index]``: its place, most
        important first); groups without an order keep the proportional rule."""
        if not self.members:
            return self
        ranks = tuple(tuple(np.sort(rank_of[g][np.asarray(mem, dtype=np.int64)]).tolist()) if g in rank_of else ()
                      for (g, _), mem in zip(self.counts, self.members))
        return replace(self, ranks=ranks)


@dataclass(frozen=True)
class BlockCost:
    block: Block
    c_in: Side
    c_out: Side
    owner: int | None  # the group this block's latency is attributed to
    dies_with: tuple[int, ...] = ()  # groups whose removal takes this block away (a branch's dead producer)


@dataclass(frozen=True)
class GroupChoices:
    group: int
    size: int
    step: int
    widths: tuple[int, ...]  # allowed kept counts, ascending, last = size


@dataclass(frozen=True)
class CostModel:
    """Everything the knapsack loop needs, frozen; latencies come from ``block_ms``."""

    blocks: tuple[BlockCost, ...]
    choices: dict[int, GroupChoices]
    sizes: dict[int, int]
    frozen: dict[int, str] = field(default_factory=dict)  # prunable groups held dense, with the reason
    shadow: dict[int, tuple[int, ...]] = field(default_factory=dict)  # removable group -> groups gone with it
    sources: tuple[Sources, ...] = ()  # per block, where its data comes from (profiles.folding)

    def alive_widths(self, bc: BlockCost, widths: dict[int, int]) -> tuple[int, int]:
        """(c_in, c_out) at ``widths`` as if the block were alive (its removal ignored)."""
        return bc.c_in.width(widths, self.sizes), bc.c_out.width(widths, self.sizes)

    def block_widths(self, bc: BlockCost, widths: dict[int, int]) -> tuple[int, int]:
        """(c_in, c_out) at ``widths``; c_out is 0 where a group the block dies with is removed."""
        ci, co = self.alive_widths(bc, widths)
        return (ci, 0) if any(widths.get(g, 1) == 0 for g in bc.dies_with) else (ci, co)

    def gone_with_removals(self, widths: dict[int, int]) -> set[int]:
        """The groups that go with the groups ``widths`` removes (their shadows)."""
        return {w for g, ws in self.shadow.items() if widths.get(g) == 0 for w in ws}

    def with_orders(self, orders: dict[int, np.ndarray]) -> "CostModel":
        """This cost model with every block's widths counted from the groups' importance orders
        (``orders[g]``: the group's channel indices, most important first; a width ``w`` keeps the first
        ``w``), so its prediction is the rewritten model's (:class:`Side`)."""
        rank_of = {}
        for g, order in orders.items():
            if g in self.sizes:
                r = np.empty(self.sizes[g], dtype=np.int64)
                r[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
                rank_of[g] = r
        return replace(self, blocks=tuple(replace(bc, c_in=bc.c_in.ordered(rank_of), c_out=bc.c_out.ordered(rank_of))
                                          for bc in self.blocks))


def _side(analysis: ChannelAnalysis, tensor: str, dense: int, prunable: set[int]) -> Side:
    lab = analysis.labels.get(tensor)
    if lab is None:
        return Side(dense, ())
    ids = lab.ids.reshape(lab.ids.shape[0], -1)[:, 0] if lab.ids.ndim > 1 else lab.ids
    spread = ids.size != dense
    flat = lab.ids.reshape(-1) if spread else ids
    valid = flat[flat >= 0]
    groups = analysis.channel_group[valid]
    counts, members = [], []
    moving = 0
    for g in np.unique(groups):
        if int(g) not in prunable:
            continue
        n = int((groups == g).sum())
        if spread:  # channels spread over positions: scale to the dense width
            n = int(round(dense * n / flat.size))
        counts.append((int(g), n))
        members.append(tuple(int(i) for i in analysis.channel_index[valid[groups == g]]))
        moving += n
    return Side(dense - moving, tuple(counts), tuple(members))


def build_cost_model(analysis: ChannelAnalysis, blocks: Sequence[Block], step_of, *, min_keep: float = 0.1,
                     allow_removal: bool = True, frozen: dict[int, str] | None = None,
                     max_step_share: int = 8, max_choices: int = 64, round_to: int = 1,
                     block_ms: Callable[..., float] | None = None, monotone: bool = True,
                     sources: Sequence[Sources] = (), align: int = 1) -> CostModel:
    """Attribute blocks to groups and list each prunable group's allowed widths.

    ``step_of(signature) -> int`` is the target's latency step for a block; ``frozen`` maps group ids
    to the reason they stay dense (first conv, user choice); ``round_to``: kept widths are multiples of it
    (``--round-to``, as Torch-Pruning's ``round_to``), the dense width always allowed. ``align``: the
    channel multiple that keeps a width on the runtime's fast kernels (onnxruntime's CPU provider runs a
    convolution on its blocked kernels only where its input width is a multiple of 4; the profile's
    :class:`~halp_onnx.profiles.fit.LayoutRule`): a step that the choice limits cut to a width off it
    (5 for a 40-channel group) is moved to the nearest multiple of ``align`` (:func:`aligned_step`).
    ``block_ms(signature, c_in, c_out)`` prices the widths for the monotone filter (``monotone``; no
    filter without it). ``sources`` (:func:`~halp_onnx.profiles.folding.block_sources` of ``blocks``): the
    whole-model total folds away the blocks a choice leaves computing from constants."""
    frozen = dict(frozen or {})
    prunable = {g.id for g in analysis.prunable if g.id not in frozen}
    sizes = {g.id: g.size for g in analysis.groups}
    vanishing: dict[str, list[int]] = {}  # node -> removable groups it disappears with
    if allow_removal:
        for cg in analysis.prunable:
            if cg.removable and cg.id in prunable:
                for n in cg.vanishes:
                    vanishing.setdefault(n, []).append(cg.id)
    costs = []
    steps: dict[int, int] = {g: 1 for g in prunable}
    for b in blocks:
        cin = _side(analysis, b.in_tensor, b.c_in, prunable)
        cout = _side(analysis, b.out_tensor, b.c_out, prunable)
        owner = None
        if cout.counts:
            owner = max(cout.counts, key=lambda gc: gc[1])[0]
        elif cin.counts:
            owner = max(cin.counts, key=lambda gc: gc[1])[0]
        dies = tuple(g for g in vanishing.get(b.node, ()) if g != owner)
        costs.append(BlockCost(b, cin, cout, owner, dies))
        s = int(step_of(b.signature))
        for g in set(cin.groups()) | set(cout.groups()):
            steps[g] = max(steps[g], s)
    choices = {}
    for cg in analysis.prunable:
        if cg.id in frozen:
            continue
        size = cg.size
        step = max(1, min(max(steps[cg.id], math.ceil(size / max_choices)), size // max_step_share or 1))
        step = aligned_step(step, size, align, max_choices)
        if round_to > 1:
            step = math.ceil(step / round_to) * round_to
        lo = max(step, int(math.ceil(min_keep * size / step)) * step) if min_keep > 0 else step
        widths = [w for w in range(step, size, step) if w >= lo] + [size]
        if allow_removal and cg.removable:
            widths = [0] + widths
        choices[cg.id] = GroupChoices(cg.id, size, step, tuple(sorted(set(widths))))
    shadow = {g: tuple(w for w in analysis.groups[g].shadow if w in choices)
              for g, ch in choices.items() if ch.widths[0] == 0 and analysis.groups[g].shadow}
    cm = CostModel(tuple(costs), choices, sizes, frozen, {g: w for g, w in shadow.items() if w}, tuple(sources))
    if monotone and block_ms is not None:
        cm = monotone_choices(cm, block_ms)
    return cm


def aligned_step(step: int, size: int, align: int, max_choices: int = 64) -> int:
    """``step`` moved to the nearest multiple of ``align`` (at least ``align``, and no more than
    ``max_choices`` widths), where the group has an aligned width below its dense one; ``step`` as it is
    otherwise. Every width a multiple of the step then stays on the runtime's fast kernels: a width off
    them (LR-ASPP's 40-channel group cut to 30) runs its convolutions on the plain NCHW path, which
    reorders the layout of the ops after it as well (the segmentation head's final Resize: 0.66 ms on
    blocked tensors, 1.18 ms on plain ones, measured in context), and a table keyed by a block's own
    widths does not see its neighbours' layout."""
    if align <= 1 or step % align == 0 or size < 2 * align:
        return step
    nearest = max(align, int(step / align + 0.5) * align)
    return max(nearest, align * math.ceil(math.ceil(size / max_choices) / align))


def pin_removal(cm: CostModel, groups) -> CostModel:
    """``cm`` with ``groups`` no longer allowed to go to zero channels (their branch must stay)."""
    pinned = set(groups)
    choices = {g: (replace(ch, widths=tuple(w for w in ch.widths if w > 0)) if g in pinned and len(ch.widths) > 1
                   else ch) for g, ch in cm.choices.items()}
    return replace(cm, choices=choices)


def touch_costs(cm: CostModel, group: int, widths: dict[int, int], block_ms) -> np.ndarray:
    """Latency (ms) of every block ``group`` touches (either side) at each of its allowed widths, the
    other groups at ``widths``."""
    ch = cm.choices[group]
    row = np.zeros(len(ch.widths))
    touching = [bc for bc in cm.blocks
                if group in bc.c_in.groups() or group in bc.c_out.groups() or group in bc.dies_with]
    trial = dict(widths)
    for j, w in enumerate(ch.widths):
        trial[group] = w
        for bc in touching:
            ci, co = cm.block_widths(bc, trial)
            row[j] += block_ms(bc.block.signature, ci, co) if co > 0 else 0.0
    return row


def monotone_choices(cm: CostModel, block_ms) -> CostModel:
    """``cm`` with every width dropped whose latency (the other groups dense) exceeds a wider width's;
    the dense width always stays."""
    cache: dict = {}

    def cached(sig, ci, co):
        k = (sig, ci, co)
        if k not in cache:
            cache[k] = block_ms(sig, ci, co)
        return cache[k]

    dense = {g: ch.size for g, ch in cm.choices.items()}
    out = {}
    for g, ch in cm.choices.items():
        cost = touch_costs(cm, g, dense, cached)
        best_wider = np.minimum.accumulate(cost[::-1])[::-1]  # cheapest at this width or wider
        keep = [w for j, w in enumerate(ch.widths)
                if j == len(ch.widths) - 1 or cost[j] <= best_wider[j + 1] * (1 + 1e-9) + 1e-12]
        out[g] = GroupChoices(ch.group, ch.size, ch.step, tuple(keep))
    return replace(cm, choices=out)


def shadowed_values(cm: CostModel, values: dict[int, np.ndarray], widths: dict[int, int]) -> dict[int, np.ndarray]:
    """``values`` with each removable group's width-0 choice charged the value, at ``widths``, of the
    groups that go with it (their producers vanish or compute constants): the knapsack cannot keep their
    importance while deleting the layers that carry it. Linearised at ``widths``, as the costs are."""
    if not cm.shadow:
        return values
    out = dict(values)
    for g, gone in cm.shadow.items():
        if g in out and cm.choices[g].widths[0] == 0:
            row = np.array(out[g], dtype=np.float64)
            for w in gone:
                if w in values:
                    j = cm.choices[w].widths.index(widths[w]) if widths.get(w) in cm.choices[w].widths else -1
                    row[0] -= float(values[w][j])
            out[g] = row
    return out


def group_costs(cm: CostModel, widths: dict[int, int], block_ms) -> tuple[dict[int, np.ndarray], float]:
    """Per group: latency (ms) of its attributed blocks at each allowed width, others at ``widths``;
    and the latency of the blocks no group owns. ``block_ms(signature, c_in, c_out) -> ms``.

    A block that dies with another group's removal (``dies_with``) is priced first-order at ``widths``,
    so that the rows add up to the model's latency there: alive, the removing group's width-0 choice
    saves its latency; dead, its owner's row carries only the change from its current width (widening a
    dead layer is not free: it comes back if the removal is undone), and the one group whose removal
    kills it pays it back at its other widths."""
    per_group = {g: np.zeros(len(ch.widths)) for g, ch in cm.choices.items()}
    constant = 0.0

    def ms(bc: BlockCost, w: dict[int, int]) -> float:
        ci, co = cm.alive_widths(bc, w)
        return block_ms(bc.block.signature, ci, co) if co > 0 else 0.0

    for bc in cm.blocks:
        zeros = [d for d in bc.dies_with if widths.get(d, 1) == 0]
        here = ms(bc, widths) if bc.dies_with else 0.0
        if bc.dies_with:
            if not zeros:
                for d in bc.dies_with:
                    if d in cm.choices and cm.choices[d].widths[0] == 0:
                        per_group[d][0] -= here
            elif len(zeros) == 1 and zeros[0] in cm.choices:
                row_d = per_group[zeros[0]]
                for j, w in enumerate(cm.choices[zeros[0]].widths):
                    if w > 0:
                        row_d[j] += here
        shift = here if zeros else 0.0  # dead now: rows carry changes only
        if bc.owner is None or bc.owner not in cm.choices:
            constant += ms(bc, widths) - shift
            continue
        g = bc.owner
        row = per_group[g]
        trial = dict(widths)
        for j, w in enumerate(cm.choices[g].widths):
            trial[g] = w
            row[j] += ms(bc, trial) - shift
    return per_group, constant


def total_latency(cm: CostModel, widths: dict[int, int], block_ms, overhead_ms: float = 0.0) -> float:
    """The model's predicted latency at ``widths``: every block at its widths, those computed from
    constants only (a branch whose input the order emptied) folded away (``CostModel.sources``)."""
    total = overhead_ms
    at = folded(cm.sources, [cm.block_widths(bc, widths) for bc in cm.blocks])
    for bc, (ci, co) in zip(cm.blocks, at):
        total += block_ms(bc.block.signature, ci, co) if co > 0 else 0.0
    return total


def ranked_values(analysis: ChannelAnalysis, scores: np.ndarray, choices: GroupChoices) -> tuple[np.ndarray, np.ndarray]:
    """(channel indices of the group, most important first; kept importance at each allowed width)."""
    members = np.nonzero(analysis.channel_group == choices.group)[0]
    members = members[np.argsort(analysis.channel_index[members])]
    order = members[np.argsort(-scores[members], kind="stable")]
    cum = np.concatenate([[0.0], np.cumsum(scores[order])])
    return analysis.channel_index[order], cum[np.asarray(choices.widths)]
