"""In-context latency tables (ort-cpu): per-node events mapped back to blocks, fitted staircase tables,
monotone width choices, grouped convolutions priced. Small models, short timing budgets, no assertion
on a measured time."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from halp_onnx.api import inspect
from halp_onnx.errors import HalpError
from halp_onnx.examples import example
from halp_onnx.passes.latency_cost import build_cost_model, touch_costs
from halp_onnx.passes.select import channel_scores, keep_by_ratio
from halp_onnx.profiles import incontext as ic
from halp_onnx.profiles import store
from halp_onnx.profiles.block_model import block_feeds, block_model
from halp_onnx.profiles.blocks import Block, block_widths, model_blocks
from halp_onnx.profiles.fit import LayoutRule, evaluate, fit_points, fit_step, layout_class, probe_rule
from halp_onnx.profiles.latency import domains, latency_model, predict
from halp_onnx.profiles.signature import BlockSignature

from graph_helpers import finish

CONV = BlockSignature(op="Conv", kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups="dense",
                      in_hw=(8, 8), batch=1, dtype="fp32", epilogue=("Relu",))
RULE = LayoutRule(block=16, in_multiple=4, depthwise_multiple=4)


@pytest.fixture(autouse=True)
def profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HALP_ONNX_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HALP_ONNX_TIMING_BUDGET_S", "0.01")
    monkeypatch.setattr(store, "SHIPPED_DIR", tmp_path / "no-shipped")  # no profile of another device
    return tmp_path / "profiles"


def pad(c: int, q: int = 16) -> int:
    return q * math.ceil(c / q)


# ---------------------------------------------------------------------------------------- events, mapping
def _event(name: str, ts: int, dur: int, op: str = "Conv") -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "ph": "X", "args": {"op_name": op}}


def _run(ts: int, dur: int) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur, "ph": "X", "args": {}}


def test_node_times_are_per_run_central_values_without_the_warm_up():
    events = [_run(0, 100), _event("a", 1, 50), _event("b", 60, 10, "Relu")]  # warm-up run, skipped
    for r in range(1, 6):
        t0 = 1000 * r
        events += [_run(t0, 100), _event("a", t0 + 1, 20 + r), _event("b", t0 + 40, 4, "Relu"),
                   _event("b", t0 + 50, 1, "Relu")]  # a node that runs twice in a run: summed
    events.append(_event("late", 99999, 7))  # outside every run
    t = ic.node_times(events, skip=1)
    assert set(t) == {"a", "b"}
    assert t["a"] == pytest.approx(0.023, abs=1.5e-3) and t["b"] == pytest.approx(0.005)
    sums, counts = ic.run_sums(events)
    assert counts == [2, 3, 3, 3, 3, 3] and sums[1] == pytest.approx((21 + 5) / 1e3)


def _conv(name, x, w, y, **kw):
    return helper.make_node("Conv", [x, w], [y], name=name, **kw)


def test_fused_nodes_and_layout_reorders_map_back_to_their_blocks():
    """The optimised graph as onnxruntime writes it: an NCHWc conv named after the output of its fused
    Relu, a FusedConv keeping its anchor's name, an unfused Add, and reorders between layouts."""
    sig = CONV
    blocks = [Block("conv_a", ("relu_a",), sig, "x", "ra", 16, 16),
              Block("conv_b", ("add_b", "relu_b"), sig, "ra", "rb", 16, 18),
              Block("conv_c", ("relu_c",), sig, "rb", "rc", 18, 16)]
    original = helper.make_graph(
        [_conv("conv_a", "x", "w", "ya"), helper.make_node("Relu", ["ya"], ["ra"], name="relu_a"),
         _conv("conv_b", "ra", "w", "yb"), helper.make_node("Add", ["yb", "ra"], ["ab"], name="add_b"),
         helper.make_node("Relu", ["ab"], ["rb"], name="relu_b"),
         _conv("conv_c", "rb", "w", "yc"), helper.make_node("Relu", ["yc"], ["rc"], name="relu_c")],
        "g", [], [])
    n = "com.microsoft.nchwc"
    optimized = helper.make_graph([
        helper.make_node("ReorderInput", ["x"], ["t0"], name="ReorderInput", domain=n),
        helper.make_node("Conv", ["t0", "w"], ["t1"], name="ra_nchwc", domain=n),
        helper.make_node("ReorderOutput", ["t1"], ["ra"], name="ReorderOutput_token_3", domain=n),
        helper.make_node("FusedConv", ["ra", "w"], ["yb"], name="conv_b", domain="com.microsoft"),
        helper.make_node("Add", ["yb", "ra"], ["ab"], name="add_b"),
        helper.make_node("Relu", ["ab"], ["rb"], name="relu_b"),
        helper.make_node("ReorderInput", ["rb"], ["t2"], name="ReorderInput_token_7", domain=n),
        helper.make_node("Conv", ["t2", "w"], ["t3"], name="rc_nchwc_token_9", domain=n),
        helper.make_node("ReorderOutput", ["t3"], ["rc"], name="ReorderOutput", domain=n)], "o", [], [])
    times = {"ReorderInput": 1.0, "ra_nchwc": 10.0, "ReorderOutput_token_3": 2.0, "conv_b": 20.0, "add_b": 3.0,
             "relu_b": 4.0, "ReorderInput_token_7": 5.0, "rc_nchwc_token_9": 30.0, "ReorderOutput": 6.0}
    bmap = ic.BlockMap(helper.make_model(original), blocks)
    per, layout, lost = ic.attribute(times, helper.make_model(optimized), bmap, per_node_ms=0.5)
    assert layout == {"conv_a": "nchwc", "conv_b": "nchw", "conv_c": "nchwc"}
    # the input reorder has no block upstream: it goes to the conv it feeds; the reorder back to NCHW is the
    # doing of the conv that reads NCHW (conv_b), and so is the reorder of its output back into NCHWc
    assert per["conv_a"] == pytest.approx(1.0 + 10.0 + 2 * 0.5)
    assert per["conv_b"] == pytest.approx(2.0 + 20.0 + 3.0 + 4.0 + 5.0 + 5 * 0.5)
    assert per["conv_c"] == pytest.approx(30.0 + 6.0 + 2 * 0.5)
    assert lost == 0.0
    assert sum(per.values()) == pytest.approx(sum(times.values()) + 0.5 * len(times))


