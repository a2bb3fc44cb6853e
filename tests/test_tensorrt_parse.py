"""TensorRT backend: parsers checked against real trtexec / polygraphy output, and the
measurement path's behaviour on a machine without TensorRT.

The fixtures live in the shared checkout next to the repository
(``<repo>/../shared/fixtures/tensorrt``); see its ``SOURCES.md`` for where each file
came from.  Every file there is parsed (the parametrization follows the directory
listing, so a new fixture is picked up automatically); the files known today also
have their values checked in ``CHECKS``.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from halp_onnx.errors import HalpError
from halp_onnx.profiles import trt as trt_profiles
from halp_onnx.profiles.trt import (
    EngineInfo,
    LayerProfile,
    PolygraphyResult,
    TrtBackend,
    TrtexecSummary,
    parse_dump_profile,
    parse_dump_profile_table,
    parse_engine_info,
    parse_export_profile,
    parse_export_profile_table,
    parse_layer_info,
    parse_polygraphy_log,
    parse_trtexec_log,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "tensorrt"
SKIP_REASON = f"shared TensorRT fixtures not found at {FIXTURES}"


def _fixture_names() -> list[str]:
    if not FIXTURES.is_dir():
        return []
    return sorted(p.name for p in FIXTURES.iterdir() if p.is_file() and p.name != "SOURCES.md")


FIXTURE_NAMES = _fixture_names()
ALL_FIXTURES: list[object] = (
    list(FIXTURE_NAMES) or [pytest.param(None, marks=pytest.mark.skip(reason=SKIP_REASON))]
)


def approx(value: float) -> object:
    """Equal up to float noise: the parsers must return the printed numbers exactly."""
    return pytest.approx(value, rel=1e-9, abs=1e-12)


def fixture_path(name: str) -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(SKIP_REASON)
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {name} is not in {FIXTURES}")
    return path


def fixture_text(name: str) -> str:
    return fixture_path(name).read_text(encoding="utf-8")


def kind_of(name: str) -> str:
    if name.startswith("polygraphy"):
        return "polygraphy"
    if "exportProfile" in name:
        return "export_profile"
    if "exportLayerInfo" in name and name.endswith(".json"):
        return "layer_info"
    return "trtexec"


# trtexec logs that hold no timing at all: parse_trtexec_log must refuse them.
NO_TIMING = {
    "trtexec_10.4.0_rtx3060laptop_excerpt_explanations.log": "",  # only [V] metric explanations
    "trtexec_10.16.1_h100pcie_4_exportLayerInfo_run.log": "--skipInference",
}


def parse_any(name: str, text: str) -> object:
    kind = kind_of(name)
    if kind == "polygraphy":
        return parse_polygraphy_log(text)
    if kind == "export_profile":
        return parse_export_profile_table(text)
    if kind == "layer_info":
        return parse_engine_info(text)
    return parse_trtexec_log(text)


# --------------------------------------------------------------------------------------
# Every fixture: parses, is self-consistent, and parses the same with CRLF line ends
# --------------------------------------------------------------------------------------


def _check_stats_consistent(stats: trt_profiles.TimingStats | None) -> None:
    if stats is None:
        return
    assert stats.min_ms is not None and stats.max_ms is not None
    assert stats.min_ms <= stats.max_ms
    for value in (stats.mean_ms, stats.median_ms):
        if value is not None:
            assert stats.min_ms <= value <= stats.max_ms
    pcts = [p for p, _ in stats.percentiles_ms]
    assert pcts == sorted(pcts)
    values = [v for _, v in stats.percentiles_ms]
    assert values == sorted(values)
    assert all(stats.min_ms <= v <= stats.max_ms for v in values)


def _check_profile_consistent(profile: LayerProfile) -> None:
    assert profile.layers
    assert all(layer.name for layer in profile.layers)
    assert all(layer.time_ms_total >= 0 and layer.avg_ms >= 0 for layer in profile.layers)
    if all(layer.percentage is not None for layer in profile.layers):
        assert math.fsum(layer.percentage or 0.0 for layer in profile.layers) == pytest.approx(100, abs=0.5)
    if profile.total is not None:
        summed = math.fsum(layer.time_ms_total for layer in profile.layers)
        assert summed == pytest.approx(profile.total.time_ms_total, abs=0.01 * len(profile.layers))


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_fixture_parses(name: str) -> None:
    text = fixture_text(name)
    kind = kind_of(name)
    if kind == "trtexec" and name in NO_TIMING:
        with pytest.raises(HalpError) as info:
            parse_trtexec_log(text)
        assert info.value.stage == "tensorrt"
        assert "\n" not in str(info.value)
        assert "no TensorRT timing" in str(info.value)
        assert NO_TIMING[name] in str(info.value)
    else:
        result = parse_any(name, text)
        if isinstance(result, TrtexecSummary):
            assert result.median_ms is not None or result.profile is not None
            for stats in (result.gpu_compute, result.latency, result.end_to_end, result.enqueue,
                          result.h2d, result.d2h):
                _check_stats_consistent(stats)
            if result.profile is not None:
                _check_profile_consistent(result.profile)
        elif isinstance(result, LayerProfile):
            assert result.iterations is not None and result.iterations > 0
            _check_profile_consistent(result)
        elif isinstance(result, EngineInfo):
            assert result.layers and all(layer.name for layer in result.layers)
            assert result.bindings
        else:
            assert isinstance(result, PolygraphyResult)
            assert result.runs and all(run.average_ms > 0 for run in result.runs)
            assert all(run.kind in ("trt", "onnxrt") for run in result.runs)
        # Windows line ends change nothing.
        assert parse_any(name, text.replace("\n", "\r\n")) == result

    check = CHECKS.get(name)
    if check is not None:
        check(text)


def test_every_known_fixture_is_in_the_directory() -> None:
    if not FIXTURE_NAMES:
        pytest.skip(SKIP_REASON)
    assert set(CHECKS) <= set(FIXTURE_NAMES)
    assert set(NO_TIMING) <= set(FIXTURE_NAMES)


# --------------------------------------------------------------------------------------
# Concrete values read from each fixture
# --------------------------------------------------------------------------------------


def check_trtexec_7_2(text: str) -> None:
    s = parse_trtexec_log(text)
    assert s.trt_version is None  # 7.x prints no version
    assert s.gpu_name == "NVIDIA GeForce RTX 3070 Laptop GPU"
    assert s.compute_capability == "8.6"
    assert s.precision == "FP32"
    assert s.gpu_compute == trt_profiles.TimingStats(10.0383, 10.7838, 10.174, 10.1528, ((99.0, 10.7664),))
    assert s.median_ms == approx(10.1528)
    assert s.latency is not None and s.latency.median_ms == approx(10.4918)
    assert s.end_to_end is not None and s.end_to_end.median_ms == approx(20.1355)
    assert s.end_to_end.percentile(99) == approx(21.3166)
    assert s.enqueue is not None and s.enqueue.mean_ms is None  # 7.x prints min/max/median only
    assert s.enqueue.median_ms == approx(0.411377)
    # "Timing trace has 0 queries" / "throughput: 0 qps": the explicit-batch quirk.
    assert s.queries == 0 and s.throughput_qps is None
    assert any("0 qps" in w for w in s.warnings)
    assert s.total_host_walltime_s == approx(3.02214)
    assert s.total_gpu_compute_s == approx(3.01149)
    assert s.passed is True


def check_trtexec_8_0_3(text: str) -> None:
    s = parse_trtexec_log(text)
    assert s.trt_version == "8.0.3"  # from "TensorRT version: 8003"
    assert s.gpu_name == "NVIDIA GeForce GTX 1070"
    assert s.compute_capability == "6.1"
    assert s.throughput_qps == approx(6168.97)
    assert s.median_ms == approx(0.152588)
    assert s.gpu_compute is not None and s.gpu_compute.percentile(99) == approx(0.157715)
    assert s.end_to_end is not None and s.end_to_end.median_ms == approx(0.289062)
    assert s.queries == 18510
    assert s.total_gpu_compute_s == approx(2.82804)
    assert s.passed is True


def check_trtexec_8_2_3(text: str) -> None:
    s = parse_trtexec_log(text)
    assert (s.trt_version, s.gpu_name) == ("8.2.3", "NVIDIA GeForce GTX 1070")
    assert s.throughput_qps == approx(6531.92)
    assert s.gpu_compute is not None
    assert s.gpu_compute.median_ms == approx(0.150635)
    assert s.gpu_compute.mean_ms == approx(0.151215)
    assert s.end_to_end is not None and s.end_to_end.max_ms == approx(0.54895)
    assert s.d2h is not None and s.d2h.percentile(99) == approx(0.003479)


def check_trtexec_8_4_1(text: str) -> None:
    s = parse_trtexec_log(text)
    assert (s.trt_version, s.gpu_name) == ("8.4.1", "NVIDIA GeForce GTX 1070")
    assert s.median_ms == approx(0.15564)
    assert s.throughput_qps == approx(6207.5)
    assert s.end_to_end is None  # removed in 8.4
    assert s.latency is not None and s.latency.percentile(99) == approx(0.388947)


def check_trtexec_8_4_scinotation(text: str) -> None:
    s = parse_trtexec_log(text)
    assert s.throughput_qps == approx(2.54521e6)  # "2.54521e+06 qps"
    assert s.median_ms == approx(7.1825)
    assert s.enqueue is not None and s.enqueue.min_ms == approx(0.00854492)
    assert s.latency is not None and s.latency.percentile(99) == approx(47.6256)
    assert s.gpu_compute_cv_percent == approx(7.58229)
    assert s.trt_version is None and s.gpu_name is None and s.passed is None


def check_trtexec_8_6_0(text: str) -> None:
    s = parse_trtexec_log(text)
    assert (s.trt_version, s.gpu_name) == ("8.6.0", "NVIDIA GeForce RTX 3090")
    assert s.gpu_compute is not None
    assert s.gpu_compute.percentiles_ms == ((90.0, 0.0449219), (95.0, 0.045105), (99.0, 0.0521851))
    assert s.median_ms == approx(0.0439453)
    assert s.throughput_qps == approx(21009.2)
    assert s.queries == 63030
    assert s.gpu_compute_cv_percent == approx(44.3558)


def check_trtexec_10_4_summary(text: str) -> None:
    s = parse_trtexec_log(text)
    assert s.median_ms == approx(0.499023)
    assert s.throughput_qps == approx(1995.29)
    assert s.enqueue is not None and s.enqueue.min_ms == approx(0.000976562)
    assert s.h2d == trt_profiles.TimingStats(0.0, 0.0, 0.0, 0.0, ((90.0, 0.0), (95.0, 0.0), (99.0, 0.0)))
    assert s.total_host_walltime_s == approx(3.00106)


def check_trtexec_10_4_dump_profile(text: str) -> None:
    table = parse_dump_profile_table(text)
    assert table.iterations == 14590
    assert len(table.layers) == 14
    gemm = table.layers[11]
    assert gemm == trt_profiles.LayerTiming("/classifier/classifier_1/Gemm_myl9_2", 3495.36, 0.2396, 0.2396, 45.7)
    assert table.total == trt_profiles.LayerTiming("Total", 7647.66, 0.5242, 0.5233, 100.0)
    assert table.total_avg_ms == approx(0.5242)
    # The same run's --exportProfile JSON: same layers, same times to the table's 2 decimals.
    exported = parse_export_profile(fixture_path("trtexec_10.4.0_rtx3060laptop_exportProfile_alexnet.json"))
    assert [layer.name for layer in exported] == [layer.name for layer in table.layers]
    for row, full in zip(table.layers, exported, strict=True):
        assert row.time_ms_total == pytest.approx(full.time_ms_total, abs=0.006)
    # A log with only the table still counts as timing.
    s = parse_trtexec_log(text)
    assert s.median_ms is None and s.profile == table


def check_trtexec_10_7(text: str) -> None:
    s = parse_trtexec_log(text)
    assert s.trt_version == "10.7.0" and s.gpu_name is None
    assert s.median_ms == approx(30.1722)
    assert s.throughput_qps == approx(32.7494)
    assert s.queries == 101
    assert s.total_gpu_compute_s == approx(3.05129)


def check_trtexec_10_14(text: str) -> None:
    s = parse_trtexec_log(text)
    assert s.trt_version == "10.14.1"
    assert s.gpu_name == "NVIDIA RTX 6000 Ada Generation"
    assert s.compute_capability == "8.9"
    assert s.median_ms == approx(0.0285645)
    assert s.throughput_qps == approx(23188.6)
    assert s.gpu_compute_cv_percent == approx(12.8763)
    assert s.warnings == ("GPU compute time is unstable, with coefficient of variance = 12.8763%.",)


def check_trtexec_10_16_1(text: str) -> None:
    s = parse_trtexec_log(text)
    assert (s.trt_version, s.gpu_name, s.compute_capability) == ("10.16.1", "NVIDIA H100 PCIe", "9.0")
    assert s.precision == "FP32"
    assert s.median_ms == approx(0.0361328)
    assert s.gpu_compute is not None and s.gpu_compute.percentile(95) == approx(0.0371094)
    assert s.latency is not None and s.latency.median_ms == approx(0.0440674)
    assert s.throughput_qps == approx(15374.3)


def check_trtexec_10_16_2(text: str) -> None:
    s = parse_trtexec_log(text)
    assert s.trt_version == "10.16.1"
    assert s.median_ms == approx(0.0388184)
    assert s.throughput_qps == approx(24896.9)
    assert s.h2d is not None and s.h2d.max_ms == 0.0  # --noDataTransfers
    assert s.queries == 74692


def check_trtexec_10_16_dump_profile(text: str) -> None:
    s = parse_trtexec_log(text)
    assert (s.trt_version, s.gpu_name) == ("10.16.1", "NVIDIA H100 PCIe")
    assert s.median_ms is None  # no performance summary while the profiler runs
    assert s.profile is not None and s.profile.iterations == 18362
    layers = parse_dump_profile(text)
    assert len(layers) == 15
    assert layers[0] == trt_profiles.LayerTiming("__mye59_0_myl0_0", 31.40, 0.0017, 0.0018, 2.1)
    assert layers[3].name == (
        "Reformatting CopyNode for Input Tensor 0 to {ForeignNode[node_conv2d_1...node_relu_1]}"
    )
    assert s.profile.total == trt_profiles.LayerTiming("Total", 1529.13, 0.0833, 0.0804, 100.0)


def check_trtexec_10_16_layer_info_run(text: str) -> None:
    # No timing (checked above), but the --dumpLayerInfo block parses like the JSON it wrote.
    dumped = parse_engine_info(text)
    exported = parse_engine_info(fixture_text("trtexec_10.16.1_h100pcie_exportLayerInfo_detailed.json"))
    assert dumped == exported
    assert dumped.bindings == ("x", "y", "z")


def check_ait_wrapped(text: str) -> None:
    assert text.startswith("[INFO] [05/27/2023-12:05:31] [I] ")
    s = parse_trtexec_log(text)
    assert s.median_ms == approx(8.19409)
    assert s.throughput_qps == approx(120.699)
    assert s.gpu_compute is not None and s.gpu_compute.percentile(95) == approx(8.59131)
    assert s.total_gpu_compute_s == approx(3.00752)


def _export_profile_check(count: int, n_layers: int, index: int, expected: trt_profiles.LayerTiming
                          ) -> Callable[[str], None]:
    def check(text: str) -> None:
        table = parse_export_profile_table(text)
        assert table.iterations == count
        assert len(table.layers) == n_layers
        assert table.layers[index] == expected
        assert parse_export_profile(json.loads(text)) == list(table.layers)  # loaded list works too

    return check


def check_layer_info_10_16(text: str) -> None:
    layers = parse_layer_info(text)
    assert len(layers) == 9
    conv = layers[0]
    assert (conv.name, conv.layer_type, conv.parameter_type) == (
        "node_conv2d + node_relu", "CaskConvolution", "Convolution")
    assert conv.inputs == (trt_profiles.TensorInfo("x", (1, 1, 28, 28), "Float", "Device"),)
    assert conv.outputs[0].dims == (1, 32, 28, 28)
    assert conv.tactic_value == "0x5b8bf1b8028629d9"
    assert conv.tactic_name is not None and conv.tactic_name.startswith("sm80_xmma_fprop_implicit_gemm")
    assert conv.onnx_layers == ("node_conv2d", "node_relu")  # Metadata joined by \x1e
    assert layers[-1].name == "__myl_CastReshCast_myl4_4"
    assert layers[-1].outputs == (trt_profiles.TensorInfo("z", (1,), "Int64", None),)
    assert layers[-1].onnx_layers == ()


def check_layer_info_10_4_alexnet(text: str) -> None:
    info = parse_engine_info(text)
    assert info.bindings == ("input", "output")
    assert len(info.layers) == 14
    first = info.layers[0]
    assert (first.layer_type, first.origin, first.tactic_value) == ("Reformat", "REFORMAT", "0x00000000000003e8")
    last = info.layers[-1]
    assert (last.name, last.layer_type) == ("/classifier/classifier_6/Gemm_myl9_4", "gemm")
    assert last.outputs[0].dims == (1, 1000) and len(last.inputs) == 5
    assert info.layers[1].onnx_layers == ("/features/features.0/Conv", "/features/features.1/Relu")
    profile = parse_export_profile(fixture_path("trtexec_10.4.0_rtx3060laptop_exportProfile_alexnet.json"))
    assert [layer.name for layer in info.layers] == [layer.name for layer in profile]


def _layer_info_qat_check(n_layers: int, first_type: str, first_origin: str | None, profile_file: str
                          ) -> Callable[[str], None]:
    def check(text: str) -> None:
        layers = parse_layer_info(text)
        assert len(layers) == n_layers
        assert layers[0].name == "QuantizeLinear_2"
        assert (layers[0].layer_type, layers[0].origin) == (first_type, first_origin)
        assert layers[0].inputs[0].dims == (1, 3, 224, 224)
        assert all(layer.detailed for layer in layers)
        profile = parse_export_profile(fixture_path(profile_file))
        assert [layer.name for layer in layers] == [layer.name for layer in profile]

    return check


def _layer_info_names_check(n_layers: int, first: str, bindings: tuple[str, ...]) -> Callable[[str], None]:
    def check(text: str) -> None:
        info = parse_engine_info(text)
        assert len(info.layers) == n_layers
        assert info.layers[0] == trt_profiles.LayerInfo(first)
        assert not any(layer.detailed for layer in info.layers)
        assert info.bindings == bindings

    return check


def _polygraphy_check(runs: dict[str, float], trt_version: str | None, *, passed: bool = True,
                      pass_rate: float | None = None, build_s: float | None = None
                      ) -> Callable[[str], None]:
    def check(text: str) -> None:
        result = parse_polygraphy_log(text)
        assert {run.kind: run.average_ms for run in result.runs} == runs
        for kind, ms in runs.items():
            assert result.inference_ms(kind) == approx(ms)
        assert all(run.iterations == 1 for run in result.runs)
        assert result.trt_version == trt_version
        assert result.passed is passed
        assert result.pass_rate_percent == pass_rate
        assert result.engine_build_s == build_s
        if "trt" not in runs:
            with pytest.raises(HalpError, match="no 'trt' runner"):
                result.inference_ms("trt")

    return check


LT = trt_profiles.LayerTiming
CHECKS: dict[str, Callable[[str], None]] = {
    # trtexec logs
    "trtexec_7.2_rtx3070laptop_1.log": check_trtexec_7_2,
    "trtexec_8.0.3_gtx1070_1.log": check_trtexec_8_0_3,
    "trtexec_8.2.3_gtx1070_1.log": check_trtexec_8_2_3,
    "trtexec_8.4.1_gtx1070_1.log": check_trtexec_8_4_1,
    "trtexec_8.4_teslam40_excerpt_scinotation.log": check_trtexec_8_4_scinotation,
    "trtexec_8.6.0_rtx3090_1.log": check_trtexec_8_6_0,
    "trtexec_10.4.0_rtx3060laptop_excerpt_summary.log": check_trtexec_10_4_summary,
    "trtexec_10.4.0_rtx3060laptop_excerpt_dumpProfile.log": check_trtexec_10_4_dump_profile,
    "trtexec_10.7.0_rtx4090_excerpt.log": check_trtexec_10_7,
    "trtexec_10.14.1_rtx6000ada_1.log": check_trtexec_10_14,
    "trtexec_10.16.1_h100pcie_1.log": check_trtexec_10_16_1,
    "trtexec_10.16.1_h100pcie_2.log": check_trtexec_10_16_2,
    "trtexec_10.16.1_h100pcie_3_dumpProfile.log": check_trtexec_10_16_dump_profile,
    "trtexec_10.16.1_h100pcie_4_exportLayerInfo_run.log": check_trtexec_10_16_layer_info_run,
    "trtexec_unknown-ge8.5_unknown-gpu_excerpt_ait-wrapped.log": check_ait_wrapped,
    # --exportProfile JSON
    "trtexec_10.4.0_rtx3060laptop_exportProfile_alexnet.json": _export_profile_check(
        14590, 14, 11, LT("/classifier/classifier_1/Gemm_myl9_2", 3495.36, 0.239573, 0.239616, 45.705)),
    "trtexec_10.4.0_rtx3060laptop_exportProfile_mobilenet_v2.json": _export_profile_check(
        18488, 57, -1, LT("/classifier/classifier_1/Gemm_myl55_1", 302.945, 0.016386, 0.016384, 3.98422)),
    "trtexec_10.4.0_rtx3060laptop_exportProfile_resnet18.json": _export_profile_check(
        21071, 26, -1, LT("__myl_MulSumAdd_myl24_1", 151.079, 0.00717002, 0.007168, 1.97241)),
    "trtexec_8.2_titanrtx_exportProfile_mobilenet_qat.json": _export_profile_check(
        4216, 85, 0, LT("QuantizeLinear_2", 51.4526, 0.0122041, None, 1.88608)),
    "trtexec_8.2_titanrtx_exportProfile_mobilenet_v2_residuals_qat.json": _export_profile_check(
        7075, 59, -1, LT("copied_squeeze_after_(Unnamed Layer* 803) [ElementWise]", 0.0, 0.0, None, 0.0)),
    "trtexec_8.4_titanrtx_exportProfile_mobilenet_qat.json": _export_profile_check(
        6610, 73, 0, LT("QuantizeLinear_2", 31.3879, 0.00474854, 0.004544, 1.00949)),
    "trtexec_8.4_titanrtx_exportProfile_mobilenet_v2_residuals_qat.json": _export_profile_check(
        8657, 58, 0, LT("QuantizeLinear_2", 39.4052, 0.00455183, 0.004384, 1.27889)),
    # --exportLayerInfo JSON
    "trtexec_10.16.1_h100pcie_exportLayerInfo_detailed.json": check_layer_info_10_16,
    "trtexec_10.4.0_rtx3060laptop_exportLayerInfo_alexnet.json": check_layer_info_10_4_alexnet,
    "trtexec_8.2_titanrtx_exportLayerInfo_mobilenet_qat.json": _layer_info_qat_check(
        85, "Scale", None, "trtexec_8.2_titanrtx_exportProfile_mobilenet_qat.json"),
    "trtexec_8.4_titanrtx_exportLayerInfo_mobilenet_qat.json": _layer_info_qat_check(
        73, "Reformat", "QDQ", "trtexec_8.4_titanrtx_exportProfile_mobilenet_qat.json"),
    "trtexec_8.2.3_gtx1070_exportLayerInfo_noDetail.json": _layer_info_names_check(
        12, "Conv__25 + Relu", ("x:0", "z:0")),
    "trtexec_8.4.1_gtx1070_exportLayerInfo_noDetail.json": _layer_info_names_check(
        12, "Conv-1 + ReLU-2", ("tensor-0", "tensor-15")),
    "trtexec_8.6.0_rtx3090_exportLayerInfo_noDetail.json": _layer_info_names_check(
        15, "Reformatting CopyNode for Input Tensor 0 to Conv-1 + ReLU-2", ("tensor-0", "tensor-15")),
    # polygraphy
    "polygraphy_0.38.0_trt8.4.1.5_unknown-gpu_1.log": _polygraphy_check(
        {"onnxrt": 1.91, "trt": 0.5693}, "8.4.1.5", build_s=2.278),
    "polygraphy_0.38.0_trt8.5.0.12_unknown-gpu_1.log": _polygraphy_check(
        {"onnxrt": 1.653, "trt": 0.4652}, "8.5.0.12", build_s=15.783),
    "polygraphy_0.47.1_trt8.6.1_unknown-gpu_1.log": _polygraphy_check(
        {"trt": 0.5982}, "8.6.1", build_s=16.696),
    "polygraphy_0.49.26_onnxrt-cpu_2.log": _polygraphy_check({"onnxrt": 0.9515}, None),
    "polygraphy_0.49.26_trt10.16.2.5_unknown-gpu_1_trt.log": _polygraphy_check({"trt": 1028.0}, "10.16.2.5"),
    "polygraphy_0.49.26_trt10.16.2.5_unknown-gpu_3_compare.log": _polygraphy_check(
        {"onnxrt": 1.599, "trt": 3.724}, "10.16.2.5", pass_rate=100.0, build_s=13.793),
}


# --------------------------------------------------------------------------------------
# Robustness beyond the fixtures
# --------------------------------------------------------------------------------------


def test_non_bracket_wrapper_prefix() -> None:
    text = fixture_text("trtexec_10.4.0_rtx3060laptop_excerpt_summary.log")
    wrapped = "\n".join(f"2024-11-01 10:33:09,123 INFO bench - {line}" for line in text.splitlines())
    assert parse_trtexec_log(wrapped) == parse_trtexec_log(text)


def test_leading_space_and_bytes_input() -> None:
    text = fixture_text("trtexec_8.4_teslam40_excerpt_scinotation.log")
    indented = "\n".join(" " + line for line in text.splitlines())
    assert parse_trtexec_log(indented.encode()) == parse_trtexec_log(text)


def test_scientific_notation_everywhere() -> None:
    log = (
        "[01/01/2024-00:00:00] [I] === Performance summary ===\n"
        "[01/01/2024-00:00:00] [I] Throughput: 1.5e+05 qps\n"
        "[01/01/2024-00:00:00] [I] GPU Compute Time: min = 9.76562e-04 ms, max = 2E-3 ms, "
        "mean = 1.25e-3 ms, median = 1.2e-03 ms, percentile(99.9%) = 1.9e-3 ms\n"
    )
    s = parse_trtexec_log(log)
    assert s.throughput_qps == pytest.approx(1.5e5)
    assert s.gpu_compute == trt_profiles.TimingStats(9.76562e-4, 2e-3, 1.25e-3, 1.2e-3, ((99.9, 1.9e-3),))
    assert s.median_ms == pytest.approx(1.2e-3)


def test_dump_profile_8x_layout_name_first() -> None:
    # trtexec 8.0-8.6 print the layer name first, right-aligned (sampleReporting.cpp layout);
    # no fixture has one, so this table is written in that layout by hand.
    table = (
        "[I] === Profile (120 iterations ) ===\n"
        "[I]                  Layer   Time (ms)   Avg. Time (ms)   Median Time (ms)   Time %\n"
        "[I]         conv1 + relu1        1.20           0.0100             0.0098     60.0\n"
        "[I]  (Unnamed Layer* 3) [Shuffle]        0.80           0.0067             0.0066     40.0\n"
        "[I]                  Total        2.00           0.0167             0.0165    100.0\n"
    )
    parsed = parse_dump_profile_table(table)
    assert parsed.iterations == 120
    assert parsed.layers == (
        trt_profiles.LayerTiming("conv1 + relu1", 1.2, 0.01, 0.0098, 60.0),
        trt_profiles.LayerTiming("(Unnamed Layer* 3) [Shuffle]", 0.8, 0.0067, 0.0066, 40.0),
    )
    assert parsed.total is not None and parsed.total.time_ms_total == 2.0
    no_median = table.replace("   Median Time (ms)", "").replace("             0.0098", "")
    no_median = no_median.replace("             0.0066", "").replace("             0.0165", "")
    assert parse_dump_profile(no_median)[0] == trt_profiles.LayerTiming("conv1 + relu1", 1.2, 0.01, None, 60.0)


@pytest.mark.parametrize(
    "garbage",
    ["", "hello world\nnothing to see here\n", "[01/01/2024-00:00:00] [I] GPU Compute Time: the GPU latency"],
)
def test_garbage_log_raises(garbage: str) -> None:
    with pytest.raises(HalpError) as info:
        parse_trtexec_log(garbage)
    assert info.value.stage == "tensorrt"
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("tensorrt: ")


def test_failed_run_reports_first_error() -> None:
    log = (
        "&&&& RUNNING TensorRT.trtexec [TensorRT v100700] # trtexec --onnx=m.onnx\n"
        "[04/11/2025-15:15:48] [E] Error[4]: [network.cpp::validate::3162] invalid shape\n"
        "[04/11/2025-15:15:48] [E] Engine could not be created from network\n"
        "&&&& FAILED TensorRT.trtexec [TensorRT v100700] # trtexec --onnx=m.onnx\n"
    )
    with pytest.raises(HalpError, match=r"trtexec failed.*Error\[4\].*invalid shape"):
        parse_trtexec_log(log)


def test_other_parsers_reject_garbage() -> None:
    with pytest.raises(HalpError, match="no polygraphy inference timing"):
        parse_polygraphy_log("[I] RUNNING | Command: polygraphy run x.onnx\n[I] PASSED | Command: ...\n")
    with pytest.raises(HalpError, match="not valid JSON"):
        parse_export_profile("[ { \"count\" : 3 }, ")
    with pytest.raises(HalpError, match="no per-layer timing"):
        parse_export_profile('[ { "count" : 3 } ]')
    with pytest.raises(HalpError, match="no numeric 'timeMs'"):
        parse_export_profile('[ { "count" : 3 }, { "name" : "a", "averageMs" : 1 } ]')
    with pytest.raises(HalpError, match="no '=== Profile"):
        parse_dump_profile("[I] nothing\n")
    with pytest.raises(HalpError, match="no TensorRT layer information"):
        parse_layer_info("just text")
    with pytest.raises(HalpError, match="no 'Layers' list"):
        parse_layer_info('{"Bindings": []}')


def test_json_parsers_accept_paths_and_objects() -> None:
    path = fixture_path("trtexec_8.4.1_gtx1070_exportLayerInfo_noDetail.json")
    from_path = parse_layer_info(path)
    assert from_path == parse_layer_info(json.loads(path.read_text()))
    assert from_path == parse_layer_info(path.read_bytes())


# --------------------------------------------------------------------------------------
# Measurement path without TensorRT
# --------------------------------------------------------------------------------------

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_no_trt = pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")


@needs_no_trt
def test_available_reports_missing_tensorrt() -> None:
    ok, reason = TrtBackend().available()
    assert ok is False
    assert "TensorRT is not installed" in reason and "pip install halp-onnx[trt]" in reason


@needs_no_trt
def test_time_onnx_raises_readable_error(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really onnx")
    backend = TrtBackend()
    with pytest.raises(HalpError) as info:
        backend.time_onnx(model, precision="fp16", batch=1, warmup=2, iters=5)
    message = str(info.value)
    assert info.value.stage == "tensorrt"
    assert "\n" not in message
    assert "TensorRT is not installed" in message
    assert "use an analytic target estimate instead" in message
    with pytest.raises(HalpError, match="TensorRT is not installed"):
        backend.build_engine(model, tmp_path / "m.plan", "fp16")
    assert not (tmp_path / "m.plan").exists()


def test_bad_precision_is_rejected_first(tmp_path: Path) -> None:
    with pytest.raises(HalpError, match="precision must be one of fp32, fp16, int8"):
        TrtBackend().time_onnx(tmp_path / "m.onnx", precision="fp64")  # type: ignore[arg-type]


def test_time_with_trtexec_without_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.path.exists("/usr/src/tensorrt/bin/trtexec"):
        pytest.skip("a system trtexec exists here")
    monkeypatch.delenv("TRTEXEC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HalpError, match=r"trtexec was not found.*analytic target estimate"):
        TrtBackend().time_with_trtexec(tmp_path / "m.onnx")


FAKE_TRTEXEC = """#!{python}
import json, shutil, sys
from pathlib import Path
args = sys.argv[1:]
Path({argv_file!r}).write_text(json.dumps(args))
for arg in args:
    if arg.startswith("--exportProfile="):
        shutil.copyfile({profile!r}, arg.split("=", 1)[1])
