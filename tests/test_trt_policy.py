"""The TensorRT version and device policy: which releases support which GPU (NVIDIA's support
matrix, halp_onnx/profiles/trt/policy.py), its one-line refusals, ``trt-local``, and profiles
never applied across TensorRT versions, GPUs, drivers or precisions."""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from halp_onnx.api import inspect
from halp_onnx.errors import HalpError
from halp_onnx.profiles import store
from halp_onnx.profiles import targets as targets_mod
from halp_onnx.profiles.analytic import GPU_SPECS
from halp_onnx.profiles.backends import build_engine, get_backend
from halp_onnx.profiles.latency import latency_model, profile_fingerprint
from halp_onnx.profiles.targets import get_target, known_targets, target_status
from halp_onnx.profiles.trt import parse_trtexec_log
from halp_onnx.profiles.trt.options import reset_settings, trt_settings
from halp_onnx.profiles.trt.policy import (ARCHITECTURES, GPU_COMPUTE_CAPABILITY, check_supported,
                                           check_target_device, is_supported, parse_compute_capability,
                                           parse_version)
from halp_onnx.profiles.trt.trtexec_driver import clear_probe_cache

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "tensorrt"
FAKE = REPO / "tests" / "fakes" / "trtexec"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"shared TensorRT fixtures not found at {FIXTURES}")


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("HALP_ONNX_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HALP_ONNX_TIMING_BUDGET_S", "0.003")
    monkeypatch.setenv("HALP_FAKE_TRTEXEC_FIXTURES", str(FIXTURES))
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    for key in ("HALP_FAKE_TRTEXEC_DEVICE", "HALP_FAKE_TRTEXEC_NAMES", "TRTEXEC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(targets_mod, "_nvidia_smi", lambda: None)
    monkeypatch.setattr("halp_onnx.profiles.trt.api_driver.TrtBackend.available",
                        lambda self: (False, "TensorRT is not installed (the Python API is off in these tests)"))
    reset_settings()
    clear_probe_cache()
    yield
    reset_settings()
    clear_probe_cache()


@pytest.fixture
def fake() -> str:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared TensorRT fixtures not found at {FIXTURES}")
    if os.name != "posix" or not os.access(FAKE, os.X_OK):
        pytest.skip(f"{FAKE} is not an executable POSIX script here")
    return str(FAKE)


def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    why = "nvidia-smi is not on PATH, torch sees no CUDA device"
    monkeypatch.setattr(targets_mod, "local_gpu", lambda: (None, why))


# ---------------------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("gpu, cc, yes, no", [
    ("v100", (7, 0), ["7.2.3", "8.6.1", "10.0.1", "10.4.0"], ["10.5.0", "10.16.1", "11.0.0"]),
    ("t4", (7, 5), ["7.0.0", "8.2.3", "10.16.1", "11.4.0"], ["6.0.1"]),
    ("a100", (8, 0), ["7.1.3", "8.6.1", "10.16.1"], ["7.0.0"]),
    ("orin", (8, 7), ["8.4.1", "8.6.2", "10.3.0"], ["8.2.1", "11.0.0"]),
    ("h100", (9, 0), ["8.5.1", "8.6.1", "10.16.1", "11.4.0"], ["8.4.3", "8.2.5"]),
])
def test_named_gpus_and_their_releases(gpu: str, cc: tuple[int, int], yes: list[str], no: list[str]) -> None:
    assert GPU_COMPUTE_CAPABILITY[gpu] == cc and gpu in GPU_SPECS
    assert get_target(f"trt-{gpu}").gpu == gpu
    for v in yes:
        assert is_supported(cc, v) is True, (gpu, v)
        check_supported(GPU_SPECS[gpu].name, cc, v)
    for v in no:
        assert is_supported(cc, v) is False, (gpu, v)
        with pytest.raises(HalpError) as err:
            check_supported(GPU_SPECS[gpu].name, cc, v, what="an engine")
        msg = str(err.value)
        assert "\n" not in msg and err.value.stage == "tensorrt"
        assert GPU_SPECS[gpu].name in msg and f"TensorRT {v}" in msg and "cannot make an engine" in msg


def test_versions_and_capabilities_parse() -> None:
    assert parse_version("10.16.1") == (10, 16, 1) and parse_version("8.6.1.6") == (8, 6, 1, 6)
    assert parse_version("8003") == (8, 0, 3) and parse_version(None) is None and parse_version("?") is None
    assert parse_compute_capability("9.0") == (9, 0) == parse_compute_capability("sm_90")
    assert parse_compute_capability((8, 7)) == (8, 7) and parse_compute_capability("nine") is None
    assert is_supported((10, 0), "10.16.1") is None  # a GPU the table does not list: no claim
    assert is_supported((9, 0), None) is None and is_supported((9, 0), "6.0") is False
    assert ARCHITECTURES[(7, 0)].last == (10, 4) and ARCHITECTURES[(9, 0)].first == (8, 5)