def test_a_real_run_maps_every_node_and_the_layouts_follow_the_probed_rule():
    from halp_onnx.profiles.backends import OrtCpuBackend

    loaded, an = inspect(example("resnet"))
    blocks = model_blocks(loaded, an)
    rule = probe_rule()
    be = OrtCpuBackend()
    settings = ic.width_settings(an, blocks, 4, block=rule.block)
    obs, records = ic.observe(loaded, an, blocks, be, settings, runs=2)
    assert all(r["unattributed_ms"] == 0.0 for r in records)
    convs = [o for o in obs if o.key.startswith("Conv")]
    assert convs and all(o.ms > 0 for o in convs)  # every conv (NCHWc, FusedConv or plain) found by name
    for o in convs:
        sig = BlockSignature.from_key(o.key)
        if sig.groups == "dense":
            cls = layout_class("conv", rule, o.c_in, o.c_out)
            assert (o.layout == "nchwc") == (cls in ("nchwc", "direct")), (o, rule)
    if rule.block > 1:
        assert {o.layout for o in convs} == {"nchwc", "nchw"}  # the settings reach both paths
    # the whole-model kernel time is all attributed to blocks
    for r in records:
        got = sum(o.ms for o in obs if o.setting == r["setting"])
        assert got == pytest.approx(r["kernel_ms"], rel=1e-6)


def test_a_second_pass_keeps_each_blocks_least_disturbed_turn(monkeypatch):
    """A busy spell that inflates one setting's turn in the first pass does not reach the tables when the
    settings are timed twice (the second pass in reverse order): per block the smaller median is kept."""
    from halp_onnx.profiles.backends import OrtCpuBackend

    loaded, an = inspect(example("resnet"))
    blocks = model_blocks(loaded, an)
    settings = ic.width_settings(an, blocks, 3, block=probe_rule().block)
    real, calls = ic.profile_run, []

    def spell(backend, model, *, runs, feeds=None):
        times, opt, wall = real(backend, model, runs=runs, feeds=feeds)
        calls.append(len(calls))
        if len(calls) == 2:  # the first pass's turn of setting 1
            times, wall = {k: 50 * v for k, v in times.items()}, 50 * wall
        return times, opt, wall

    monkeypatch.setattr(ic, "profile_run", spell)
    be = OrtCpuBackend()
    one, _ = ic.observe(loaded, an, blocks, be, settings, runs=2)
    calls.clear()
    two, records = ic.observe(loaded, an, blocks, be, settings, runs=2, passes=2)
    assert len(calls) == 2 * len(settings)
    spent = {k: sum(o.ms for o in obs if o.setting == 1) for k, obs in (("one", one), ("two", two))}
    assert spent["two"] * 10 < spent["one"]
    assert [r["setting"] for r in records] == list(range(len(settings)))
    assert [(o.key, o.node, o.c_in, o.c_out, o.setting) for o in one] == \
        [(o.key, o.node, o.c_in, o.c_out, o.setting) for o in two]


def test_passes_follow_the_environment(monkeypatch):
    monkeypatch.setenv("HALP_ONNX_INCONTEXT_PASSES", "3")
    assert ic.passes(0.1) == 3 and ic.passes(0.01) == 1  # tests' tiny timing budget: one pass
    monkeypatch.setenv("HALP_ONNX_INCONTEXT_PASSES", "two")
    with pytest.raises(HalpError, match="HALP_ONNX_INCONTEXT_PASSES"):
        ic.passes(0.1)


# ---------------------------------------------------------------------------------------- fitting
def _staircase(ci: int, co: int) -> float:
    """A synthetic CPU: blocked kernels pad both widths to 16; the NCHW path is slower per MAC."""
    cls = layout_class("conv", RULE, ci, co)
    if cls == "nchwc":
        return 0.004 + 2e-5 * pad(ci) * pad(co)
    if cls == "direct":
        return 0.003 + 3e-5 * ci * pad(co)
    return 0.006 + 5e-5 * ci * co


def _staircase_points(seed: int, n: int) -> dict[tuple[int, int], float]:
    """``n`` draws of random widths in [4, 64] and their staircase time, 1% noise."""
    rng = np.random.default_rng(seed)
    pts = {}
    for _ in range(n):
        ci, co = int(rng.integers(4, 65)), int(rng.integers(4, 65))
        pts[(ci, co)] = _staircase(ci, co) * (1 + 0.01 * rng.standard_normal())
    return pts