sys.stdout.write(Path({log!r}).read_text())
sys.stderr.write({stderr!r})
sys.exit({code})
"""


def _fake_trtexec(tmp_path: Path, log: Path, profile: Path, *, code: int = 0, stderr: str = "") -> Path:
    script = tmp_path / "trtexec"
    script.write_text(FAKE_TRTEXEC.format(python=sys.executable, argv_file=str(tmp_path / "argv.json"),
                                          profile=str(profile), log=str(log), stderr=stderr, code=code))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _tiny_onnx(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))


def test_time_with_trtexec_runs_and_parses(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("needs a POSIX shell to run the stand-in trtexec")
    log = fixture_path("trtexec_10.16.1_h100pcie_1.log")
    profile = fixture_path("trtexec_10.4.0_rtx3060laptop_exportProfile_resnet18.json")
    fake = _fake_trtexec(tmp_path, log, profile)
    model = tmp_path / "m.onnx"
    _tiny_onnx(model)

    result = TrtBackend(trtexec=fake).time_with_trtexec(model, "fp16", batch=4, iterations=50)
    assert result.median_ms == pytest.approx(0.0361328)
    assert result.summary.gpu_name == "NVIDIA H100 PCIe"
    assert len(result.layers) == 26 and result.layers[-1].name == "__myl_MulSumAdd_myl24_1"
    args = json.loads((tmp_path / "argv.json").read_text())
    assert args[0] == f"--onnx={model}"
    assert "--fp16" in args and "--int8" not in args
    assert "--shapes=x:4x3x8x8" in args
    assert "--iterations=50" in args and "--separateProfileRun" in args
    assert any(a.startswith("--exportProfile=") for a in args)
    assert result.command[0] == str(fake)


def test_time_with_trtexec_failure_is_one_line(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("needs a POSIX shell to run the stand-in trtexec")
    bad_log = tmp_path / "bad.log"
    bad_log.write_text("&&&& RUNNING TensorRT.trtexec [TensorRT v101601] [b11] # trtexec\n"
                       "[07/07/2026-02:11:30] [E] [TRT] ModelImporter.cpp:949: While parsing node 3: bad\n"
                       "&&&& FAILED TensorRT.trtexec [TensorRT v101601] [b11] # trtexec\n")
    fake = _fake_trtexec(tmp_path, bad_log, bad_log, code=1)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(HalpError) as info:
        TrtBackend(trtexec=fake).time_with_trtexec(model, "int8", profile_layers=False)
    assert "\n" not in str(info.value)
    assert "exited with status 1" in str(info.value) and "While parsing node 3" in str(info.value)
    args = json.loads((tmp_path / "argv.json").read_text())
    assert "--int8" in args and "--fp16" in args


def test_static_batch_mismatch_is_explained(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = tmp_path / "static.onnx"
    onnx.save(helper.make_model(graph), str(model))
    fake = _fake_trtexec(tmp_path, fixture_path("trtexec_10.16.1_h100pcie_1.log"),
                         fixture_path("trtexec_10.4.0_rtx3060laptop_exportProfile_resnet18.json"))
    backend = TrtBackend(trtexec=fake)
    with pytest.raises(HalpError, match="static batch of 2, not 8"):
        backend.time_with_trtexec(model, batch=8)
    with pytest.raises(HalpError, match=r"static with shape \(2, 3\)"):
        backend.time_with_trtexec(model, input_shapes={"x": (4, 3)})
    # A static model gets no --shapes (trtexec rejects them) even when batch matches.
    backend.time_with_trtexec(model, "fp32", batch=2, profile_layers=False)
    args = json.loads((tmp_path / "argv.json").read_text())
    assert not any(a.startswith("--shapes") for a in args)
    assert "--fp16" not in args and not any(a.startswith("--exportProfile") for a in args)
