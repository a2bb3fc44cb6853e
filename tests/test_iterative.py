"""Iterative HALP: progressive pruning inside a training loop, and `compile --iterative`."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from halp_onnx.cli import main  # noqa: E402
from halp_onnx.errors import HalpError  # noqa: E402
from halp_onnx.examples import example  # noqa: E402
from halp_onnx.passes.rewrite import save_model  # noqa: E402
from halp_onnx.torch import OnnxModule  # noqa: E402
from halp_onnx.torch.halp import IterativePruner  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _train(module, pruner, steps, shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    kept_history = []
    for _ in range(steps):
        x = torch.randn(*shape, generator=gen)
        y = torch.randint(0, 10, (shape[0],), generator=gen)
        loss = torch.nn.functional.cross_entropy(module(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
        kept_history.append(pruner.kept.copy())
    return kept_history


def test_progressive_schedule_masks_never_return_and_final_model_verifies():
    model = example("resnet")
    module = OnnxModule(model)
    pruner = IterativePruner(module, model, target="trt-t4", latency=0.9, steps=4, interval=2, min_keep=0.0)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    kept = _train(module, pruner, 10, shape)
    assert pruner.finished and len(pruner.history) == 4
    targets = [h.target_ms for h in pruner.history]
    assert all(a > b for a, b in zip(targets, targets[1:]))
    ratios = np.array(targets[1:]) / np.array(targets[:-1])
    assert np.allclose(ratios, ratios[0])  # geometric
    assert targets[-1] == pytest.approx(pruner.budget_ms)
    for a, b in zip(kept, kept[1:]):
        assert not np.any(b & ~a)  # a pruned channel never comes back
    for h in pruner.history:
        assert h.predicted_ms <= h.target_ms * 1.0001
    res = pruner.finalize()
    assert res.verification.max_rel_error <= 1e-4
    assert res.predicted_ms <= res.budget_ms * 1.0001
    json.dumps(res.to_dict())


def test_step_without_backward_is_a_clear_error():
    model = example("resnet")
    pruner = IterativePruner(OnnxModule(model), model, target="trt-t4", latency=0.9, steps=2, interval=1)
    with pytest.raises(HalpError, match="gradient"):
        pruner.step()


def test_infeasible_budget():
    model = example("resnet")
    with pytest.raises(HalpError, match="below the smallest achievable"):
        IterativePruner(OnnxModule(model), model, target="trt-t4", latency=0.01)


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "data.npz"
    np.savez(p, images=rng.integers(0, 255, (48, 32, 32, 3), dtype=np.uint8), labels=rng.integers(0, 10, 48))
    return str(p)


def test_cli_compile_iterative(tmp_path, images, capsys):
    model = tmp_path / "m.onnx"
    save_model(_batched_resnet(), model)
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    code = main(["compile", str(model), "--target", "trt-t4", "--latency", "0.9", "--iterative", "--data", images,
                 "--epochs", "1", "--batch-size", "8", "--steps", "3", "--interval", "1", "--holdout", "0",
                 "-o", str(out), "--report", str(rep), "--quiet", "--lr", "0.001"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(rep.read_text())
    assert report["details"]["mode"] == "iterative" and len(report["details"]["history"]) == 3
    assert report["latency"]["predicted_ms"] <= report["budget"]["budget_ms"] * 1.0001
    assert out.exists() and "verified" in captured.out


def test_cli_compile_iterative_too_short(tmp_path, images, capsys):
    model = tmp_path / "m.onnx"
    save_model(_batched_resnet(), model)
    code = main(["compile", str(model), "--target", "trt-t4", "--latency", "0.9", "--iterative", "--data", images,
                 "--epochs", "1", "--batch-size", "8", "-o", str(tmp_path / "o.onnx")])
    assert code == 2
    assert "fewer than --steps 30 x --interval 40" in capsys.readouterr().err


def _batched_resnet():
    from halp_onnx.examples import cifar_resnet

    return cifar_resnet(1, batch="N")


def test_closed_loop_rescales_later_targets_and_resolves_a_missed_last_step(monkeypatch):
    """On a target that runs here the current widths are timed against dense every few steps; a model that
    measures slower than predicted gets its later targets lowered, and a last step that still misses the
    budget is solved again (the timing is faked: measured share = 1.1 x predicted until the last step, then
    1.4 x)."""
    import halp_onnx.profiles.timing as timing

    model = example("resnet")
    module = OnnxModule(model)
    pruner = IterativePruner(module, model, target="trt-t4", latency=0.8, steps=4, interval=2, min_keep=0.0,
                             calibrate_every=2)
    assert pruner._backend is None and pruner.scale == 1.0  # an analytic target: nothing to time
    pruner._backend = object()

    class Timed:
        def __init__(self, ratio):
            self.ratio = ratio

    def fake(backend, reference, candidate, **kw):
        return Timed((1.1 if pruner.done < 4 else 1.4) * pruner.predicted_ms() / pruner.dense_ms)

    monkeypatch.setattr(timing, "paired_timing", fake)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    _train(module, pruner, 8, shape)
    assert pruner.finished
    assert [c["step"] for c in pruner.calibrations] == [2, 4, 4]
    # after the first calibration the knapsack is given the schedule's targets over 1.1
    assert pruner.history[2].target_ms == pytest.approx(pruner.target_ms(3) / 1.1)
    # the last step missed (measured 1.4 x its prediction): solved again for budget / 1.4, then it fits
    assert [h.step for h in pruner.history] == [1, 2, 3, 4, 4]
    assert pruner.history[-1].target_ms == pytest.approx(pruner.budget_ms / 1.4)
    assert pruner.calibrations[-1]["miss"] <= 1.0 + 1e-9
    assert pruner.finalize().verification.max_rel_error <= 1e-4