def test_fit_recovers_the_staircase_and_its_step():
    fit = fit_points(CONV, _staircase_points(0, 60), RULE)
    assert fit["quant"] == 16 and fit["staircase_seen"]
    assert set(fit["classes"]) == {"nchwc", "direct", "nchw"}
    for ci, co in ((64, 64), (48, 40), (20, 33), (63, 63), (7, 50), (33, 9)):
        assert evaluate(fit, ci, co) == pytest.approx(_staircase(ci, co), rel=0.05)
    # a width that falls off the blocked kernels costs more than the dense one, and the fit says so
    assert evaluate(fit, 63, 64) > evaluate(fit, 64, 64)
    assert fit_step(fit, 64, 64) == 16
    json.dumps(fit)  # stored in the profile as is


def test_fit_ignores_points_no_event_reached():
    """A compute block measured at 0 ms in some run (none of the profiler's events mapped to it) would,
    on relative error, outweigh every real point: the fit is the one without such points."""
    pts = _staircase_points(1, 40)
    clean = fit_points(CONV, pts, RULE)
    holed = fit_points(CONV, {**pts, (40, 60): 0.0, (12, 64): 0.0}, RULE)
    assert holed == clean
    for ci, co in ((64, 64), (20, 33), (7, 50)):
        assert evaluate(holed, ci, co) == pytest.approx(_staircase(ci, co), rel=0.05)


def test_fit_never_goes_below_nothing_within_the_table():
    """Points of large widths only (another model's, sharing the signature) whose free line crosses
    zero before the smallest widths: refitted with no coefficient below zero, every width costs time
    and more channels never cost less."""
    rng = np.random.default_rng(2)
    pts = {}
    for _ in range(30):  # large widths only, on a line through -0.2 ms at no channels
        ci, co = int(rng.integers(400, 513)), int(rng.integers(150, 257))
        pts[(ci, co)] = (4e-6 * ci * co - 0.2) * (1 + 0.02 * rng.standard_normal())
    free = np.linalg.lstsq(np.array([[1, pad(ci), pad(co), pad(ci) * pad(co)] for ci, co in pts], float),
                           np.array(list(pts.values())), rcond=None)[0]
    assert free[0] < 0  # the case: the free line is below nothing at the smallest widths
    fit = fit_points(CONV, pts, RULE)
    for cls in fit["classes"].values():
        assert min(cls["coef"]) >= 0
    grid = [(ci, co) for ci in (1, 16, 64, 256, 512) for co in (1, 16, 64, 256)]
    assert all(evaluate(fit, ci, co) > 1e-4 for ci, co in grid if layout_class("conv", RULE, ci, co) == "nchwc")
    for ci in (16, 64, 256):
        assert evaluate(fit, ci, 256) >= evaluate(fit, ci, 16)


def test_a_small_blocks_time_below_zero_is_kept_and_the_large_widths_are_priced_from_their_points():
    """In context a block's time is its profiled kernels plus the per-node correction, negative where
    the profiler inflates each kernel by more than a node costs a real run: a CIFAR ResNet's narrow 8x8
    convolutions read a few microseconds below zero. Those points are real (an event reached them), and
    the fit may run as far below zero as they do: a fit held at or above zero at every corner priced the
    dense 64x64 convolution at 0.015 ms against 0.037 ms measured (ResNet-20)."""
    truth = {}
    for ci in (16, 24, 32, 40, 48, 64):
        for co in (10, 16, 31, 32, 48, 53, 64):
            if layout_class("conv", RULE, ci, co) == "nchwc":
                truth[(ci, co)] = 1e-5 * pad(ci) * pad(co) - 0.006  # two nodes' correction of -3 us
    assert min(truth.values()) < 0 < max(truth.values())
    fit = fit_points(CONV, truth, RULE)
    for ci, co in ((64, 64), (48, 48), (64, 32)):
        assert evaluate(fit, ci, co) == pytest.approx(truth[(ci, co)], rel=0.05)


def test_removal_settings_remove_blocks_at_the_widths_the_knapsack_picks():
    """What a removed block leaves (its residual Add and activation) is measured where the knapsack's
    choices put it: every other group at a multiple of the block, the trunk included."""
    loaded, an = inspect(example("resnet"))
    blocks = model_blocks(loaded, an)
    mult = ic.group_multiplicity(an, blocks)
    settings = ic.width_settings(an, blocks, 17, block=16)
    removal = settings[4::4]
    assert len(removal) == 4 and any(w == 0 for s in removal for w in s.values())
    for s in removal:
        for g in an.prunable:
            w = s[g.id]
            if w and any(c * mult[g.id] % 16 == 0 for c in range(max(1, int(np.ceil(0.1 * g.size))), g.size + 1)):
                assert w * mult[g.id] % 16 == 0, (g.id, w)
            assert w or g.removable


