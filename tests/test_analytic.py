"""Analytic GPU latency model, block signatures and the target registry (fast, no GPU)."""
from __future__ import annotations

import json
import sys
import types

import pytest

from halp_onnx.errors import HalpError
from halp_onnx.profiles import targets as targets_mod
from halp_onnx.profiles.analytic import GPU_SPECS, LABEL, estimate, estimate_ms, step_size
from halp_onnx.profiles.signature import BlockSignature
from halp_onnx.profiles.targets import device_fingerprint, get_target, known_targets, target_status


def conv(k=3, s=1, hw=14, batch=1, dtype="fp16", groups="dense", epilogue=("Relu",)) -> BlockSignature:
    p = k // 2
    return BlockSignature("Conv", (k, k), (s, s), (p, p, p, p), (1, 1), groups, (hw, hw), batch, dtype, epilogue)


LAYER3 = conv()  # ResNet-50 layer3 3x3, 256 -> 256 at 14x14, batch 1, fp16


# ------------------------------------------------------------------ signature


def test_resnet50_stem_flops():
    stem = BlockSignature("Conv", (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), "dense", (224, 224), 1, "fp32")
    assert stem.out_hw() == (112, 112)
    assert stem.macs(3, 64) == 118_013_952  # 118.0 MMACs
    assert stem.flops(3, 64) == 2 * 118_013_952
    assert LAYER3.flops(256, 256) == 2 * 14 * 14 * 256 * 256 * 9


def test_grouped_depthwise_gemm_flops_and_bytes():
    g = conv(groups="grouped:4", epilogue=())
    assert g.flops(64, 64) == 2 * 14 * 14 * 64 * 4 * 9
    dw = conv(groups="depthwise", epilogue=())
    assert dw.flops(32, 32) == 2 * 14 * 14 * 32 * 9
    fc = BlockSignature("Gemm", (), (), (), (), "dense", (1,), 1, "fp32")
    assert fc.out_hw() == (1,) and fc.flops(2048, 1000) == 2 * 2048 * 1000
    assert fc.bytes_moved(2048, 1000, 4) == 4 * (2048 + 2048 * 1000 + 1000)
    n = 14 * 14 * 256
    plain = conv(epilogue=("Relu",)).bytes_moved(256, 256, 2)
    assert plain == 2 * (n + 256 * 256 * 9 + n)
    assert conv(epilogue=("Add", "Relu")).bytes_moved(256, 256, 2) == plain + 2 * n
    down = conv(k=1, s=2, hw=56, epilogue=())
    assert BlockSignature("Conv", (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), "dense", (56, 56), 1, "fp16").out_hw() == (28, 28)
    assert down.out_hw() == (28, 28)
    up = BlockSignature("ConvTranspose", (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), "dense", (7, 7), 1, "fp16")
    assert up.out_hw() == (14, 14) and up.flops(8, 4) == 2 * 49 * 8 * 4 * 4
    gp = BlockSignature("Pool", (), (), (), (), "dense", (7, 7), 1, "fp16")
    assert gp.out_hw() == (1, 1)


def test_signature_json_round_trip_and_key_stability():
    sigs = [
        LAYER3,
        conv(groups="grouped:8", epilogue=("Add", "Relu")),
        BlockSignature("MatMul", (), (), (), (), "dense", (128,), 4, "int8"),
        BlockSignature("Elementwise", (), (), (), (), "dense", (3136,), 1, "fp16"),
    ]
    for sig in sigs:
        data = json.loads(json.dumps(sig.to_dict()))
        back = BlockSignature.from_dict(data)
        assert back == sig and hash(back) == hash(sig)
        assert back.key() == sig.key() and BlockSignature.from_key(sig.key()) == sig
    # lists and symmetric pads normalise to the same signature and key
    same = BlockSignature("Conv", [3, 3], [1, 1], [1, 1], [1, 1], "dense", [14, 14], 1, "fp16", ["Relu"])
    assert same == LAYER3 and same.key() == LAYER3.key()
    assert LAYER3.key() == "Conv;k=3x3;s=1x1;p=1x1x1x1;d=1x1;g=dense;in=14x14;b=1;t=fp16;e=Relu"
    profile = {LAYER3.key(): 1.0}
    assert json.loads(json.dumps(profile)) == profile
    with pytest.raises(HalpError):
        BlockSignature("Conv", (3, 3), (1, 1), (1, 1), (1, 1), "sparse", (14, 14), 1, "fp16")
    with pytest.raises(HalpError):
        BlockSignature("Conv", (3, 3), (1, 1), (1, 1), (1, 1), "dense", (14, 14), 1, "bf16")


# ------------------------------------------------------------------ analytic model