def test_unknown_version_and_wrong_device_are_refused() -> None:
    with pytest.raises(HalpError, match=r"TensorRT version is unknown"):
        check_supported("NVIDIA GeForce RTX 3070 Laptop GPU", "8.6", None)
    with pytest.raises(HalpError, match=r"trt-v100: TensorRT runs on NVIDIA H100 PCIe here, not an NVIDIA V100"):
        check_target_device("trt-v100", "v100", "NVIDIA H100 PCIe", "9.0", "10.16.1")
    with pytest.raises(HalpError, match=r"reports compute capability 8\.0, not 9\.0"):
        check_target_device("trt-h100", "h100", "NVIDIA H100 (odd)", "8.0", "10.16.1")
    with pytest.raises(HalpError, match=r"TensorRT 10\.5\.0 on Tesla V100-SXM2-16GB .*Volta \(sm_70\)"):
        check_target_device("trt-local", None, "Tesla V100-SXM2-16GB", "7.0", "10.5.0")
    check_target_device("trt-h100", "h100", "NVIDIA H100 PCIe", "9.0", "10.16.1")  # the fixture's pair


@needs_fixtures
def test_every_real_log_is_an_allowed_pair() -> None:
    """The fixtures are evidence: each (GPU, TensorRT) pair that printed both ran, so the policy allows it."""
    seen = 0
    for path in sorted(FIXTURES.glob("trtexec_*.log")):
        try:
            s = parse_trtexec_log(path.read_text(encoding="utf-8"))
        except HalpError:
            continue  # logs without timing (build only, explanations)
        if s.trt_version and s.compute_capability:
            assert is_supported(s.compute_capability, s.trt_version) is True, path.name
            check_supported(s.gpu_name or "?", s.compute_capability, s.trt_version)
            seen += 1
    assert seen >= 6


# ---------------------------------------------------------------------------------------- trt-local
def test_trt_local_is_registered_without_an_analytic_fallback() -> None:
    names = known_targets()
    assert {"trt-local", "trt-local-fp32", "trt-local-int8"} <= set(names)
    t = get_target("trt-local-fp16")
    assert (t.name, t.backend, t.precision, t.gpu, t.estimable) == ("trt-local", "tensorrt", "fp16", None, False)


def test_trt_local_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_gpu(monkeypatch)
    ok, reason = target_status("trt-local")
    assert not ok and "TensorRT is not installed" in reason
    if FIXTURES.is_dir() and os.access(FAKE, os.X_OK):
        with trt_settings(trtexec=FAKE):  # a trtexec is not enough: trt-local is the GPU present
            ok, reason = target_status("trt-local")
            assert not ok and "no NVIDIA GPU found here" in reason and "nvidia-smi" in reason
            with pytest.raises(HalpError, match="cannot measure here") as err:
                get_backend("trt-local")
            assert "\n" not in str(err.value)
            with pytest.raises(HalpError, match="no NVIDIA GPU found"):
                build_engine("trt-local", helper.make_model(helper.make_graph([], "g", [], [])), tmp_path / "x.plan")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 1, 1], [0.1] * 64)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    model = helper.make_model(helper.make_graph([node], "g", [x], [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, None)], [w]), opset_imports=[helper.make_opsetid("", 17)])
    loaded, analysis = inspect(model)
    with pytest.raises(HalpError, match="trt-local: cannot measure here"):
        latency_model(loaded, analysis, "trt-local")  # no analytic model to fall back on


def test_trt_local_uses_the_gpu_present(fake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets_mod, "local_gpu",
                        lambda: ({"name": "NVIDIA H100 PCIe", "compute_capability": "9.0", "driver": "580.65"},
                                 "nvidia-smi"))
    with trt_settings(trtexec=fake):
        ok, reason = target_status("trt-local")
        assert ok and "TensorRT 10.16.1" in reason and "NVIDIA H100 PCIe" in reason
        assert profile_fingerprint(get_target("trt-local"))["gpu_name"] == "NVIDIA H100 PCIe"


def test_local_gpu_reads_nvidia_smi_and_explains_its_absence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets_mod, "_nvidia_smi",
                        lambda: [{"name": "NVIDIA A100-SXM4-40GB", "driver": "550.54", "memory": "40960 MiB",
                                  "compute_capability": "8.0"}])
    gpu, source = targets_mod.local_gpu()
    assert gpu is not None and gpu["compute_capability"] == "8.0" and source == "nvidia-smi"
    monkeypatch.setattr(targets_mod, "_nvidia_smi", lambda: None)
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" fails as if not installed
    gpu, why = targets_mod.local_gpu()
    assert gpu is None and "nvidia-smi" in why