def test_a_memory_bound_op_absorbed_at_whole_blocks_is_priced_between_them():
    """DenseNet's BatchNormalization after a concat: no time of its own at 16, 32, 48... channels (the
    blocked neighbours absorb it), 4 + 0.1 us per channel elsewhere, a few points near nothing (the
    per-node correction taken off a short kernel). The misaligned widths are priced from their own
    points, not pulled to nothing by the zeros or by the points of a fraction of a microsecond."""
    sig = BlockSignature(op="Elementwise", kernel=(), stride=(), pads=(), dilation=(), groups="depthwise",
                         in_hw=(196,), batch=1, dtype="fp32", epilogue=("BatchNormalization",))
    rng = np.random.default_rng(3)
    pts = {}
    for c in range(20, 500, 7):
        pts[(c, c)] = 0.0 if c % 16 == 0 else (0.004 + 1e-4 * c) * (1 + 0.05 * rng.standard_normal())
    for c in range(16, 500, 48):
        pts[(c, c)] = 0.0
    pts[(23, 23)], pts[(41, 41)] = 2e-4, -3e-4
    fit = fit_points(sig, pts, RULE)
    for c in (150, 301, 455):
        assert evaluate(fit, c, c) == pytest.approx(0.004 + 1e-4 * c, rel=0.2), c
    assert evaluate(fit, 77, 77) == pytest.approx(0.0117, rel=0.35)  # the near-nothing points still pull
    assert evaluate(fit, 160, 160) < 0.002


def test_a_memory_bound_op_after_a_depthwise_conv_is_split_where_that_conv_changes_layout():
    """MobileNetV3-Large's squeeze-excitation Mul at 28x28 reads the depthwise convolution's output,
    reordered out of the blocked layout wherever that convolution runs blocked (every multiple of 4
    here): 5 + 0.22 us per channel there, 6 + 0.06 us elsewhere. Split at the block (16) the fit priced
    its dense width at half its time; the split is chosen by the data."""
    sig = BlockSignature(op="Elementwise", kernel=(), stride=(), pads=(), dilation=(), groups="depthwise",
                         in_hw=(784,), batch=1, dtype="fp32", epilogue=("Mul",))
    rng = np.random.default_rng(5)

    def truth(c: int) -> float:
        return (0.005 + 2.2e-4 * c) if c % 4 == 0 else (0.006 + 6e-5 * c)

    widths = rng.choice(np.arange(8, 121), 30, replace=False)
    pts = {(c, c): truth(c) * (1 + 0.05 * rng.standard_normal()) for c in widths}
    pts[(120, 120)] = truth(120)
    fit = fit_points(sig, pts, RULE)
    assert fit["split"] == 4
    for c in (120, 72, 40, 117, 53):
        assert evaluate(fit, c, c) == pytest.approx(truth(c), rel=0.15), c


def test_a_path_nothing_measured_is_never_priced_below_the_next_measured_step():
    """Only blocked-path points (inputs of 16 channels and more): an input of 12 channels, which takes
    the direct path nobody measured, is priced at least as the 16-channel input it would be padded to
    (borrowed unpadded it read a quarter less, and the knapsack squeezed groups there for it)."""
    sig = BlockSignature(op="Conv", kernel=(1, 1), stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1),
                         groups="dense", in_hw=(7, 7), batch=1, dtype="fp32", epilogue=("HardSwish",))
    pts = {(ci, co): 0.001 + 1.1e-6 * pad(ci) * pad(co) for ci in (16, 32, 48, 64, 96) for co in (64, 144, 288, 576)}
    fit = fit_points(sig, pts, RULE)
    assert "direct" not in fit["classes"]
    for co in (144, 576):
        assert evaluate(fit, 12, co) >= evaluate(fit, 16, co) * 0.999
        assert evaluate(fit, 12, co) == pytest.approx(pts[(16, co)], rel=0.05)


def test_a_batch_one_gemm_in_two_modes_is_priced_between_them():
    """A batch-1 classifier Gemm reads its weights from cache or from memory as the shared machine's
    state has it: half its points at 0.1 us per input channel, half at 0.2. Errors taken relative to each
    point price the fast mode (slow points weigh half); the fit lands between the modes."""
    sig = BlockSignature(op="Gemm", kernel=(), stride=(), pads=(), dilation=(), groups="dense", in_hw=(1,),
                         batch=1, dtype="fp32", epilogue=())
    rng = np.random.default_rng(2)
    pts = {}
    for i, ci in enumerate(rng.choice(np.arange(100, 1025), 24, replace=False)):
        pts[(int(ci), 1000)] = (1e-4 if i % 2 else 2e-4) * ci * (1 + 0.03 * rng.standard_normal())
    fit = fit_points(sig, pts, RULE)
    assert 1.35e-4 * 1024 < evaluate(fit, 1024, 1000) < 1.65e-4 * 1024


def test_a_fit_an_earlier_version_made_is_fitted_again_when_read(tmp_path):
    """A stored profile keeps its points: a table whose fit an earlier version of the fitting made
    (here: fitted with the points no event reached) is fitted again from them when the profile is
    read, so an upgrade does not keep pricing from the old fit."""
    from halp_onnx.profiles.fit import FIT_VERSION
    from halp_onnx.profiles.table import LatencyTable

    pts = {**_staircase_points(1, 40), (40, 60): 0.0, (12, 64): 0.0}
    t = LatencyTable(64, 64, True, True, False)
    ic.fitted_table(t, CONV, pts, RULE)
    current = dict(t.fit)
    t.fit = {**t.fit, "classes": {c: {**v, "coef": [-1.0, 0.0, 0.0, 0.0]} for c, v in t.fit["classes"].items()}}
    del t.fit["version"]
    prof = store.Profile(name="ort-cpu", target="ort-cpu", precision="fp32", batch=1, threads=1, estimated=False,
                         fingerprint={}, tables={CONV.key(): t})
    store.write_profile(prof, tmp_path / "p.json")
    back = store.read_profile(tmp_path / "p.json").tables[CONV.key()]
    assert back.fit["version"] == FIT_VERSION and back.fit == current
    assert evaluate(back.fit, 48, 40) == pytest.approx(_staircase(48, 40), rel=0.05)


