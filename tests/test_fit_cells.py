"""A fitted table keeps, at the cells of padded widths it measured, what its line misses there."""
from __future__ import annotations

import json
import math

import pytest

from halp_onnx.profiles.fit import CELL_PRIOR, LayoutRule, evaluate, fit_points, layout_class
from halp_onnx.profiles.signature import BlockSignature

CONV = BlockSignature(op="Conv", kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups="dense",
                      in_hw=(8, 8), batch=1, dtype="fp32", epilogue=("Relu",))
GEMM = BlockSignature(op="Gemm", kernel=(), stride=(), pads=(), dilation=(), groups="dense", in_hw=(1,),
                      batch=1, dtype="fp32", epilogue=())
RULE = LayoutRule(block=16, in_multiple=4, depthwise_multiple=4)


def pad(c: int) -> int:
    return 16 * math.ceil(c / 16)


def blocked(ci: int, co: int) -> float:
    """A blocked kernel linear in its padded widths, except that the dense cell (64, 64) runs 20% faster
    than the line through the others (a kernel step the bilinear model cannot draw)."""
    t = 0.004 + 2e-5 * pad(ci) * pad(co)
    return 0.8 * t if (pad(ci), pad(co)) == (64, 64) else t


def points() -> dict[tuple[int, int], float]:
    widths = (16, 20, 32, 36, 48, 52, 64)
    return {(ci, co): blocked(ci, co) for ci in widths for co in widths if layout_class("conv", RULE, ci, co) == "nchwc"}


def test_a_measured_cell_is_priced_toward_its_own_points():
    pts = points()
    fit = fit_points(CONV, pts, RULE)
    cells = fit["classes"]["nchwc"]["cells"]
    line = fit["classes"]["nchwc"]["coef"]
    on_line = line[0] + line[1] * 64 + line[2] * 64 + line[3] * 64 * 64
    n = sum(1 for ci, co in pts if (pad(ci), pad(co)) == (64, 64))
    assert n == 4 and "64,64" in cells  # 52 and 64 both pad to 64
    # n points: n / (n + 1) of the way (in log) from the line to the measured time
    want = math.exp(math.log(blocked(64, 64) / on_line) * n / (n + CELL_PRIOR))
    assert cells["64,64"] == pytest.approx(want, rel=1e-3)
    assert evaluate(fit, 64, 64) == pytest.approx(on_line * want, rel=1e-3)
    assert abs(evaluate(fit, 64, 64) - blocked(64, 64)) < abs(on_line - blocked(64, 64))
    # widths that pad to the same cell share its factor; a cell never measured is priced on the line
    assert evaluate(fit, 60, 64) == pytest.approx(evaluate(fit, 64, 64))
    assert "80,80" not in cells
    json.dumps(fit)


def test_points_below_the_noise_and_gemms_carry_no_cells():
    tiny = {(ci, co): 1e-3 for ci, co in points()}
    assert "cells" not in fit_points(CONV, tiny, RULE)["classes"]["nchwc"]
    gemm = fit_points(GEMM, {(c, 10): 1e-3 * c * (1.5 if c == 64 else 1.0) for c in (16, 32, 48, 64, 80)}, RULE)
    assert all("cells" not in cls for cls in gemm["classes"].values())
