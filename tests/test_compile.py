"""compile: budget parsing, cost attribution, knapsack rounds, outputs, errors, Taylor calibration."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import halp_onnx
from halp_onnx.api import inspect
from halp_onnx.cli import main
from halp_onnx.budget import LatencyBudget
from halp_onnx.passes.calibration import calibration_batches
from halp_onnx.errors import HalpError
from halp_onnx.examples import example
from halp_onnx.passes.latency_cost import build_cost_model, group_costs, total_latency
from halp_onnx.passes.rewrite import save_model
from halp_onnx.profiles.blocks import model_blocks
from halp_onnx.profiles.latency import LatencyModel, predict
from halp_onnx.profiles.targets import get_target


@pytest.fixture(autouse=True)
def profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HALP_ONNX_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HALP_ONNX_TIMING_BUDGET_S", "0.003")
    return tmp_path / "profiles"


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / "mobilenet.onnx"
    save_model(example("mobilenet"), p)
    return str(p)


@pytest.mark.parametrize("text,expected", [("0.5", ("share", 0.5)), ("50%", ("share", 0.5)), ("3.2ms", ("ms", 3.2)),
                                           ("1", ("share", 1.0)), (0.25, ("share", 0.25)), ("0.5x", ("share", 0.5)),
                                           ("3200us", ("ms", 3.2)), ("0.0032s", ("ms", 3.2))])
def test_parse_latency(text, expected):
    kind, amount = LatencyBudget.parse(text).as_tuple()
    assert kind == expected[0] and amount == pytest.approx(expected[1])


@pytest.mark.parametrize("bad", ["0", "1.5", "fast", "-2ms", "0ms", "0us", "50%%", ""])
def test_parse_latency_rejects(bad):
    with pytest.raises(HalpError, match="--latency"):
        LatencyBudget.parse(bad)


def test_budget_resolves_once_for_every_reader():
    share = LatencyBudget.parse("50%").resolve(4.0)
    assert share.ms == pytest.approx(2.0) and share.share == pytest.approx(0.5)
    assert share.request == "0.5 x dense (2 ms)" and share.target_measured_ms is None
    assert share.with_measured(6.0).target_measured_ms == pytest.approx(3.0)
    absolute = LatencyBudget.parse("3200us").resolve(4.0)
    assert absolute.ms == pytest.approx(3.2) and absolute.share == pytest.approx(0.8)
    assert absolute.with_measured(10.0).target_measured_ms == pytest.approx(3.2)
    assert "below the smallest achievable" in str(absolute.infeasible(3.5, "ort-cpu", 0.1))


def test_group_costs_add_up_to_the_prediction():
    loaded, an = inspect(example("mobilenet"))
    blocks = model_blocks(loaded, an, precision="fp16")
    lm = LatencyModel(get_target("trt-t4"), None)
    cm = build_cost_model(an, blocks, lm.step, min_keep=0.0)
    rng = np.random.default_rng(0)
    widths = {g: int(rng.choice([w for w in ch.widths if w > 0])) for g, ch in cm.choices.items()}
    per_group, const = group_costs(cm, widths, lm.block_ms)
    picked = sum(float(per_group[g][list(ch.widths).index(widths[g])]) for g, ch in cm.choices.items())
    assert picked + const == pytest.approx(total_latency(cm, widths, lm.block_ms))
    keep = {g: np.arange(w) for g, w in widths.items()}
    from halp_onnx.passes.rewrite import kept_channels

    assert predict(blocks, lm, an, kept_channels(an, keep)).total_ms == pytest.approx(
        total_latency(cm, widths, lm.block_ms), rel=1e-6)
    for g, ch in cm.choices.items():  # neuron groups: multiples of the step (tensor-core multiple on a T4)
        assert all(w % ch.step == 0 for w in ch.widths[:-1]) and ch.widths[-1] == ch.size


def test_compile_analytic_target_meets_its_budget_and_exact_beats_greedy(mobilenet):
    res = halp_onnx.compile(mobilenet, target="trt-v100", latency=0.6, min_keep=0.05)
    assert res.label == "estimated" and res.measured_ms is None
    assert res.predicted_ms <= res.budget_ms * (1 + 1e-9)
    assert res.predicted_ms >= 0.8 * res.budget_ms
    assert res.solver["exact_value"] >= res.solver["augmented_value"] - 1e-9
    assert res.verification.max_rel_error <= 1e-4
    assert any("analytic estimates" in w for w in res.warnings)
    onnx.checker.check_model(res.model, full_check=True)
    json.dumps(res.to_dict())


def test_compile_ort_cpu_end_to_end_cli(mobilenet, tmp_path, capsys):
    out, rep, page = tmp_path / "p.onnx", tmp_path / "r.json", tmp_path / "r.html"
    before = open(mobilenet, "rb").read()
    assert main(["compile", mobilenet, "--target", "ort-cpu", "--latency", "0.6", "-o", str(out), "--report", str(rep),
                 "--html", str(page), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "measured latency" in text and "verified" in text and "knapsack: exact" in text
    report = json.loads(rep.read_text())
    # the closed loop re-solves with the knapsack budget rescaled by the measured miss: where the first
    # solution ran faster than the target, the one it keeps may be predicted above the nominal budget,
    # but never above the budget it was solved for
    solved = [c["knapsack_budget_ms"] for c in report["details"]["solver"]["calibration"]]
    assert solved[0] == pytest.approx(report["budget"]["budget_ms"])
    assert any(report["latency"]["predicted_ms"] <= b * (1 + 1e-9) for b in solved)
    assert report["latency"]["measured_ms"] > 0 and report["latency"]["label"] == "measured"
    assert report["seconds"]["select"] >= 0 and "verify" in report["seconds"]
    assert "<svg" in page.read_text()  # charts drawn as inline SVG
    assert open(mobilenet, "rb").read() == before


def test_compile_infeasible_budget_states_the_smallest_latency(mobilenet, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    assert main(["compile", mobilenet, "--target", "trt-t4", "--latency", "0.01", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "below the smallest achievable" in err and "ms" in err
    assert not out.exists()


@pytest.mark.parametrize("args,match", [
    (["--latency", "2x"], "--latency"),
    (["--latency", "0.5", "--engine", "e.plan"], "--engine"),
    (["--latency", "0.5", "--target", "trt-v100", "--engine", "e.plan"], "TensorRT"),
    (["--latency", "0.5", "--calib", "/nonexistent/calib.npz"], "--calib"),
    (["--latency", "0.5", "--solver", "magic"], None),
])
def test_compile_bad_options(mobilenet, tmp_path, capsys, args, match):
    out = tmp_path / "y.onnx"
    code = main(["compile", mobilenet, "-o", str(out)] + args) if match else None
    if match is None:
        with pytest.raises(SystemExit):
            main(["compile", mobilenet, "-o", str(out)] + args)
        return
    assert code == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_compile_refuses_to_overwrite_its_input(mobilenet, capsys):
    assert main(["compile", mobilenet, "--latency", "0.5", "-o", mobilenet]) == 2
    assert "the output path is the input model" in capsys.readouterr().err


def test_taylor_calibration_from_npz(tmp_path):
    pytest.importorskip("torch")
    model = example("resnet")
    loaded, _ = inspect(model)
    name = loaded.model.graph.input[0].name
    shape = [d.dim_value for d in loaded.model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    n = 8
    np.savez(calib, **{name: rng.standard_normal([n] + shape[1:]).astype(np.float32)},
             labels=rng.integers(0, 10, n))
    batches = list(calibration_batches(loaded, str(calib), batch_size=shape[0]))
    assert sum(len(b[1]) for b in batches) == n
    res = halp_onnx.compile(model, target="trt-t4", latency=0.9, calib=str(calib), calib_batch=shape[0])
    assert res.importance.method == "taylor" and res.importance.loss == "cross-entropy"
    assert res.predicted_ms <= res.budget_ms * (1 + 1e-9)


@pytest.mark.parametrize("step,size,align,expected", [
    (5, 40, 4, 4),  # a 40-channel group cut in eighths: 30 would run its convolutions on the NCHW path
    (3, 24, 4, 4), (9, 72, 4, 8), (15, 120, 4, 16),  # the nearest multiple of 4
    (16, 64, 4, 16),  # already a multiple: kept
    (5, 40, 1, 5),  # no blocked layout on the target: as it was
    (3, 6, 4, 3),  # no aligned width below the dense one
    (10, 600, 4, 12),  # 8 would give 75 widths, over the 64 allowed
])
def test_aligned_step(step, size, align, expected):
    from halp_onnx.passes.latency_cost import aligned_step

    assert aligned_step(step, size, align, 64) == expected


def test_widths_stay_on_the_blocked_kernels_where_the_profile_says_which():
    from halp_onnx.profiles.store import Profile

    loaded, an = inspect(example("mobilenet"))
    blocks = model_blocks(loaded, an)
    prof = Profile("t", "ort-cpu", "fp32", 1, 1, False, {}, layout={"block": 16, "in_multiple": 4,
                                                                       "depthwise_multiple": 4})
    lm = LatencyModel(get_target("ort-cpu"), prof)
    assert lm.align == 4 and LatencyModel(get_target("ort-cpu"), None).align == 1
    loose = build_cost_model(an, blocks, lambda sig: 1, min_keep=0.0, monotone=False)
    cm = build_cost_model(an, blocks, lambda sig: 1, min_keep=0.0, monotone=False, align=lm.align)
    assert any(w % 4 for ch in loose.choices.values() for w in ch.widths[:-1])  # the test can fail
    for ch in cm.choices.values():
        assert all(w % 4 == 0 for w in ch.widths[:-1]) or ch.size < 8, (ch.group, ch.widths)
        assert ch.widths[-1] == ch.size