def test_staircase_flat_within_step_and_jumps_at_multiple():
    for gpu in ("a100", "t4"):
        step = step_size(LAYER3, GPU_SPECS[gpu])
        assert step == 8
        ts = [estimate_ms(LAYER3, 256, c, gpu) for c in range(1, 257)]
        for c in range(2, 257):
            if (c - 1) % step:  # c and c-1 in the same step
                assert ts[c - 1] == ts[c - 2], (gpu, c)
        assert ts[-1] > ts[0]
    # memory-bound 1x1 conv (batch 8 at 56x56): every multiple of 8 is a step up
    sig = conv(k=1, hw=56, batch=8, epilogue=())
    assert estimate(sig, 64, 64, "a100").bound == "memory"
    for c in (8, 16, 64, 128):
        lo, hi = estimate_ms(sig, 64, c, "a100"), estimate_ms(sig, 64, c + 1, "a100")
        assert hi > lo and estimate_ms(sig, 64, c + 1, "a100") == estimate_ms(sig, 64, c + 8, "a100")
    assert step_size(conv(dtype="int8"), "a100") == 16 and step_size(conv(dtype="fp32"), "a100") == 4


def test_monotone_over_grid():
    sigs = [LAYER3, conv(k=1, hw=56, batch=8), conv(dtype="int8", hw=28),
            BlockSignature("Gemm", (), (), (), (), "dense", (1,), 1, "fp16"),
            BlockSignature("ConvTranspose", (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), "dense", (7, 7), 1, "fp16")]
    grid = list(range(1, 200, 7)) + [256, 511, 512]
    for gpu in GPU_SPECS:
        for sig in sigs:
            rows = [[estimate_ms(sig, ci, co, gpu) for co in grid] for ci in grid]
            for i, row in enumerate(rows):
                assert all(a <= b for a, b in zip(row, row[1:])), (gpu, sig.key(), grid[i])
            for j in range(len(grid)):
                col = [r[j] for r in rows]
                assert all(a <= b for a, b in zip(col, col[1:])), (gpu, sig.key(), grid[j])


def test_depthwise_is_memory_bound():
    dw = conv(groups="depthwise", hw=56, epilogue=())
    for gpu, spec in GPU_SPECS.items():
        e = estimate(dw, 128, 128, spec)
        assert e.bound == "memory" and e.tile is None and e.label == LABEL
        expected = dw.bytes_moved(128, 128, 2) / (spec.mem_bw_gbs * 1e9 * 0.8) * 1e3 + spec.launch_overhead_us * 1e-3
        assert e.ms == pytest.approx(expected)


def test_bigger_gpu_is_faster_on_a_big_conv():
    big = conv(hw=56, batch=32, epilogue=())
    t = {g: estimate_ms(big, 256, 256, g) for g in GPU_SPECS}
    assert t["h100"] < t["a100"] < t["v100"] < t["t4"]
    e = estimate(big, 256, 256, "a100")
    assert e.bound == "compute" and e.waves > 1
    # sanity: the estimate never beats the datasheet roofline
    for g, spec in GPU_SPECS.items():
        ideal = max(big.flops(256, 256) / (spec.peak_tflops("fp16") * 1e12),
                    big.bytes_moved(256, 256, 2) / (spec.mem_bw_gbs * 1e9)) * 1e3
        assert t[g] > ideal


# ------------------------------------------------------------------ targets


def test_registry_and_errors():
    names = known_targets()
    for n in ("ort-cpu", "ort-cuda", "torch-cuda", "torch-cuda-fp16",
              "trt-v100", "trt-a100", "trt-t4", "trt-orin", "trt-h100"):
        assert n in names
    t = get_target("trt-a100")
    assert (t.backend, t.precision, t.batch, t.gpu) == ("tensorrt", "fp16", 1, "a100")
    assert get_target("TRT-A100-fp16") is t and get_target("trt-t4-int8").precision == "int8"
    assert get_target("torch-cuda-fp16").precision == "fp16" and get_target("ort-cpu").gpu is None
    with pytest.raises(HalpError) as err:
        get_target("trt-p100")
    assert err.value.stage == "targets"
    assert str(err.value).startswith("targets: --target 'trt-p100': unknown target; known: ")
    assert "trt-a100" in str(err.value)


def test_statuses_here(monkeypatch):
    ok, reason = target_status("ort-cpu")
    assert ok and "onnxruntime" in reason
    for name in ("trt-v100", "trt-a100", "trt-t4", "trt-orin", "trt-h100"):
        ok, reason = target_status(name)
        assert not ok and reason and "estimated" in reason
    ok, reason = target_status("ort-cuda")
    assert isinstance(ok, bool) and reason
    # torch-cuda without importing the real torch: a stand-in that sees no GPU
    fake = types.ModuleType("torch")
    fake.__version__ = "0.0-fake"
    fake.cuda = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert target_status("torch-cuda") == (False, "torch 0.0-fake sees no CUDA device")


def test_fingerprint(monkeypatch):
    monkeypatch.setattr(targets_mod, "_nvidia_smi", lambda: None)
    fp = device_fingerprint("trt-a100")
    assert fp["target"] == "trt-a100" and fp["precision"] == "fp16" and fp["batch"] == 1
    assert fp["estimated"] is True and fp["gpu_spec"]["sm_count"] == 108
    assert fp["cpu"] and fp["versions"]["onnxruntime"]
    json.dumps(fp)
    cpu = device_fingerprint("ort-cpu")
    assert cpu["available_here"] and cpu["gpu"] is None and "gpu_spec" not in cpu
