"""The trtexec path end to end, without a GPU: a fake ``trtexec`` (tests/fakes/trtexec) replays real
trtexec output from ``<repo>/../shared/fixtures/tensorrt`` and the real driver, backend and CLI
run against it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from halp_onnx.cli import main
from halp_onnx.errors import HalpError
from halp_onnx.examples import example
from halp_onnx.passes.rewrite import save_model
from halp_onnx.profiles import targets as targets_mod
from halp_onnx.profiles.backends import TrtexecBackend, build_engine, get_backend, layer_report
from halp_onnx.profiles.block_model import block_model
from halp_onnx.profiles.signature import BlockSignature
from halp_onnx.profiles.targets import get_target, target_status
from halp_onnx.profiles.trt import parse_engine_info, parse_export_profile, parse_trtexec_log
from halp_onnx.profiles.trt.options import reset_settings, trt_settings
from halp_onnx.profiles.trt.records import LayerTiming
from halp_onnx.profiles.trt.trtexec_driver import clear_probe_cache, map_layers, profile_with_trtexec

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "tensorrt"
FAKE = REPO / "tests" / "fakes" / "trtexec"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"shared TensorRT fixtures not found at {FIXTURES}")

CONV = BlockSignature(op="Conv", kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups="dense",
                      in_hw=(16, 16), batch=1, dtype="fp16", epilogue=("Relu",))


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The fake's environment: the fixtures, and this interpreter first on PATH for ``env python3``."""
    env = {"HALP_FAKE_TRTEXEC_FIXTURES": str(FIXTURES),
           "PATH": os.pathsep.join([str(FAKE.parent), str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def fake() -> str:
    if os.name != "posix":
        pytest.skip("the fake trtexec is a POSIX script")
    if os.access(FAKE, os.X_OK):
        return str(FAKE)
    pytest.skip(f"{FAKE} is not executable (chmod +x it)")


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    for key in ("HALP_FAKE_TRTEXEC_DEVICE", "HALP_FAKE_TRTEXEC_NAMES", "HALP_FAKE_TRTEXEC_EXIT",
                "HALP_FAKE_TRTEXEC_SLEEP_S", "TRTEXEC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(targets_mod, "_nvidia_smi", lambda: None)
    monkeypatch.setattr("halp_onnx.profiles.trt.api_driver.TrtBackend.available",
                        lambda self: (False, "the TensorRT Python API is off in these tests"))
    reset_settings()
    clear_probe_cache()
    yield
    reset_settings()
    clear_probe_cache()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "example.onnx"
    save_model(example("resnet"), path)
    return str(path)


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One profile folder for the CLI tests: the first profiles, the others reuse its tables."""
    path = tmp_path_factory.mktemp("profiles")
    old = os.environ.get("HALP_ONNX_PROFILE_DIR")
    os.environ["HALP_ONNX_PROFILE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HALP_ONNX_PROFILE_DIR", None)
    else:
        os.environ["HALP_ONNX_PROFILE_DIR"] = old


def run_fake(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FAKE), *args], capture_output=True, text=True, env={**os.environ, **_env(env)},
                          timeout=120, check=False)


def tiny_conv(path: Path, c_out: int = 16) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [c_out, 8, 3, 3], [0.0] * (c_out * 8 * 9))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w])), str(path))
    return path


# ---------------------------------------------------------------------------------------- the fake itself
def test_fake_prints_the_real_log_and_rejects_unknown_flags(fake: str, tmp_path: Path) -> None:
    model = tiny_conv(tmp_path / "m.onnx")
    ok = run_fake(f"--onnx={model}", "--iterations=10")
    assert ok.returncode == 0
    assert ok.stdout == (FIXTURES / "trtexec_10.16.1_h100pcie_1.log").read_text()  # byte for byte
    assert run_fake(f"--onnx={model}", "--fp16", env={"HALP_FAKE_TRTEXEC_DEVICE": "gtx1070"}).stdout == (
        FIXTURES / "trtexec_8.2.3_gtx1070_1.log").read_text()
    bad = run_fake(f"--onnx={model}", "--notAFlag")
    assert bad.returncode == 1 and "[E] Unknown option: --notAFlag" in bad.stdout
    times = run_fake(f"--onnx={model}", "--exportTimes=t.json")
    assert times.returncode == 1 and "cannot replay" in times.stdout
    failing = run_fake(f"--onnx={model}", env={"HALP_FAKE_TRTEXEC_EXIT": "4"})
    assert failing.returncode == 4 and "&&&& FAILED TensorRT.trtexec [TensorRT v101601] [b11]" in failing.stdout


def test_fake_exports_are_real_json_renamed_and_widths_matter(fake: str, tmp_path: Path) -> None:
    times = []
    for c_out in (16, 17, 24, 64):
        model = tiny_conv(tmp_path / f"m{c_out}.onnx", c_out)
        prof, info = tmp_path / f"p{c_out}.json", tmp_path / f"l{c_out}.json"
        res = run_fake(f"--onnx={model}", "--fp16", f"--exportProfile={prof}", f"--exportLayerInfo={info}",
                       "--profilingVerbosity=detailed", "--separateProfileRun", "--iterations=40",
                       env={"HALP_FAKE_TRTEXEC_NAMES": "plus"})
        assert res.returncode == 0, res.stdout
        layers = parse_export_profile(prof)
        engine = parse_engine_info(info)
        assert [t.name for t in layers] == [layer.name for layer in engine.layers]
        conv = next(t for t in layers if t.name == "conv + relu")
        conv_info = next(layer for layer in engine.layers if layer.name == "conv + relu")
        assert conv_info.layer_type == "CaskConvolution" and conv_info.onnx_layers == ("conv", "relu")
        assert conv_info.tactic_name and conv_info.tactic_name.startswith("sm80_xmma_fprop")  # from the real entry
        assert layers[0].name.startswith("Reformatting CopyNode for Input Tensor 0 to conv + relu")
        times.append(conv.avg_ms)
    assert times[0] < times[1] == times[2] < times[3]  # 17 and 24 channels pad to the same fp16 multiple of 8
    again = tmp_path / "again.json"
    run_fake(f"--onnx={tmp_path / 'm64.onnx'}", "--fp16", f"--exportProfile={again}", "--iterations=40",
             env={"HALP_FAKE_TRTEXEC_NAMES": "plus"})
    assert parse_export_profile(again) == parse_export_profile(tmp_path / "p64.json")  # deterministic


# ---------------------------------------------------------------------------------------- the driver
def test_map_layers_on_real_fixture_json() -> None:
    """The real 10.4.0 alexnet profile and layer info: Myelin names map through ``Metadata``."""
    engine = parse_engine_info(FIXTURES / "trtexec_10.4.0_rtx3060laptop_exportLayerInfo_alexnet.json")
    timings = parse_export_profile(FIXTURES / "trtexec_10.4.0_rtx3060laptop_exportProfile_alexnet.json")
    names = list(dict.fromkeys(n for layer in engine.layers for n in layer.onnx_layers))
    op = {"Conv": "Conv", "Relu": "Relu", "MaxPool": "MaxPool", "Flatten": "Flatten", "Gemm": "Gemm"}
    nodes = [helper.make_node(op[n.rsplit("/", 1)[-1]], [f"t{i}"], [f"t{i + 1}"], name=n) for i, n in enumerate(names)]
    model = helper.make_model(helper.make_graph(nodes, "alexnet", [], []))
    lm = map_layers(timings, engine, model)
    assert lm.fused["/features/features.0/Conv"] == ("/features/features.0/Conv", "/features/features.1/Relu")
    gemm = "/classifier/classifier.1/Gemm"
    assert lm.fused[gemm] == (gemm, "/classifier/classifier.2/Relu")
    assert list(lm.reformat_ms) == [timings[0].name]
    assert list(lm.unmatched_ms) == ["dummy_shape_call__mye622_0_myl9_0"]
    by_name = {t.name: t.avg_ms for t in timings}
    assert lm.node_ms["/classifier/classifier.1/Gemm"] == by_name["/classifier/classifier_1/Gemm_myl9_2"]
    assert lm.total_ms == pytest.approx(sum(by_name.values()))
    # names only (8.6.0, no --profilingVerbosity=detailed): "a + b" and reformats
    plain = parse_engine_info(FIXTURES / "trtexec_8.6.0_rtx3090_exportLayerInfo_noDetail.json")
    ops = {"Conv-1": "Conv", "ReLU-2": "Relu", "MaxPool-3": "MaxPool", "MatMul-9": "MatMul", "ReLU-11": "Relu"}
    model = helper.make_model(helper.make_graph(
        [helper.make_node(o, [f"a{i}"], [f"a{i + 1}"], name=n) for i, (n, o) in enumerate(ops.items())], "g", [], []))
    lm = map_layers([LayerTiming(layer.name, 1.0, 0.5) for layer in plain.layers], plain, model)
    assert lm.fused == {"Conv-1": ("Conv-1", "ReLU-2"), "MaxPool-3": ("MaxPool-3",),
                        "MatMul-9": ("MatMul-9", "ReLU-11")}
    assert len(lm.reformat_ms) == 5 and lm.node_ms["Conv-1"] == 0.5


@pytest.mark.parametrize("names", ["myelin", "plus"])
def test_driver_profiles_the_whole_model_per_node(fake: str, model_file: str, names: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALP_FAKE_TRTEXEC_NAMES", names)
    run = profile_with_trtexec(onnx.load(model_file), "fp16", binary=fake)
    assert run.summary.trt_version == "10.16.1" and run.summary.gpu_name == "NVIDIA H100 PCIe"
    cmd = run.result.command
    assert cmd[0] == fake and "--fp16" in cmd and "--separateProfileRun" in cmd
    assert any(a.startswith("--exportProfile=") for a in cmd) and any(a.startswith("--exportLayerInfo=") for a in cmd)
    lm = run.layer_map
    assert lm is not None
    assert lm.fused["conv_35"] == ("conv_35", "batchnormalization_40", "add_48", "relu_49")
    assert set(lm.node_ms) >= {"conv_2", "slice_45", "pad_47", "globalaveragepool_74", "classifier"}
    assert all(n.startswith("Reformatting CopyNode") for n in lm.reformat_ms) and len(lm.reformat_ms) == 2
    assert lm.total_ms == pytest.approx(sum(t.avg_ms for t in run.layers))
    assert run.summary.profile is not None  # --dumpProfile: the table agrees with the JSON
    assert [t.name for t in run.summary.profile.layers] == [t.name for t in run.layers]


def test_backend_times_blocks_with_the_fake(fake: str, tmp_path: Path) -> None:
    with trt_settings(trtexec=fake):
        backend = get_backend("trt-h100")
        assert isinstance(backend, TrtexecBackend) and backend.block_time == "kernel"
        ms = {c: backend.measure(CONV, 32, c) for c in (8, 9, 16, 64)}
        assert ms[8] < ms[9] == ms[16] < ms[64]
        assert backend.run_overhead_ms() >= 0 and backend.node_overhead_ms() == 0
        model = block_model(CONV, 32, 64)
        assert backend.profile_model(model).layer_map.kernel_ms == pytest.approx(ms[64])  # type: ignore[union-attr]
        timing = backend.time_model(model)
        assert timing.median_ms == pytest.approx(0.0361328) and timing.p10_ms <= timing.median_ms <= timing.p90_ms


def test_engine_is_written_with_save_engine(fake: str, model_file: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("HALP_FAKE_TRTEXEC_CALLS", str(calls))
    with trt_settings(trtexec=fake):
        out = build_engine("trt-h100", onnx.load(model_file), tmp_path / "e" / "model.plan")
    assert out.read_bytes().startswith(b"halp-fake-trt-engine\n")
    argv = [json.loads(line) for line in calls.read_text().splitlines()][-1]
    assert any(a.startswith("--saveEngine=") for a in argv) and "--fp16" in argv
    assert not list(out.parent.glob(".*partial"))
    with trt_settings(trtexec=fake), pytest.raises(HalpError, match="only for TensorRT targets"):
        build_engine("ort-cpu", onnx.load(model_file), tmp_path / "x.plan")


def test_errors_are_one_line_and_name_the_executable(fake: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model = block_model(CONV, 8, 8)
    with pytest.raises(HalpError, match=r"--trtexec .*nope: no such executable"):
        trt_settings(trtexec=tmp_path / "nope")
    monkeypatch.setenv("HALP_FAKE_TRTEXEC_EXIT", "3")
    with pytest.raises(HalpError) as err:
        profile_with_trtexec(model, "fp16", binary=fake)
    assert f"trtexec {fake} exited with status 3: Engine could not be created" in str(err.value)
    monkeypatch.delenv("HALP_FAKE_TRTEXEC_EXIT")
    monkeypatch.setenv("HALP_FAKE_TRTEXEC_SLEEP_S", "5")
    with pytest.raises(HalpError) as err:
        profile_with_trtexec(model, "fp16", binary=fake, timeout_s=0.5)
    assert f"trtexec {fake} did not finish within 0.5 s" in str(err.value)
    for e in (err.value,):
        assert "\n" not in str(e) and e.stage == "tensorrt"
    monkeypatch.delenv("HALP_FAKE_TRTEXEC_SLEEP_S")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HalpError, match="trtexec was not found"):
        profile_with_trtexec(model, "fp16")


def test_wrong_gpu_and_unknown_version_are_refused(fake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with trt_settings(trtexec=fake):
        ok, reason = target_status("trt-v100")
        assert not ok and "NVIDIA H100 PCIe" in reason and "V100" in reason and "estimated" in reason
        with pytest.raises(HalpError, match="cannot measure here"):
            get_backend("trt-v100")
        monkeypatch.setenv("HALP_FAKE_TRTEXEC_DEVICE", "rtx3070laptop")  # TensorRT 7.2: no version printed
        clear_probe_cache()
        monkeypatch.setattr(targets_mod, "local_gpu", lambda: ({"name": "NVIDIA GeForce RTX 3070 Laptop GPU"}, "test"))
        ok, reason = target_status("trt-local")
        assert not ok and "TensorRT version is unknown" in reason


def test_fake_log_parses_as_what_the_profile_records(fake: str, model_file: str) -> None:
    log = run_fake(f"--onnx={model_file}", "--fp16").stdout
    s = parse_trtexec_log(log)
    with trt_settings(trtexec=fake):
        fp = targets_mod.device_fingerprint("trt-h100")
    assert fp["versions"]["tensorrt"] == s.trt_version and fp["gpu"]["name"] == s.gpu_name
    assert fp["gpu"]["compute_capability"] == s.compute_capability == "9.0" and fp["trt"]["kind"] == "trtexec"


# ---------------------------------------------------------------------------------------- the CLI
def test_trt_options_parse_and_activate(fake: str) -> None:
    import argparse

    from halp_onnx.profiles.trt.options import active_settings, add_trt_options

    parser = argparse.ArgumentParser()
    add_trt_options(parser)
    assert "--trtexec /usr/src/tensorrt/bin/trtexec" in " ".join(parser.format_help().split())
    args = parser.parse_args(["--trtexec", fake, "--trtexec-timeout", "5"])
    with trt_settings(args) as settings:
        assert active_settings() is settings and (settings.trtexec, settings.timeout_s) == (fake, 5.0)
    assert active_settings().trtexec is None
    with pytest.raises(HalpError, match="--trtexec-timeout 0: expected a positive"):
        trt_settings(parser.parse_args(["--trtexec-timeout", "0"]))
    assert trt_settings(argparse.Namespace()).trtexec is None  # commands without the options


def _cli_has_trtexec_option() -> bool:
    from halp_onnx.cli import _parser

    try:
        _parser().parse_args(["latency", "m.onnx", "--trtexec", "x"])
    except SystemExit:
        return False
    return True


def _latency(res: dict) -> dict:
    """The latency figures of ``latency --json`` (flat, or under the report schema's ``latency``)."""
    return res["latency"] if isinstance(res.get("latency"), dict) else res


needs_wiring = pytest.mark.xfail(not _cli_has_trtexec_option(), reason="CLI wiring pending", strict=False)


def test_cli_with_the_fake_on_path(fake: str, model_file: str, profile_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert shutil.which("trtexec") == fake
    assert main(["profile", model_file, "--target", "trt-h100", "--quiet"]) == 0
    out = capsys.readouterr().out
    # TensorRT's kernels (profiles.fusion): 12 signatures where onnxruntime's grouping of the same graph has 18
    assert "trt-h100: 12 block signatures" in out and " new measurements" in out
    saved = json.loads((profile_dir / "trt-h100.json").read_text())
    assert saved["fingerprint"]["tensorrt"] == "10.16.1" and saved["fingerprint"]["gpu_name"] == "NVIDIA H100 PCIe"
    assert saved["fingerprint"]["precision"] == "fp16" and "driver" in saved["fingerprint"]
    assert main(["latency", model_file, "--target", "trt-h100", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    lat = _latency(res)
    assert lat["label"] == "measured" and lat["measured_ms"] == pytest.approx(0.0361, abs=1e-4)
    blocks = res.get("blocks") or res.get("details", {}).get("blocks", [])
    assert lat["predicted_ms"] > 0 and {b["node"] for b in blocks} >= {"conv_2", "classifier"}
    out_onnx = tmp_path / "out.onnx"
    assert main(["compile", model_file, "--target", "trt-h100", "--latency", "0.9", "-o", str(out_onnx),
                 "--quiet"]) == 0
    assert out_onnx.is_file() and "measured latency" in capsys.readouterr().out


@needs_wiring
def test_cli_profile_with_trtexec_option(fake: str, model_file: str, profile_dir: Path,
                                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # only --trtexec can find the fake
    assert main(["profile", model_file, "--target", "trt-h100", "--trtexec", fake, "--quiet"]) == 0
    assert "block signatures" in capsys.readouterr().out


@needs_wiring
def test_cli_latency_json_with_trtexec_option(fake: str, model_file: str, profile_dir: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert main(["latency", model_file, "--target", "trt-h100", "--trtexec", fake, "--json"]) == 0
    lat = _latency(json.loads(capsys.readouterr().out))
    assert lat["label"] == "measured" and lat["measured_ms"] == pytest.approx(0.0361, abs=1e-4)


@needs_wiring
def test_cli_compile_with_trtexec_option_writes_the_engine(fake: str, model_file: str, profile_dir: Path,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    out, plan = tmp_path / "out.onnx", tmp_path / "out.plan"
    assert main(["compile", model_file, "--target", "trt-h100", "--latency", "0.9", "--trtexec", fake,
                 "--engine", str(plan), "-o", str(out), "--quiet"]) == 0
    assert out.is_file() and plan.read_bytes().startswith(b"halp-fake-trt-engine\n")
    assert str(plan) in capsys.readouterr().out


@needs_wiring
def test_cli_bad_trtexec_is_one_line(model_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["latency", model_file, "--target", "trt-h100", "--trtexec", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--trtexec" in err and "missing" in err


def test_layer_report_lines(fake: str, model_file: str) -> None:
    with trt_settings(trtexec=fake):
        lines = layer_report(get_target("trt-h100"), model_file, top=3)
    assert lines[0].startswith("whole model on TensorRT 10.16.1") and "reformats" in lines[1]
    assert len(lines) == 5 and "(+ batchnormalization" in "".join(lines[2:])