def test_fitted_table_round_trips_with_point_sources():
    from halp_onnx.profiles.table import LatencyTable

    t = LatencyTable(64, 64, True, True, False)
    ic.fitted_table(t, CONV, {(64, 64): 1.0, (32, 64): 0.55, (64, 32): 0.5, (32, 32): 0.3, (16, 16): 0.1}, RULE)
    back = LatencyTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.source == "incontext" and back.point_source(32, 32) == "incontext"
    assert back.point_source(5, 5) is None
    assert back.lookup(48, 48) == pytest.approx(t.lookup(48, 48))
    assert back.covers(64, 64, True, True)


# ---------------------------------------------------------------------------------------- profiling
def _one_conv(c_in: int, c_mid: int) -> onnx.ModelProto:
    from halp_onnx.builder import GraphBuilder

    b = GraphBuilder()
    x = b.input("x", [1, c_in, 8, 8])
    h = b.op("Relu", [b.conv(x, c_in, c_mid, k=1)])
    return finish(b, b.op("Relu", [b.conv(h, c_mid, 6, k=3)]), 6)


def test_a_table_two_models_share_answers_both(profile_dir):
    """Two models with a block of the same signature at other widths (32 -> 8 and 8 -> 32 channels):
    profiling the second widens the shared table instead of replacing its domain, so neither model
    is profiled again."""
    a, b = inspect(_one_conv(32, 8)), inspect(_one_conv(8, 32))
    for loaded, an in (a, b):
        latency_model(loaded, an, "ort-cpu", measure=True)
    for loaded, an in (a, b):
        run = latency_model(loaded, an, "ort-cpu", measure=False)  # raises where a signature is not covered
        assert run.new_points == 0


