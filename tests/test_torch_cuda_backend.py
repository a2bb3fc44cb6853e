"""The torch-cuda backend, exercised on the CPU (device="cpu"): block outputs match onnxruntime,
timings are sane, and the errors where CUDA or torch is missing are clear."""
from __future__ import annotations

import math
import sys

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from halp_onnx.errors import HalpError  # noqa: E402
from halp_onnx.examples import example  # noqa: E402
from halp_onnx.profiles.backends import Timing  # noqa: E402
from halp_onnx.profiles.block_model import block_feeds, block_model  # noqa: E402
from halp_onnx.profiles.signature import BlockSignature  # noqa: E402
from halp_onnx.profiles.torch_cuda import TorchCudaBackend  # noqa: E402

torch.set_num_threads(1)

SIGS = {
    "conv_add_relu": (BlockSignature("Conv", (3, 3), (1, 1), (1, 1), (1, 1), "dense", (14, 14), 1, "fp32",
                                     ("BatchNormalization", "Add", "Relu")), 16, 24),
    "depthwise": (BlockSignature("Conv", (3, 3), (2, 2), (1, 1), (1, 1), "depthwise", (15, 15), 1, "fp32",
                                 ("Clip",)), 16, 16),
    "gemm": (BlockSignature("Gemm", (), (), (), (), "dense", (1,), 2, "fp32", ("Relu",)), 64, 32),
    "maxpool": (BlockSignature("Pool", (3, 3), (2, 2), (1, 1), (1, 1), "dense", (14, 14), 1, "fp32",
                               ("MaxPool",)), 16, 16),
    "add": (BlockSignature("Elementwise", (), (), (), (), "dense", (196,), 1, "fp32", ("Add",)), 16, 16),
}


def _ort(model, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("name", list(SIGS))
def test_block_matches_onnxruntime_and_times(name, channels_last):
    sig, c_in, c_out = SIGS[name]
    be = TorchCudaBackend("fp32", device="cpu", channels_last=channels_last, budget_s=0.01, min_runs=3)
    model = block_model(sig, c_in, c_out)
    feeds = block_feeds(model)
    runner = be.runner(model, feeds)
    assert not runner.graphed
    x = runner.inputs["x"]
    if x.dim() == 4:
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert x.is_contiguous() != channels_last or x.shape[1] == 1
    with torch.inference_mode():
        y = runner.run()
    assert y.dtype == torch.float32 and y.device.type == "cpu"
    np.testing.assert_allclose(y.numpy(), _ort(model, feeds), rtol=1e-4, atol=1e-4)
    ms = be.measure(sig, c_in, c_out)
    assert math.isfinite(ms) and ms > 0


def test_fp16_on_cpu_runs_in_half_and_matches_loosely():
    # decision: fp16 works on the CPU (torch has half CPU kernels); the result matches fp32 ORT to fp16 accuracy
    be = TorchCudaBackend("fp16", device="cpu", budget_s=0.01, min_runs=3)
    for name in ("conv_add_relu", "depthwise", "gemm"):
        sig, c_in, c_out = SIGS[name]
        model = block_model(sig, c_in, c_out)
        feeds = block_feeds(model)
        runner = be.runner(model, feeds)
        assert all(p.dtype == torch.float16 for p in runner.module.parameters())
        with torch.inference_mode():
            y = runner.run()
        assert y.dtype == torch.float16
        ref = _ort(model, feeds)
        np.testing.assert_allclose(y.float().numpy(), ref, rtol=2e-2, atol=2e-2 * float(np.abs(ref).max()))
        ms = be.measure(sig, c_in, c_out)
        assert math.isfinite(ms) and ms > 0


def test_time_model_and_overhead():
    be = TorchCudaBackend(device="cpu", budget_s=0.01, min_runs=3)
    t = be.time_model(example("mobilenet"), budget_s=0.05)
    assert isinstance(t, Timing) and t.runs >= 3
    assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms and math.isfinite(t.p90_ms)
    oh = be.run_overhead_ms()
    assert 0 < oh < t.median_ms and be.run_overhead_ms() == oh  # cached


def test_bigger_conv_is_slower():
    sig = BlockSignature("Conv", (3, 3), (1, 1), (1, 1), (1, 1), "dense", (28, 28), 1, "fp32", ("Relu",))
    be = TorchCudaBackend(device="cpu", budget_s=0.03, min_runs=5)
    small = float(np.median([be.measure(sig, 32, 32) for _ in range(3)]))
    big = float(np.median([be.measure(sig, 32, 128) for _ in range(3)]))
    assert big > 1.3 * small, (small, big)  # ~2.8x on a 2-core CPU


def test_no_cuda_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HalpError) as err:
        TorchCudaBackend("fp16")
    msg = str(err.value)
    assert err.value.stage == "profiles" and "\n" not in msg
    assert msg.startswith("profiles: torch-cuda: no CUDA device here (torch ")
    assert "CUDA build: " in msg and torch.__version__.split(".")[0] in msg


def test_torch_missing_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" now raises ImportError
    with pytest.raises(HalpError, match="install the torch extra") as err:
        TorchCudaBackend(device="cpu")
    assert err.value.stage == "profiles"


def test_bad_options():
    with pytest.raises(HalpError, match="precision 'int8'"):
        TorchCudaBackend("int8", device="cpu")
    with pytest.raises(HalpError, match="not supported"):
        TorchCudaBackend(device="meta")
