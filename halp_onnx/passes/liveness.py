"""Pass ``liveness``: a selection whose removed branches cut an output off from the inputs is refused
before it is written, and the knapsack is asked for one that is not.

Each group's removal is checked alone when the channels are analysed (``ChannelGroup.removable``), but
removals compose: every attention branch of a ViT can go on its own, and with all of them gone the class
token never sees the image. Whether an output still depends on an input is a question about positions
(the class token is one row of a live tensor), so it is answered numerically: the rewritten model is run
on different random inputs and an output that does not change has been cut off (:func:`live_outputs`).
Where the knapsack's solution is dead, :func:`restorer` finds removed groups whose branches, kept at their
smallest widths, bring the outputs back (halving the candidates, a few runs each), and the caller forbids
their removal and solves again.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import onnx

from .verify import _run_all, random_inputs

STAGE = "liveness"


def live_outputs(model: onnx.ModelProto, *, like: onnx.ModelProto | None = None, trials: int = 2,
                 seed: int = 0) -> frozenset[str]:
    """The outputs of ``model`` that change when its inputs do (random inputs, ``trials`` sets, shaped
    as ``like``'s inputs: the loaded model's static shapes where ``model`` keeps a dynamic batch)."""
    rng = np.random.default_rng(seed)
    feeds = [random_inputs(like if like is not None else model, rng) for _ in range(max(trials, 2))]
    names, outs = _run_all(model, feeds)
    return frozenset(n for k, n in enumerate(names)
                     if any(not np.array_equal(outs[0][k], later[k]) for later in outs[1:]))


def restorer(removed: Sequence[int], alive_without: Callable[[frozenset[int]], bool]) -> list[int] | None:
    """Groups of ``removed`` whose restoring makes the model live (few, not always the fewest), or None.

    ``alive_without(restored)``: whether the model with every removed group except ``restored`` is
    live. Restoring more never kills a model, so the candidates are split in halves (delta debugging):
    with one half restored, what of the other is needed is searched, then what of the first is needed
    beside it. One needed group costs about ``2 log2(len(removed))`` calls; SqueezeNet with both
    branches of several Fire modules removed needs one per module."""
    cands = list(removed)
    if not cands or not alive_without(frozenset(cands)):
        return None

    def needed(part: list[int], fixed: frozenset[int]) -> list[int]:
        if alive_without(fixed):
            return []
        if len(part) == 1:
            return part
        a, b = part[: len(part) // 2], part[len(part) // 2:]
        got_a = needed(a, fixed | frozenset(b))
        return got_a + needed(b, fixed | frozenset(got_a))

    return needed(cands, frozenset())