def _two_convs_and_a_pool(c_in: int, c_mid: int) -> onnx.ModelProto:
    """:func:`_one_conv`'s layers with a pooling layer before the head: another model, same convs."""
    from halp_onnx.builder import GraphBuilder

    b = GraphBuilder()
    x = b.input("x", [1, c_in, 8, 8])
    h = b.op("Relu", [b.conv(x, c_in, c_mid, k=1)])
    h = b.op("Relu", [b.conv(h, c_mid, 6, k=3)])
    return finish(b, b.op("MaxPool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]), 6)


def test_a_model_is_priced_from_its_own_runs(profile_dir):
    """Another model's in-context points do not price a model whose tables they would cover: it is
    measured in its own runs (its context), the first model's context stays as it was, and a pruned
    model of the same layers is priced from its dense model's context without measuring."""
    a = inspect(_one_conv(32, 8))
    b = inspect(_two_convs_and_a_pool(32, 8))
    first = latency_model(*a, "ort-cpu", measure=True)
    assert first.incontext_runs > 0
    prof = store.read_profile(profile_dir / "ort-cpu.json")
    assert len(prof.contexts) == 1
    (cid_a, ctx_a), = prof.contexts.items()
    before = {k: t.to_dict() for k, t in ctx_a.tables.items()}
    assert set(ctx_a.tables) <= set(ctx_a.signatures) and ctx_a.tables
    assert first.context == cid_a and first.to_dict()["context"]["id"] == cid_a
    # a profile without a's run (one written before contexts): priced from the general tables, said so
    legacy = store.read_profile(profile_dir / "ort-cpu.json")
    legacy.contexts.clear()
    store.write_profile(legacy, profile_dir / "legacy.json")
    fallback = latency_model(*a, "ort-cpu", measure=False, profile_path=profile_dir / "legacy.json")
    assert fallback.context is None and any("not measured in its own runs" in w for w in fallback.warnings)
    second = latency_model(*b, "ort-cpu", measure=True)
    assert second.incontext_runs > 0 and second.new_points > 0
    prof = store.read_profile(profile_dir / "ort-cpu.json")
    assert len(prof.contexts) == 2 and {k: t.to_dict() for k, t in prof.contexts[cid_a].tables.items()} == before
    cid_b = prof.find_context({x.signature.key() for x in model_blocks(*b)})
    assert cid_b != cid_a and set(prof.contexts[cid_b].tables) >= set(ctx_a.tables)
    # b's model prices b's blocks from b's own points
    conv = next(x for x in model_blocks(*b) if x.signature.kernel == (3, 3))
    key = conv.signature.key()
    assert second.model.profile.tables[key] is prof.contexts[cid_b].tables[key] or \
        second.model.profile.tables[key].to_dict() == prof.contexts[cid_b].tables[key].to_dict()
    # a pruned a: same layers, so a's context, nothing measured
    loaded, an = a
    from halp_onnx.passes.rewrite import rewrite

    g = an.prunable[0]
    pruned = inspect(rewrite(loaded, an, {g.id: np.arange(3, g.size)}, check=False).model)
    again = latency_model(*pruned, "ort-cpu", measure=True)
    assert again.incontext_runs == 0 and again.new_points == 0
    assert store.read_profile(profile_dir / "ort-cpu.json").find_context(
        {x.signature.key() for x in model_blocks(*pruned)}) == cid_a


def test_a_pruned_model_without_a_block_keeps_its_dense_models_context(profile_dir):
    """Removing a residual block leaves its Add and activation as element-wise ops the dense model did
    not have: the pruned model is still priced from its dense model's runs."""
    from halp_onnx.passes.rewrite import rewrite

    loaded, an = inspect(example("resnet"))
    latency_model(loaded, an, "ort-cpu", measure=True)
    g = next(g for g in an.prunable if g.removable)
    pruned = inspect(rewrite(loaded, an, {g.id: np.zeros(0, dtype=np.int64)}, check=False).model)
    dense_keys = {b.signature.key() for b in model_blocks(loaded, an)}
    pruned_keys = {b.signature.key() for b in model_blocks(*pruned)}
    assert not pruned_keys <= dense_keys  # the orphaned epilogue
    prof = store.read_profile(profile_dir / "ort-cpu.json")
    assert prof.find_context(pruned_keys) == prof.find_context(dense_keys) is not None
    again = latency_model(*pruned, "ort-cpu", measure=True)
    assert again.incontext_runs == 0


def test_in_context_profile_labels_every_table_and_point(profile_dir):
    loaded, an = inspect(example("resnet"))
    run = latency_model(loaded, an, "ort-cpu", measure=True)
    prof = run.model.profile
    data = json.loads((profile_dir / "ort-cpu.json").read_text())
    assert data["schema"] == "halp-onnx/profile@2" and data["layout"]["block"] >= 1
    assert run.incontext_runs >= 6 and run.source == "measured"
    srcs = {k: t.source for k, t in prof.tables.items()}
    assert "incontext" in srcs.values()
    for k, t in prof.tables.items():
        assert set(t.sources.values()) <= {"incontext", "isolated"}
        assert all(t.point_source(*map(int, p.split(","))) in ("incontext", "isolated") for p in t.points)
        if t.source == "isolated":  # only what no whole-model run shows: a removed branch's epilogue
            assert k.startswith("Elementwise")
    blocks = model_blocks(loaded, an)
    assert all(prof.tables[b.signature.key()].source == "incontext" for b in blocks)
    pred = predict(blocks, run.model)
    kept = np.ones(len(an.channel_group), dtype=bool)
    kept[::3] = False
    assert 0 < predict(blocks, run.model, an, kept).total_ms < pred.total_ms * 1.5
    warm = latency_model(loaded, an, "ort-cpu", measure=False)
    assert warm.new_points == 0 and warm.incontext_runs == 0


# ---------------------------------------------------------------------------------------- monotone choices
class _Staircase:
    """A latency model whose narrow widths of a 64-wide layer are slower than the dense one."""

    def step(self, sig):
        return 1

    def block_ms(self, sig, ci, co):
        return _staircase(ci, co)


def test_choices_never_hold_a_width_slower_than_a_wider_one():
    loaded, an = inspect(example("resnet"))
    blocks = model_blocks(loaded, an)
    lm = _Staircase()
    plain = build_cost_model(an, blocks, lm.step, min_keep=0.0, monotone=False)
    cm = build_cost_model(an, blocks, lm.step, min_keep=0.0, block_ms=lm.block_ms)
    dense = {g: ch.size for g, ch in cm.choices.items()}
    dropped = 0
    for g, ch in cm.choices.items():
        cost = touch_costs(cm, g, dense, lm.block_ms)
        assert ch.widths[-1] == ch.size
        assert np.all(np.diff(cost) >= -1e-12), (g, ch.widths, cost)
        dropped += len(plain.choices[g].widths) - len(ch.widths)
        assert set(ch.widths) <= set(plain.choices[g].widths)
    assert dropped > 0


# ---------------------------------------------------------------------------------------- grouped convs
def _grouped_model(width: int = 4) -> onnx.ModelProto:
    """stem conv -> grouped 3x3 conv (channels per group fixed) -> 1x1 conv -> pool -> gemm."""
    rng = np.random.default_rng(0)
    c = 32

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"], name="relu0"),
             helper.make_node("Conv", ["ra", "w1"], ["b"], name="grouped", pads=[1, 1, 1, 1], group=c // width),
             helper.make_node("Relu", ["b"], ["rb"], name="relu1"),
             helper.make_node("Conv", ["rb", "w2"], ["cc"], name="proj"),
             helper.make_node("Relu", ["cc"], ["rc"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["rc"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [w("w0", c, 3, 3, 3), w("w1", c, width, 3, 3), w("w2", 24, c, 1, 1), w("w3", 10, 24)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_grouped_conv_signature_domain_and_block_model():
    loaded, an = inspect(_grouped_model(4))
    blocks = model_blocks(loaded, an)
    gb = next(b for b in blocks if b.node == "grouped")
    sig = gb.signature
    assert sig.groups == "grouped:4" and sig.channels_per_group == 4
    d = domains(blocks, an)[sig.key()]
    assert d.diagonal and d.c_in_multiple == 4 and d.vary_out  # whole groups: both widths move together
    for groups in (1, 3, 8):  # fewer groups, the same channels per group
        m = block_model(sig, 4 * groups, 4 * groups)
        onnx.checker.check_model(m, full_check=True)
        conv = next(n for n in m.graph.node if n.op_type == "Conv")
        assert next(a.i for a in conv.attribute if a.name == "group") == groups
        import onnxruntime as ort

        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, block_feeds(m))
    # a ratio prune keeps whole convolution groups, and its widths are priced
    keep = keep_by_ratio(an, channel_scores(loaded, an, "random", 0), 0.4)
    from halp_onnx.passes.rewrite import kept_channels

    kept = kept_channels(an, keep)
    ci, co = block_widths(an, kept, gb)
    assert ci == co and co % 4 == 0 and 0 < co < 32


def test_grouped_convs_are_priced_in_context_and_alone(profile_dir):
    loaded, an = inspect(_grouped_model(4))
    run = latency_model(loaded, an, "ort-cpu", measure=True)
    blocks = model_blocks(loaded, an)
    gb = next(b for b in blocks if b.node == "grouped")
    table = run.model.profile.tables[gb.signature.key()]
    assert table.source == "incontext" and table.fit["kind"] == "grouped"
    assert run.model.step(gb.signature) >= 1
    keep = keep_by_ratio(an, channel_scores(loaded, an, "random", 0), 0.5)
    from halp_onnx.passes.rewrite import kept_channels

    kept = kept_channels(an, keep)
    assert 0 < predict(blocks, run.model, an, kept).total_ms
    # the one-block fallback samples whole groups only
    from halp_onnx.profiles.table import sample

    t = domains(blocks, an)[gb.signature.key()].table()
    seen = []
    sample(t, lambda ci, co: seen.append((ci, co)) or 0.01 * co)
    assert seen and all(ci % 4 == 0 and ci == co for ci, co in seen) and t.step == 4
    assert t.lookup(12, 12) == pytest.approx(0.12)


# ---------------------------------------------------------------------------------------- removals in context
def test_in_context_runs_skip_dead_settings_and_layers_that_vanish():
    """SqueezeNet's Fire modules: removing both expands of one cuts the output off and onnxruntime folds
    the rest of the model away, so every later layer would read as free (the tables then fell to zero
    and predicted a fifth of the real time): that setting is left out. Removing one expand drops it
    (and nothing else) from the observations."""
    from halp_onnx.builder import GraphBuilder
    from halp_onnx.profiles.backends import get_backend
    from halp_onnx.profiles.targets import get_target

    b = GraphBuilder(opset=17)
    t = b.op("Relu", [b.conv(b.input("images", [1, 3, 16, 16]), 3, 16, k=3)])
    for _ in range(2):
        s = b.op("Relu", [b.conv(t, 16, 8, k=1)])
        t = b.op("Concat", [b.op("Relu", [b.conv(s, 8, 8, k=1)]), b.op("Relu", [b.conv(s, 8, 8, k=3)])], axis=1)
    b.conv(t, 16, 4, k=1)
    b.nodes[-1].output[0] = "y"
    b.output("y")
    loaded, an = inspect(b.model())
    convs = [n.name for n in loaded.model.graph.node if n.op_type == "Conv"]
    blocks = model_blocks(loaded, an)

    def group(conv):
        node = next(n for n in loaded.model.graph.node if n.name == conv)
        return int(an.channels_of(node.output[0])[0, 0])

    e1, e3 = group(convs[2]), group(convs[3])
    assert an.groups[e1].removable and an.groups[e3].removable
    dense = {g.id: g.size for g in an.prunable}
    settings = [dense, {**dense, e1: 0, e3: 0}, {**dense, e1: 0}]
    be = get_backend(get_target("ort-cpu"), threads=1)
    obs, records = ic.observe(loaded, an, blocks, be, settings, runs=2)
    assert "error" in records[1] and "cut the outputs off" in records[1]["error"]
    assert not any(o.setting == 1 for o in obs)
    one = [o for o in obs if o.setting == 2]
    assert convs[2] not in {o.node for o in one} and convs[3] in {o.node for o in one}
    assert all(o.ms > 0 for o in one if o.node in convs)


def _se_model(c: int = 32, squeeze: int = 8) -> onnx.ModelProto:
    """Conv -> depthwise conv -> squeeze-excitation (pool, 1x1 conv, Relu, 1x1 conv, HardSigmoid) scaling
    the depthwise output -> 1x1 projection, as torchvision's MobileNetV3 exports it."""
    from halp_onnx.builder import GraphBuilder

    b = GraphBuilder()
    x = b.input("x", [1, 3, 14, 14])
    a = b.op("Relu", [b.conv(x, 3, c)])
    d = b.op("Relu", [b.conv(a, c, c, group=c)])
    s = b.op("Relu", [b.conv(b.op("GlobalAveragePool", [d]), c, squeeze, k=1)])
    s = b.op("HardSigmoid", [b.conv(s, squeeze, c, k=1)], alpha=1 / 6, beta=0.5)
    return finish(b, b.conv(b.op("Mul", [d, s]), c, 16, k=1), 16)


def test_an_op_scaling_by_a_removed_branchs_constant_is_left_out_of_its_table():
    """MobileNetV3's squeeze-excitation Mul with its squeeze removed scales by a constant, which
    onnxruntime folds into the convolution before it: it reads no time. Those points are not the Mul's
    on two live tensors (mixed into its table, they priced the dense SE Mul of MobileNetV3-Large at
    1.7 us against 51 us measured); the dense setting's point stays."""
    from halp_onnx.profiles.folding import block_sources, half_constant

    loaded, an = inspect(_se_model())
    blocks = model_blocks(loaded, an)
    mul = next(i for i, b in enumerate(blocks) if b.node.startswith("mul"))
    squeeze = next(g for g in an.prunable if g.size == 8)
    assert squeeze.removable, squeeze.remove_reason
    dense = {g.id: g.size for g in an.prunable}
    removed = {**dense, squeeze.id: 0}
    sources = block_sources(loaded.model.graph, blocks)
    for widths, expect in ((dense, set()), (removed, {mul})):
        _, kept = ic.variant(loaded, an, widths)
        gone = ic.constant_nodes(an, kept, blocks)
        at = [(0, 0) if b.node in gone else block_widths(an, kept, b) for b in blocks]
        assert half_constant(sources, at) == expect
    from halp_onnx.profiles.backends import OrtCpuBackend

    obs, records = ic.observe(loaded, an, blocks, OrtCpuBackend(), [dense, removed], runs=2)
    assert len(records) == 2 and all("error" not in r for r in records)
    at_mul = [o.setting for o in obs if o.node == blocks[mul].node]
    assert at_mul == [0]


def test_a_setting_slowed_in_every_pass_is_timed_again(monkeypatch):
    """A busy spell that held one setting's turns in both passes slows all of its blocks at once: the
    setting's sum runs 30% above what the tables fitted from every setting price it, so it is timed
    again and each of its blocks keeps the smaller time; settings within the spread are left alone."""
    rng = np.random.default_rng(0)
    truth = {(ci, co): 1e-5 * pad(ci) * pad(co) + 0.002 for ci in (16, 32, 48, 64) for co in (16, 32, 48, 64)}
    settings, obs = [], []
    for s in range(8):
        settings.append({0: s})
        slow = 1.3 if s == 5 else 1.0
        for b, (ci, co) in enumerate(list(truth)[s:s + 6]):
            ms = truth[(ci, co)] * slow * (1 + 0.01 * rng.standard_normal())
            obs.append(ic.Observation(CONV.key(), f"conv{b}", ci, co, ms, "nchwc", s))
    asked = []

    def again(loaded, analysis, blocks, backend, todo, **kw):
        asked.append(list(todo))
        return [ic.Observation(o.key, o.node, o.c_in, o.c_out, truth[(o.c_in, o.c_out)], o.layout, 0)
                for o in obs if o.setting == 5], []

    monkeypatch.setattr(ic, "observe", again)
    out, slow = ic.retime_slow(None, None, [], None, settings, obs, RULE)
    assert slow == [5] and asked == [[{0: 5}]]
    assert len(out) == len(obs)
    for o in out:
        if o.setting == 5:
            assert o.ms == pytest.approx(truth[(o.c_in, o.c_out)])
    def others(xs):
        return {(o.setting, o.node): o.ms for o in xs if o.setting != 5}

    assert others(out) == others(obs)


def _token_mlp(tokens: int = 64, width: int = 64, hidden: int = 256) -> onnx.ModelProto:
    """A transformer's MLP on ``1 x tokens x 8`` tokens: an embedding MatMul into a prunable residual
    stream, LayerNorm, MatMul + bias, Relu, MatMul + bias, the residual Add, a MatMul head (onnxruntime
    fuses each MatMul + Add on the 3-D input into a renamed Gemm between two new Reshapes)."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [helper.make_node("MatMul", ["x", "we"], ["e"], name="embed"),
             helper.make_node("LayerNormalization", ["e", "g", "beta"], ["n"], name="norm", axis=-1),
             helper.make_node("MatMul", ["n", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
             helper.make_node("Relu", ["a1"], ["r1"], name="act"),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["a2"], name="fc2_bias"),
             helper.make_node("Add", ["a2", "e"], ["s"], name="residual"),
             helper.make_node("MatMul", ["s", "wh"], ["y"], name="head")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, 10])],
                          [init("we", 8, width), init("g", width), init("beta", width), init("w1", width, hidden),
                           init("b1", hidden), init("w2", hidden, width), init("b2", width), init("wh", width, 10)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_node_renamed_by_a_fusion_maps_back_to_its_block_by_name():
    blocks = [Block("fc1", ("fc1_bias",), CONV, "x", "a1", 16, 64)]
    bmap = ic.BlockMap(helper.make_model(helper.make_graph([], "g", [], [])), blocks)
    for name in ("fc1/MatMulAddFusion", "fc1/MatMulScaleFusion/", "fc1/MatMulAddFusion/GemmActivationFusion"):
        assert bmap.direct(name, None) == "fc1", name
    assert bmap.direct("fc1x/MatMulAddFusion", None) is None
    assert bmap.direct("gemm_input_reshape", None) is None  # glue: charged through the graph


def test_a_real_run_charges_a_fused_matmul_on_tokens_to_its_own_block():
    """Each MatMul's kernel time lands on its own block (a week before, the renamed Gemm was glue and
    went to the neighbouring elementwise block: a ViT's linear layers priced at nothing)."""
    from halp_onnx.profiles.backends import OrtCpuBackend

    loaded, an = inspect(_token_mlp())
    blocks = model_blocks(loaded, an)
    mm = {b.node for b in blocks if b.signature.op == "MatMul"} - {"embed", "head"}
    assert mm == {"fc1", "fc2"} and "norm" in {b.node for b in blocks}
    obs, records = ic.observe(loaded, an, blocks, OrtCpuBackend(), [{g.id: g.size for g in an.prunable}], runs=5)
    got = {o.node: o.ms for o in obs}
    kernel = records[0]["kernel_ms"]
    assert sum(got[n] for n in mm) > 0.6 * kernel, (got, kernel)  # two GEMMs of 1M MACs each vs small ops
