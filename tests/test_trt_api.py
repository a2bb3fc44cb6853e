"""The TensorRT Python-API path end to end against a fake ``tensorrt`` of each surface release.

The fake (tests/fakes/tensorrt_fake.py) has exactly the names of the real 8.6.1, 10.4.0,
10.16.1.11 and 11.4.0.106 bindings and documented behaviour; CUDA is a host-memory fake.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from halp_onnx.errors import HalpError
from halp_onnx.examples import example
from halp_onnx.profiles.trt import TrtBackend
from tests.fakes import tensorrt_fake

RELEASES = tensorrt_fake.versions()
WEAK = [v for v in RELEASES if int(v.split(".")[0]) <= 10]    # BuilderFlag.FP16/INT8, calibrators
STRONG = [v for v in RELEASES if int(v.split(".")[0]) >= 11]  # strongly typed only


def _install(monkeypatch: pytest.MonkeyPatch, version: str):
    return tensorrt_fake.install(monkeypatch, version)


def _plan(path: Path) -> dict:
    return json.loads(path.read_bytes())


def _qdq_model() -> onnx.ModelProto:
    """resnet with QuantizeLinear -> DequantizeLinear on its input."""
    model = example("resnet")
    graph = model.graph
    name = graph.input[0].name
    for node in graph.node:
        node.input[:] = ["input_dq" if i == name else i for i in node.input]
    graph.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "qdq_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), "qdq_zero")])
    nodes = [helper.make_node("QuantizeLinear", [name, "qdq_scale", "qdq_zero"], ["input_q"], name="input_quant"),
             helper.make_node("DequantizeLinear", ["input_q", "qdq_scale", "qdq_zero"], ["input_dq"],
                              name="input_dequant")]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    onnx.checker.check_model(model)
    return model


def _fp16_model() -> onnx.ModelProto:
    """resnet with float16 weights and I/O (what a strongly typed 11.x fp16 build needs)."""
    model = example("resnet")
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in [*graph.input, *graph.output]:
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    return model


def _dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    return model


def _batches(n: int = 3, shape: tuple[int, ...] = (1, 3, 32, 32)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


# -- building, timing, per-layer times, engine files ----------------------------------------------


@pytest.mark.parametrize("version", RELEASES)
def test_available_names_the_release(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    _install(monkeypatch, version)
    ok, reason = TrtBackend().available()
    assert ok and reason.startswith(f"TensorRT {version} on Fake GPU")


@pytest.mark.parametrize("version", RELEASES)
def test_measure_times_and_profiles_layers(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    trt = _install(monkeypatch, version)
    model = example("resnet")
    m = TrtBackend(workspace_mb=64).measure_onnx(model, "fp32", warmup=2, iters=5, profile_layers=True)
    assert len(m.samples_ms) == 5 and all(s >= 0 for s in m.samples_ms)
    assert m.trt_version == version and m.device == tensorrt_fake.FakeCuda.device_name
    assert m.input_shapes == (("input", (1, 3, 32, 32)),) and m.int8_source is None
    nodes = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node)]
    assert [layer.name for layer in m.layers] == nodes  # IProfiler.report_layer_time, per layer
    first = m.layers[0]
    assert first.avg_ms == pytest.approx(0.001) and first.time_ms_total == pytest.approx(0.005)
    assert sum(layer.percentage or 0 for layer in m.layers) == pytest.approx(100.0)
    assert m.engine_info is not None and m.engine_info.bindings == ("input", "logits")
    assert [layer.name for layer in m.engine_info.layers] == nodes
    assert m.engine_info.layers[0].layer_type == "Convolution"  # built with ProfilingVerbosity.DETAILED
    assert trt._state["executions"] == 2 + 5 + 5
    plain = TrtBackend().measure_onnx(model, "fp32", warmup=0, iters=2)
    assert plain.layers == () and plain.engine_info is None


@pytest.mark.parametrize("version", RELEASES)
def test_build_engine_writes_a_plan_for_the_release(monkeypatch: pytest.MonkeyPatch, version: str,
                                                    tmp_path: Path) -> None:
    _install(monkeypatch, version)
    out = TrtBackend().build_engine(example("resnet"), tmp_path / "sub" / "m.plan", "fp32")
    plan = _plan(out)
    assert plan["fake_tensorrt"] == version and plan["flags"] == [] and plan["int8_scales"] is None
    path = tmp_path / "m.onnx"
    onnx.save(example("resnet"), path)
    assert _plan(TrtBackend().build_engine(path, tmp_path / "p.plan", "fp32"))["layers"] == plan["layers"]


@pytest.mark.parametrize("version", RELEASES)
def test_dynamic_batch_gets_an_optimization_profile(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    _install(monkeypatch, version)
    m = TrtBackend().measure_onnx(_dynamic_batch(example("resnet")), "fp32", batch=4, warmup=0, iters=2)
    assert m.input_shapes == (("input", (4, 3, 32, 32)),)


def test_parse_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _install(monkeypatch, RELEASES[0])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(HalpError, match="could not parse the ONNX model") as info:
        TrtBackend().build_engine(bad, tmp_path / "x.plan", "fp32")
    assert "\n" not in str(info.value) and not (tmp_path / "x.plan").exists()


# -- precision: weakly typed 8.x/10.x, strongly typed 11.x -------------------------------------------


@pytest.mark.parametrize("version", WEAK)
def test_fp16_sets_the_builder_flag(monkeypatch: pytest.MonkeyPatch, version: str, tmp_path: Path) -> None:
    _install(monkeypatch, version)
    assert _plan(TrtBackend().build_engine(example("resnet"), tmp_path / "m.plan", "fp16"))["flags"] == ["FP16"]


@pytest.mark.parametrize("version", STRONG)
def test_fp16_on_strongly_typed_needs_an_fp16_model(monkeypatch: pytest.MonkeyPatch, version: str,
                                                   tmp_path: Path) -> None:
    _install(monkeypatch, version)
    with pytest.raises(HalpError, match=rf"TensorRT {version} builds strongly typed networks only") as info:
        TrtBackend().measure_onnx(example("resnet"), "fp16", warmup=0, iters=1)
    assert "\n" not in str(info.value)
    plan = _plan(TrtBackend().build_engine(_fp16_model(), tmp_path / "m.plan", "fp16"))
    assert plan["flags"] == [] and plan["inputs"][0][2] == "HALF"


# -- int8: real or refused ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", WEAK)
def test_int8_engine_without_calibration_is_refused(monkeypatch: pytest.MonkeyPatch, version: str,
                                                    tmp_path: Path) -> None:
    trt = _install(monkeypatch, version)
    with pytest.raises(HalpError, match=r"int8 engine needs calibration data .*for timing only") as info:
        TrtBackend().build_engine(example("resnet"), tmp_path / "m.plan", "int8")
    assert "\n" not in str(info.value) and info.value.stage == "tensorrt"
    assert not (tmp_path / "m.plan").exists() and not (tmp_path / "m.plan.calib").exists()
    # timing may use placeholder ranges: the speed is real, the numbers are not
    m = TrtBackend().measure_onnx(example("resnet"), "int8", warmup=0, iters=2)
    assert m.int8_source == "placeholder"
    assert not any("Missing scale" in msg for _, msg in trt._state["log"])  # every tensor got a range


@pytest.mark.parametrize("version", WEAK)
def test_int8_engine_is_calibrated_from_batches(monkeypatch: pytest.MonkeyPatch, version: str,
                                                tmp_path: Path) -> None:
    trt = _install(monkeypatch, version)
    out = TrtBackend().build_engine(example("resnet"), tmp_path / "m.plan", "int8", calib_batches=_batches(3))
    plan = _plan(out)
    assert plan["int8_scales"] == "calibration" and set(plan["flags"]) == {"FP16", "INT8"}
    assert trt._state["calibrated"] == [{"batches": 3, "batch_size": 1, "peak": pytest.approx(
        max(float(np.abs(b).max()) for b in _batches(3)))}]  # the data reached the "device"
    cache = tmp_path / "m.plan.calib"
    assert cache.read_text().startswith(f"TRT-{version}-EntropyCalibration2\ninput: ")
    # a mapping per batch works too, and a dynamic batch gets a calibration profile
    feeds = [{"input": b} for b in _batches(2, (2, 3, 32, 32))]
    out2 = TrtBackend().build_engine(_dynamic_batch(example("resnet")), tmp_path / "d.plan", "int8", batch=2,
                                     calib_batches=iter(feeds))
    assert _plan(out2)["int8_scales"] == "calibration" and trt._state["calibrated"][-1]["batch_size"] == 2


@pytest.mark.parametrize("version", WEAK)
def test_int8_calibration_data_must_fit_the_engine(monkeypatch: pytest.MonkeyPatch, version: str,
                                                   tmp_path: Path) -> None:
    _install(monkeypatch, version)
    with pytest.raises(HalpError, match=r"calibration batch 0: input 'input' has shape \(1, 3, 16, 16\)"):
        TrtBackend().build_engine(example("resnet"), tmp_path / "m.plan", "int8",
                                  calib_batches=_batches(2, (1, 3, 16, 16)))
    with pytest.raises(HalpError, match="calib_batches gave no calibration batch"):
        TrtBackend().build_engine(example("resnet"), tmp_path / "m.plan", "int8", calib_batches=[])
    assert not (tmp_path / "m.plan").exists()


@pytest.mark.parametrize("version", RELEASES)
def test_int8_qdq_model_needs_no_calibration(monkeypatch: pytest.MonkeyPatch, version: str,
                                             tmp_path: Path) -> None:
    _install(monkeypatch, version)
    plan = _plan(TrtBackend().build_engine(_qdq_model(), tmp_path / "m.plan", "int8"))
    assert plan["int8_scales"] == "qdq"
    assert set(plan["flags"]) == ({"FP16", "INT8"} if version in WEAK else set())
    assert not (tmp_path / "m.plan.calib").exists()
    assert TrtBackend().measure_onnx(_qdq_model(), "int8", warmup=0, iters=1).int8_source == "qdq"


@pytest.mark.parametrize("version", STRONG)
def test_int8_on_strongly_typed_needs_qdq(monkeypatch: pytest.MonkeyPatch, version: str, tmp_path: Path) -> None:
    _install(monkeypatch, version)
    for kwargs in ({}, {"calib_batches": _batches(2)}):
        with pytest.raises(HalpError, match=rf"TensorRT {version} has no INT8 calibration") as info:
            TrtBackend().build_engine(example("resnet"), tmp_path / "m.plan", "int8", **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(HalpError, match="QuantizeLinear/DequantizeLinear"):
        TrtBackend().measure_onnx(example("resnet"), "int8", warmup=0, iters=1)


# -- versions outside the supported range --------------------------------------------------------------


@pytest.mark.parametrize("claimed", ["8.5.3", "9.3.0", "12.0.1", "7.2.3.4"])
def test_release_outside_the_supported_range_is_refused(monkeypatch: pytest.MonkeyPatch, claimed: str,
                                                        tmp_path: Path) -> None:
    trt = _install(monkeypatch, RELEASES[0])
    trt.__version__ = claimed
    ok, reason = TrtBackend().available()
    assert not ok and reason.startswith(f"TensorRT {claimed} is not supported")
    with pytest.raises(HalpError, match=rf"TensorRT {claimed} is not supported.*8\.6 to 11\.x") as info:
        TrtBackend().build_engine(example("resnet"), tmp_path / "m.plan", "fp32")
    assert "\n" not in str(info.value)
    with pytest.raises(HalpError, match=rf"TensorRT {claimed} is not supported"):
        TrtBackend().measure_onnx(example("resnet"), "fp32", warmup=0, iters=1)
