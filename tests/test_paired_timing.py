"""Paired timing: dense and pruned alternated in one process, the median of per-round ratios."""
from __future__ import annotations

import pytest

from halp_onnx.examples import example
from halp_onnx.profiles.timing import Timing, paired_timing


class DriftingBackend:
    """A machine whose load changes from round to round: absolute times swing by 3x, the ratio holds."""

    def __init__(self, ratio: float):
        self.ratio = ratio
        self.turn = 0

    def time_model(self, model, feeds=None, *, budget_s=2.0):
        load = 1.0 + 2.0 * ((self.turn // 2) % 3 == 1)  # every other pair of turns runs 3x slower
        self.turn += 1
        base = 10.0 if model.graph.name == "dense" else 10.0 * self.ratio
        return Timing(base * load, base * load, base * load, 5)


def test_ratio_is_robust_to_load_that_swings_absolute_times():
    dense, pruned = example("resnet"), example("resnet")
    dense.graph.name, pruned.graph.name = "dense", "pruned"
    pt = paired_timing(DriftingBackend(0.5), dense, pruned, rounds=7, budget_s=0.1)
    assert pt.ratio == pytest.approx(0.5)
    assert pt.rounds == 7 and pt.ratio_p10 == pytest.approx(0.5) and pt.ratio_p90 == pytest.approx(0.5)


def test_paired_timing_on_onnxruntime():
    from halp_onnx.profiles.backends import OrtCpuBackend

    m = example("resnet")
    pt = paired_timing(OrtCpuBackend(1), m, m, rounds=3, budget_s=0.3)
    assert 0.5 < pt.ratio < 2.0 and pt.reference_ms > 0 and pt.ms > 0