# ---------------------------------------------------------------------------------------- fingerprints
def _profile(fp: dict) -> store.Profile:
    return store.Profile(name="trt-h100", target="trt-h100", precision=fp["precision"], batch=1, threads=1,
                         estimated=False, fingerprint=dict(fp))


@pytest.mark.parametrize("key, other", [("tensorrt", "10.14.1"), ("gpu_name", "NVIDIA H100 80GB HBM3"),
                                        ("precision", "int8")])
def test_profiles_are_never_applied_across_versions_gpus_or_precisions(key: str, other: str, tmp_path: Path) -> None:
    fp = {"cpu": None, "machine": None, "gpu_name": "NVIDIA H100 PCIe", "onnxruntime": None, "tensorrt": "10.16.1",
          "torch": None, "threads": None, "precision": "fp16", "batch": 1, "driver": "580.65.06"}
    store.write_profile(_profile(fp), store.user_dir() / "trt-h100.json")
    assert store.find_profile("trt-h100", fp, shipped_dir=tmp_path)[0] is not None
    with pytest.warns(UserWarning, match=rf"another device or runtime \({key}: "):
        prof, _ = store.find_profile("trt-h100", {**fp, key: other}, shipped_dir=tmp_path)
    assert prof is None


def test_driver_changes_are_not_applied_silently(tmp_path: Path) -> None:
    fp = {"gpu_name": "NVIDIA H100 PCIe", "tensorrt": "10.16.1", "precision": "fp16", "batch": 1,
          "driver": "580.65.06"}
    assert profile_fingerprint(get_target("trt-h100")).keys() >= {"gpu_name", "tensorrt", "precision", "driver"}
    store.write_profile(_profile(fp), store.user_dir() / "trt-h100.json")
    if "driver" not in store.MATCH_KEYS:
        pytest.xfail("store.MATCH_KEYS does not list 'driver' yet (the lead adds it)")
    with pytest.warns(UserWarning, match="driver"):
        assert store.find_profile("trt-h100", {**fp, "driver": "590.1"}, shipped_dir=tmp_path)[0] is None


def test_a_profile_from_another_trtexec_is_remeasured(fake: str, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """End to end: measured through the fake on one device family, read back on another."""
    monkeypatch.setattr(targets_mod, "local_gpu", lambda: ({"name": "a GPU"}, "nvidia-smi"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 8, 8, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT16, [4, 8, 1, 1], [0.0] * 32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    model = helper.make_model(helper.make_graph([node], "g", [x], [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT16, None)], [w]), opset_imports=[helper.make_opsetid("", 17)])
    loaded, analysis = inspect(model)
    with trt_settings(trtexec=fake):
        first = latency_model(loaded, analysis, "trt-local", measure=True)
        assert first.new_points > 0 and first.model.profile is not None
        assert first.model.profile.fingerprint["tensorrt"] == "10.16.1"
        again = latency_model(loaded, analysis, "trt-local", measure=True)
        assert again.new_points == 0  # same trtexec, same GPU: reused
        monkeypatch.setenv("HALP_FAKE_TRTEXEC_DEVICE", "rtx6000ada")  # TensorRT 10.14.1 on an RTX 6000 Ada
        clear_probe_cache()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            other = latency_model(loaded, analysis, "trt-local", measure=True)
        assert other.new_points > 0 and other.model.profile is not None
        assert other.model.profile.fingerprint["tensorrt"] == "10.14.1"
        text = " ".join(str(w.message) for w in caught)
        assert "'10.16.1' there, '10.14.1' here" in text and "NVIDIA RTX 6000 Ada Generation" in text


def test_int8_engine_needs_calibration_or_qdq(tmp_path):
    """An int8 engine handed to the user is calibrated or comes from Q/DQ; never placeholder ranges."""
    import onnx

    from halp_onnx.errors import HalpError as _HalpError
    from halp_onnx.examples import example
    from halp_onnx.profiles.backends import check_int8_engine, has_qdq

    model = example("resnet")
    assert not has_qdq(model)
    with pytest.raises(_HalpError, match="int8 engine needs calibration data"):
        check_int8_engine("trt-h100-int8", model, has_calib=False)
    check_int8_engine("trt-h100-int8", model, has_calib=True)  # calibrated: accepted
    check_int8_engine("trt-h100", model, has_calib=False)  # fp16: no rule
    q = onnx.helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q")
    model.graph.node.insert(0, q)
    assert has_qdq(model)
    check_int8_engine("trt-h100-int8", model, has_calib=False)  # carries its own scales
