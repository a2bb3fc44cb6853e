"""A profile of another CPU / onnxruntime transferred with a short recalibration; exact matches reused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from halp_onnx.api import inspect
from halp_onnx.cli import main
from halp_onnx.examples import example
from halp_onnx.passes.rewrite import save_model
from halp_onnx.profiles import store
from halp_onnx.profiles.latency import latency_model, profile_fingerprint
from halp_onnx.profiles.signature import BlockSignature
from halp_onnx.profiles.targets import get_target
from halp_onnx.profiles.transfer import describe, fit_scales, op_class


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("HALP_ONNX_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HALP_ONNX_TIMING_BUDGET_S", "0.01")
    monkeypatch.setattr(store, "SHIPPED_DIR", tmp_path / "shipped")
    return tmp_path


def test_fit_scales_recovers_per_class_factors_and_reports_the_error():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0.5, 2.0, size=(6, 2))
    meas = pred * np.array([1.6, 0.7])
    scales, before, after = fit_scales(meas, pred)
    assert scales["gemm"] == pytest.approx(1.6, rel=1e-6) and scales["memory"] == pytest.approx(0.7, rel=1e-6)
    assert after == pytest.approx(0.0, abs=1e-9) and before > 0.1
    # no memory-bound work: its scale stays 1, the other fits alone
    pred[:, 1] = 0
    scales, _, _ = fit_scales(pred * np.array([2.0, 1.0]), pred)
    assert scales == {"gemm": pytest.approx(2.0), "memory": 1.0}
    assert op_class("Elementwise;k=-") == "memory" and op_class("Conv;k=3x3") == "gemm"


def _measured_elsewhere(dirs) -> tuple:
    """The example model profiled here, then relabelled as measured on another CPU and runtime and
    shipped: what a fresh install on a new machine finds."""
    loaded, an = inspect(example("resnet"))
    here = latency_model(loaded, an, "ort-cpu", measure=True)
    prof = here.model.profile
    prof.fingerprint = dict(prof.fingerprint, cpu="Some Other CPU", onnxruntime="0.0.1")
    (dirs / "shipped").mkdir()
    store.write_profile(prof, dirs / "shipped" / "ort-cpu.json")
    (dirs / "profiles" / "ort-cpu.json").unlink()
    return loaded, an


def test_a_profile_of_another_device_is_transferred_labelled_and_then_reused_as_is(dirs):
    loaded, an = _measured_elsewhere(dirs)
    run = latency_model(loaded, an, "ort-cpu", measure=True)
    prof = run.model.profile
    assert run.source == "transferred" and prof.source == "transferred"
    t = prof.transfer
    assert t["from"]["cpu"] == "Some Other CPU" and t["from"]["onnxruntime"] == "0.0.1"
    assert set(t["scales"]) == {"gemm", "memory"} and all(0.2 <= v <= 5 for v in t["scales"].values())
    assert 0 <= t["fitted_error"] and t["runs"] >= 2 and t["seconds"] < 30
    assert all(tab.transferred for tab in prof.tables.values())
    assert any("transferred" in w and "fitted error" in w for w in run.warnings)
    assert run.new_points == 0  # nothing re-profiled: the transferred tables cover the model
    d = run.to_dict()
    assert d["source"] == "transferred" and d["transfer"]["fitted_error"] == t["fitted_error"]
    # saved for this device: the next run is an exact match, reused as is (no measuring) and still labelled
    saved = store.read_profile(dirs / "profiles" / "ort-cpu.json")
    want = profile_fingerprint(get_target("ort-cpu"))
    assert saved.match_key() == {k: want.get(k) for k in store.MATCH_KEYS} and saved.transfer == t

    class NoMeasuring:
        in_context = True

        def __getattr__(self, name):
            raise AssertionError(f"an exact match measured something ({name})")

    again = latency_model(loaded, an, "ort-cpu", measure=True, backend=NoMeasuring())
    assert again.new_points == 0 and again.source == "transferred" and again.model.profile.transfer == t
    # a transferred table is priced with its class's scale
    key, table = next(kv for kv in again.model.profile.tables.items() if kv[0].startswith("Conv"))
    assert again.model.scale(BlockSignature.from_key(key), table) == pytest.approx(t["scales"]["gemm"])
    assert "transferred from Some Other CPU" in describe(again.model.profile)


def test_latency_json_reports_the_transfer(dirs, capsys):
    _measured_elsewhere(dirs)
    path = dirs / "m.onnx"
    save_model(example("resnet"), path)
    assert main(["latency", str(path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert any("transferred from Some Other CPU" in w and "fitted error" in w for w in res["warnings"])
    assert res["latency"]["predicted_ms"] > 0


def test_an_exact_match_is_reused_and_never_transferred(dirs):
    loaded, an = inspect(example("resnet"))
    first = latency_model(loaded, an, "ort-cpu", measure=True)
    assert first.source == "measured" and not first.model.profile.transfer
    # a stale profile of another device beside it changes nothing
    other = store.read_profile(dirs / "profiles" / "ort-cpu.json")
    other.fingerprint = dict(other.fingerprint, cpu="Some Other CPU")
    (dirs / "shipped").mkdir()
    store.write_profile(other, dirs / "shipped" / "ort-cpu.json")
    again = latency_model(loaded, an, "ort-cpu", measure=True)
    assert again.source == "measured" and again.new_points == 0 and not again.warnings
