"""The three TensorRT commands through the CLI on the Python-API path: the fake ``tensorrt`` (exactly the
names of the real release it claims to be) and a fake H100 stand in for the libraries and the GPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from halp_onnx.cli import main
from halp_onnx.examples import example
from halp_onnx.passes.rewrite import save_model
from halp_onnx.profiles import targets
from tests.fakes import tensorrt_fake

H100 = {"name": "NVIDIA H100 PCIe", "compute_capability": "9.0", "driver": "550.54.15"}


@pytest.fixture
def fake_h100(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    tensorrt_fake.install(monkeypatch, "10.16.1.11")
    monkeypatch.setattr(tensorrt_fake.FakeCuda, "device_name", H100["name"], raising=False)
    monkeypatch.setattr(targets, "_nvidia_smi", lambda: [dict(H100)])
    monkeypatch.setenv("HALP_ONNX_PROFILE_DIR", str(tmp_path / "profiles"))
    (tmp_path / "profiles").mkdir()
    model = tmp_path / "example.onnx"
    save_model(example("resnet"), model)
    return model


def test_profile_latency_compile_engine_on_the_python_api(fake_h100: Path, tmp_path: Path, capsys):
    assert main(["profile", str(fake_h100), "--target", "trt-h100", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["latency", str(fake_h100), "--target", "trt-h100", "--json", "--quiet"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["schema"] == "halp-onnx/report/v1" and rep["latency"]["label"] == "measured"
    assert rep["latency"]["predicted_ms"] > 0 and rep["latency"]["measured_ms"] > 0
    out, plan = tmp_path / "out.onnx", tmp_path / "out.plan"
    code = main(["compile", str(fake_h100), "--target", "trt-h100", "--latency", "0.97", "--no-measure",
                 "--engine", str(plan), "-o", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert out.exists() and plan.exists() and plan.stat().st_size > 0


def test_int8_engine_without_calibration_is_refused_before_any_work(fake_h100: Path, tmp_path: Path, capsys):
    out, plan = tmp_path / "out.onnx", tmp_path / "out.plan"
    code = main(["compile", str(fake_h100), "--target", "trt-h100-int8", "--latency", "0.9", "--no-measure",
                 "--engine", str(plan), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "int8 engine needs calibration data" in err[-1]
    assert not out.exists() and not plan.exists()
