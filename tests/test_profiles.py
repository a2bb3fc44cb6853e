"""Latency tables: staircase sampling, the profile store (lock, resume, fingerprints), prediction, CLI."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from halp_onnx.api import inspect
from halp_onnx.cli import main
from halp_onnx.errors import HalpError
from halp_onnx.examples import example
from halp_onnx.passes.rewrite import save_model
from halp_onnx.profiles import store
from halp_onnx.profiles.block_model import block_feeds, block_model
from halp_onnx.profiles.blocks import model_blocks
from halp_onnx.profiles.latency import latency_model, predict
from halp_onnx.profiles.signature import BlockSignature
from halp_onnx.profiles.table import LatencyTable, detect_step, sample

CONV = BlockSignature(op="Conv", kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups="dense",
                      in_hw=(8, 8), batch=1, dtype="fp32", epilogue=("Relu",))


def stair(ci: int, co: int, step: int = 8) -> float:
    """A synthetic device: bilinear work on step-padded widths, plus a fixed cost."""
    return 0.05 + 1e-4 * math.ceil(ci / step) * step * math.ceil(co / step) * step


@pytest.fixture(autouse=True)
def profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HALP_ONNX_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HALP_ONNX_TIMING_BUDGET_S", "0.003")
    return tmp_path / "profiles"


# ---------------------------------------------------------------------------------------- tables
@pytest.mark.parametrize("step", [1, 4, 8, 16])
def test_detect_step_finds_the_stair_width_under_noise(step):
    rng = np.random.default_rng(step)
    scan = {c: stair(128, c, step) * (1 + 0.003 * rng.standard_normal()) for c in range(128, 95, -1)}
    assert detect_step(scan) == step


def test_detect_step_flat_window_is_coarse():
    scan = {c: 1.0 for c in range(64, 31, -1)}
    assert detect_step(scan) >= 16


def test_sampling_is_sparse_and_lookup_follows_the_staircase():
    table = LatencyTable(c_in_max=256, c_out_max=512, vary_in=True, vary_out=True, diagonal=False)
    calls = []

    def measure(ci, co):
        calls.append((ci, co))
        return stair(ci, co)

    sample(table, measure)
    assert table.step == 8 and table.complete
    assert len(calls) < 120 < 256 * 512 / 64  # far fewer than the aligned grid
    rng = np.random.default_rng(0)
    errs = []
    for _ in range(300):
        ci, co = int(rng.integers(1, 257)), int(rng.integers(1, 513))
        errs.append(abs(table.lookup(ci, co) / stair(ci, co) - 1))
    assert np.median(errs) < 0.01 and max(errs) < 0.08
    ci, co = calls[-1]
    assert table.is_measured(ci, co) and table.lookup(ci, co) == stair(ci, co)
    assert table.lookup(256, 497) == pytest.approx(stair(256, 504), rel=1e-6)  # same stair


def test_input_channel_dependence_is_two_dimensional():
    table = LatencyTable(c_in_max=128, c_out_max=128, vary_in=True, vary_out=True, diagonal=False)
    sample(table, stair)
    assert table.lookup(32, 128) < 0.5 * table.lookup(128, 128)
    assert table.lookup(32, 32) < table.lookup(32, 128)


def test_diagonal_and_fixed_axes():
    dw = LatencyTable(c_in_max=96, c_out_max=96, vary_in=True, vary_out=True, diagonal=True)
    sample(dw, lambda ci, co: (ci == co) * (0.01 * ci + 0.1) or float("nan"))
    assert dw.lookup(48, 48) == pytest.approx(0.58, rel=0.02)
    fixed = LatencyTable(c_in_max=3, c_out_max=64, vary_in=False, vary_out=True, diagonal=False)
    seen = set()
    sample(fixed, lambda ci, co: seen.add(ci) or stair(ci, co))
    assert seen == {3}


def test_diagonal_table_with_a_wide_step_measures_every_line_point():
    dw = LatencyTable(c_in_max=96, c_out_max=96, vary_in=True, vary_out=True, diagonal=True)
    sample(dw, lambda ci, co: 0.1 + 0.01 * math.ceil(co / 32) * 32)
    assert dw.step == 32
    for c in range(1, 97):
        assert dw.lookup(c, c) == pytest.approx(0.1 + 0.01 * math.ceil(c / 32) * 32, rel=1e-6)


def test_table_json_round_trip():
    table = LatencyTable(c_in_max=64, c_out_max=64, vary_in=True, vary_out=True, diagonal=False)
    sample(table, stair)
    again = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    for ci, co in [(64, 64), (33, 17), (8, 60)]:
        assert again.lookup(ci, co) == table.lookup(ci, co)


# ---------------------------------------------------------------------------------------- block models
@pytest.mark.parametrize("sig,ci,co", [
    (CONV, 16, 24),
    (BlockSignature(op="Conv", kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1), dilation=(1, 1), groups="depthwise",
                    in_hw=(16, 16), batch=2, dtype="fp32", epilogue=("Clip",)), 32, 32),
    (BlockSignature(op="Conv", kernel=(1, 1), stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups="grouped:4",
                    in_hw=(8, 8), batch=1, dtype="fp32", epilogue=("Add", "Relu")), 32, 16),
    (BlockSignature(op="Gemm", kernel=(), stride=(), pads=(), dilation=(), groups="dense", in_hw=(1,), batch=1,
                    dtype="fp32"), 64, 10),
    (BlockSignature(op="Pool", kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1), dilation=(1, 1), groups="depthwise",
                    in_hw=(16, 16), batch=1, dtype="fp32", epilogue=("MaxPool",)), 8, 8),
    (BlockSignature(op="Elementwise", kernel=(), stride=(), pads=(), dilation=(), groups="depthwise", in_hw=(64,),
                    batch=1, dtype="fp32", epilogue=("Add",)), 8, 8),
])
def test_block_models_are_valid_and_run(sig, ci, co):
    import onnx
    import onnxruntime as ort

    m = block_model(sig, ci, co)
    onnx.checker.check_model(m, full_check=True)
    out = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, block_feeds(m))
    if sig.op in ("Conv", "Gemm"):
        assert out[0].shape[1] == co


# ---------------------------------------------------------------------------------------- store
class FakeBackend:
    """Deterministic 'device': a conv costs its MACs, memory-bound ops their bytes."""

    name = "fake"

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def measure(self, sig, ci, co):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return 0.01 + sig.macs(math.ceil(ci / 4) * 4, math.ceil(co / 4) * 4) * 1e-7 + sig.bytes_moved(ci, co) * 1e-9

    def run_overhead_ms(self):
        return 0.01


def test_profile_resumes_after_interruption_and_warm_run_measures_nothing(profile_dir):
    loaded, an = inspect(example("resnet"))
    full = FakeBackend()
    latency_model(loaded, an, "ort-cpu", backend=full, profile_path=profile_dir / "a.json")
    broken = FakeBackend(fail_after=full.calls // 2)
    with pytest.raises(KeyboardInterrupt):
        latency_model(loaded, an, "ort-cpu", backend=broken, profile_path=profile_dir / "b.json")
    saved = store.read_profile(profile_dir / "b.json")
    assert 0 < saved.measured_points < full.calls
    resumed = FakeBackend()
    run = latency_model(loaded, an, "ort-cpu", backend=resumed, profile_path=profile_dir / "b.json")
    assert resumed.calls + saved.measured_points == full.calls
    warm = FakeBackend()
    again = latency_model(loaded, an, "ort-cpu", backend=warm, profile_path=profile_dir / "b.json")
    assert warm.calls == 0 and again.new_points == 0 and again.reused_points == full.calls
    assert run.model.profile.measured_points == full.calls


def test_prediction_is_the_block_sum_minus_overheads(profile_dir):
    loaded, an = inspect(example("resnet"))
    be = FakeBackend()
    run = latency_model(loaded, an, "ort-cpu", backend=be, profile_path=profile_dir / "p.json")
    blocks = model_blocks(loaded, an)
    pred = predict(blocks, run.model)
    expected = sum(be.measure(b.signature, b.c_in, b.c_out) - 0.01 for b in blocks) + 0.01
    assert pred.total_ms == pytest.approx(expected, rel=1e-6)
    kept = np.ones(len(an.channel_group), dtype=bool)
    kept[::2] = False
    assert predict(blocks, run.model, an, kept).total_ms < pred.total_ms


def test_a_removed_branch_costs_its_residual_add_and_activation(profile_dir):
    from halp_onnx.profiles.blocks import orphan_signatures

    loaded, an = inspect(example("resnet"))
    run = latency_model(loaded, an, "ort-cpu", backend=FakeBackend(), profile_path=profile_dir / "o.json")
    blocks = model_blocks(loaded, an)
    fused = [b for b in blocks if b.signature.op == "Conv" and "Add" in b.signature.epilogue]
    assert fused
    sig = fused[0].signature
    parts = orphan_signatures(sig)
    assert [p.epilogue for p in parts] == [("Add",), ("Relu",)]
    cost = run.model.block_ms(sig, 0, fused[0].c_out)
    assert cost == pytest.approx(sum(run.model.block_ms(p, fused[0].c_out, fused[0].c_out) for p in parts))
    assert 0 < cost < run.model.block_ms(sig, fused[0].c_in, fused[0].c_out)


def test_store_errors_and_atomic_write(profile_dir):
    bad = profile_dir / "bad.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("{not json")
    with pytest.raises(HalpError, match="bad.json: not valid JSON"):
        store.read_profile(bad)
    bad.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(HalpError, match="not a halp-onnx profile"):
        store.read_profile(bad)
    prof = store.Profile(name="x", target="ort-cpu", precision="fp32", batch=1, threads=1, estimated=False,
                         fingerprint={"cpu": "A"})
    store.write_profile(prof, profile_dir / "x.json")
    assert [p.name for p in profile_dir.iterdir() if p.name.startswith(".x.json")] == []
    assert store.read_profile(profile_dir / "x.json").fingerprint == {"cpu": "A"}


def test_profile_of_another_device_is_not_used_silently(profile_dir):
    prof = store.Profile(name="ort-cpu", target="ort-cpu", precision="fp32", batch=1, threads=1, estimated=False,
                         fingerprint={"cpu": "Some Other CPU", "threads": 1, "precision": "fp32", "batch": 1})
    store.write_profile(prof, profile_dir / "ort-cpu.json")
    with pytest.warns(UserWarning, match="another device or runtime.*Some Other CPU"):
        found, path = store.find_profile("ort-cpu", {"cpu": "This CPU", "threads": 1, "precision": "fp32", "batch": 1})
    assert found is None and path == profile_dir / "ort-cpu.json"


# ---------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / "resnet.onnx"
    save_model(example("resnet"), p)
    return str(p)


def test_cli_profile_then_latency_json(model_path, capsys, profile_dir):
    assert main(["profile", model_path, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "new measurements" in out and "step" in out
    assert main(["latency", model_path, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    lat = res["latency"]
    assert lat["label"] == "measured" and lat["predicted_ms"] > 0 and lat["measured_ms"] > 0
    assert lat["profile"].startswith(str(profile_dir))
    # warm: nothing new to measure
    assert main(["profile", model_path, "--quiet"]) == 0
    assert " 0 new measurements" in capsys.readouterr().out


def test_cli_analytic_target_is_marked_estimated(model_path, capsys):
    assert main(["latency", model_path, "--target", "trt-v100", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    lat = res["latency"]
    assert lat["label"] == "estimated" and lat["measured_ms"] is None and "TensorRT" in lat["measured_status"]
    assert main(["latency", model_path, "--target", "trt-v100"]) == 0
    assert "estimated" in capsys.readouterr().out
    assert main(["profile", model_path, "--target", "trt-v100"]) == 2
    assert "cannot measure here" in capsys.readouterr().err


def test_cli_targets_and_bad_options(model_path, capsys):
    assert main(["targets", "--json"]) == 0
    rows = {r["target"]: r for r in json.loads(capsys.readouterr().out)["details"]["targets"]}
    assert rows["ort-cpu"]["available"] and rows["trt-v100"]["latency"].startswith("estimated")
    assert main(["latency", model_path, "--target", "tpu-v9"]) == 2
    assert "unknown target" in capsys.readouterr().err
    assert main(["latency", model_path, "--batch", "0"]) == 2
    assert "--batch 0" in capsys.readouterr().err
    assert main(["latency", model_path, "--target", "ort-cpu", "--precision", "fp16"]) == 2
    assert "no fp16 variant" in capsys.readouterr().err
