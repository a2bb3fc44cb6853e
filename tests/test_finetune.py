"""Fine-tuning: data loading (halp_onnx.data), the Trainer / finetune loop (KD, CE, checkpoints and
resume, write-back, hooks, callbacks), the ``finetune`` CLI, data parallelism on CPU (gloo, 2 ranks
under torchrun), and label-free KD that repairs a pruned CIFAR ResNet-20 (skips without ../shared)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from PIL import Image

from bench import zoo
from halp_onnx.data import ImageData, load_data, parse_floats, parse_size, split, to_nchw
from halp_onnx.errors import HalpError

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from halp_onnx import cli_finetune  # noqa: E402
from halp_onnx.builder import GraphBuilder  # noqa: E402
from halp_onnx.torch import OnnxModule  # noqa: E402
from halp_onnx.torch.finetune import FinetuneConfig, Trainer, finetune  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# fixtures


def tiny_model(seed: int = 0, bn: bool = True, size: int = 8, classes: int = 4) -> onnx.ModelProto:
    """conv-(BN)-relu-conv-relu-GAP-gemm, input N x 3 x size x size (symbolic batch)."""
    b = GraphBuilder("tiny", seed)
    x = b.input("input", ["N", 3, size, size])
    y = b.conv(x, 3, 8, bias=not bn)
    if bn:
        y = b.bn(y, 8)
    y = b.op("Relu", [y])
    y = b.op("Relu", [b.conv(y, 8, 8)])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [y, b.weight((classes, 8)), b.const(np.zeros(classes, np.float32))],
                                         ["logits"], name="head", transB=1))
    b.output("logits")
    return b.model()


def tiny_data(n: int = 64, size: int = 8, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    images[..., 0] = np.clip(images[..., 0].astype(int) // 2 + 40 * labels[:, None, None], 0, 255)  # learnable
    return images, labels.astype(np.int64)


def params_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def write_png(path, hw=(8, 8), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (*hw, 3)).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return arr


# ------------------------------------------------------------------------------------------------
# data loading


def test_load_class_folder(tmp_path):
    root = tmp_path / "data"
    a0 = write_png(root / "cat" / "a.png", seed=1)
    write_png(root / "cat" / "sub" / "b.png", seed=2)       # found recursively
    write_png(root / "dog" / "c.png", seed=3, mode="L")     # grayscale -> RGB
    (root / "empty").mkdir()                                 # not a class
    (root / "dog" / "notes.txt").write_text("not an image")
    data = load_data(root)
    assert data.lazy and len(data) == 3 and data.classes == ("cat", "dog")
    assert data.labels.tolist() == [0, 0, 1] and data.shape == (8, 8, 3)
    imgs = data.take([0, 2])
    assert imgs.shape == (2, 8, 8, 3) and imgs.dtype == np.uint8
    assert np.array_equal(imgs[0], a0)
    assert np.array_equal(data.materialize().images, data.take(np.arange(3), workers=2))
    # sizes differ: error without size, resized with it
    write_png(root / "dog" / "big.png", hw=(12, 10), seed=4)
    with pytest.raises(HalpError, match="differ in size.*--size"):
        load_data(root)
    data = load_data(root, size=16)
    assert data.take(np.arange(4)).shape == (4, 16, 16, 3)


def test_load_flat_folder_and_npz(tmp_path):
    flat = tmp_path / "flat"
    for i in range(3):
        write_png(flat / f"{i}.jpg", seed=i)
    data = load_data(flat)
    assert not data.labeled and data.classes is None and len(data) == 3

    images, labels = tiny_data(10)
    np.savez(tmp_path / "l.npz", images=images, labels=labels.astype(np.int32), classes=np.array(list("abcd")))
    data = load_data(tmp_path / "l.npz")
    assert not data.lazy and data.labels.dtype == np.int64 and data.classes == tuple("abcd")
    assert np.array_equal(data.take([3, 1]), images[[3, 1]])
    np.savez(tmp_path / "u.npz", images=images)
    assert not load_data(tmp_path / "u.npz").labeled
    resized = load_data(tmp_path / "u.npz", size="4x6")
    assert resized.images.shape == (10, 4, 6, 3)


@pytest.mark.parametrize("case,match", [
    ("missing", "missing.npz: no such file"),
    ("empty_dir", "empty: no images"),
    ("mixed", "both images at the top level"),
    ("txt", "expected an image folder or an .npz"),
    ("no_images_key", r"no 'images' array \(keys: pics\)"),
    ("float_images", "'images' has dtype float32"),
    ("bad_shape", r"'images' has shape \(2, 4, 4, 5\)"),
    ("label_mismatch", "3 images but 2 labels"),
    ("float_labels", "'labels' has shape"),
    ("not_npz", "cannot read the .npz"),
])
def test_load_errors(tmp_path, case, match):
    p = tmp_path / {"missing": "missing.npz", "empty_dir": "empty", "mixed": "mixed", "txt": "x.txt",
                    "not_npz": "bad.npz"}.get(case, f"{case}.npz")
    u8 = np.zeros((3, 4, 4, 3), np.uint8)
    if case == "empty_dir":
        p.mkdir()
    elif case == "mixed":
        write_png(p / "a.png")
        write_png(p / "cls" / "b.png")
    elif case == "txt":
        p.write_text("x")
    elif case == "no_images_key":
        np.savez(p, pics=u8)
    elif case == "float_images":
        np.savez(p, images=u8.astype(np.float32))
    elif case == "bad_shape":
        np.savez(p, images=np.zeros((2, 4, 4, 5), np.uint8))
    elif case == "label_mismatch":
        np.savez(p, images=u8, labels=np.zeros(2, np.int64))
    elif case == "float_labels":
        np.savez(p, images=u8, labels=np.zeros(3, np.float32))
    elif case == "not_npz":
        p.write_bytes(b"garbage")
    with pytest.raises(HalpError, match=match) as err:
        load_data(p)
    assert str(p.name) in str(err.value)


def test_unreadable_image_and_parsers(tmp_path):
    write_png(tmp_path / "d" / "ok.png")
    (tmp_path / "d" / "broken.jpg").write_bytes(b"not a jpeg")
    data = load_data(tmp_path / "d", size=8)  # with a size the headers are not read up front
    with pytest.raises(HalpError, match="broken.jpg: cannot read the image"):
        data.take([0, 1])
    with pytest.raises(HalpError, match="broken.jpg: cannot read"):
        load_data(tmp_path / "d")

    assert parse_floats("0.485, 0.456,0.406") == (0.485, 0.456, 0.406)
    with pytest.raises(HalpError, match="--std 'a,b'"):
        parse_floats("a,b", option="--std")
    with pytest.raises(HalpError, match="expected 1 or 3 values"):
        parse_floats("1,2", option="--mean", n=3)
    assert parse_size("32") == (32, 32) and parse_size("24x32") == (24, 32) and parse_size(None) is None
    with pytest.raises(HalpError, match="--size"):
        parse_size("big")

    x = to_nchw(np.full((2, 3, 4, 3), 255, np.uint8), (0.5, 0.5, 0.5), (0.5, 0.25, 1.0))
    assert x.shape == (2, 3, 3, 4) and x.dtype == np.float32
    assert np.allclose(x[0, :, 0, 0], [1.0, 2.0, 0.5])


def test_split_stratified():
    images, _ = tiny_data(100)
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    data = ImageData(images, labels, None, "mem", (8, 8, 3))
    train, held = split(data, 0.1, seed=0)
    assert len(train) + len(held) == 100
    assert np.bincount(held.labels).tolist() == [1, 2, 3, 4]
    train2, held2 = split(data, 0.1, seed=0)
    assert np.array_equal(held.images, held2.images)
    assert split(data, 0.0)[1] is None
    unlabeled = ImageData(images, None, None, "mem", (8, 8, 3))
    assert len(split(unlabeled, 0.25)[1]) == 25
    with pytest.raises(HalpError, match="--holdout"):
        split(data, 1.0)


# ------------------------------------------------------------------------------------------------
# Trainer


def test_config_errors():
    with pytest.raises(HalpError, match="optimizer 'adam'"):
        FinetuneConfig(optimizer="adam")
    with pytest.raises(HalpError, match="epochs 0"):
        FinetuneConfig(epochs=0)
    with pytest.raises(HalpError, match="crop"):
        FinetuneConfig(crop="center")
    cfg = FinetuneConfig(optimizer="adamw")
    assert cfg.learning_rate == 1e-3 and FinetuneConfig.from_dict(cfg.to_dict()) == cfg


def test_prepare_augment_and_schedule():
    from halp_onnx.torch.finetune import _WarmupCosine

    images, _ = tiny_data(8, size=32)
    plain = Trainer(tiny_model(size=32), None, FinetuneConfig(device="cpu", augment=False))
    assert np.allclose(plain.prepare(images, train=True).numpy(), to_nchw(images, plain.config.mean,
                                                                         plain.config.std), atol=1e-6)
    for crop in ("pad", "resized", "none"):
        tr = Trainer(tiny_model(size=32), None, FinetuneConfig(device="cpu", crop=crop))
        a, b = tr.prepare(images, train=True, step=0), tr.prepare(images, train=True, step=0)
        c = tr.prepare(images, train=True, step=1)
        assert a.shape == (8, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c), crop
        assert torch.equal(tr.prepare(images), plain.prepare(images))  # no augmentation outside training
    # pad crop: every output row/column is a shifted input row/column or black padding
    tr = Trainer(tiny_model(size=32), None, FinetuneConfig(device="cpu", crop="pad", flip=False, mean=(0,), std=(1,)))
    x = tr.prepare(images[:1], train=True, step=5)[0].numpy()
    src = images[0].transpose(2, 0, 1) / 255.0
    shifts = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
              if np.allclose(x[:, max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)],
                             src[:, max(0, dy):32 + min(0, dy), max(0, dx):32 + min(0, dx)], atol=1e-6)]
    assert len(shifts) == 1

    f = _WarmupCosine(warmup=4, total=20, final=0.0)
    lrs = [f(s) for s in range(20)]
    assert lrs[:4] == [0.2, 0.4, 0.6, 0.8] and lrs[4] == 1.0
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.01 and f(100) == 0.0
    assert _WarmupCosine(0, None, 0.0)(1000) == 1.0


def test_losses_hooks_callbacks():
    model = tiny_model()
    images, labels = tiny_data(16)
    # the teacher as its own student: KD is 0 (BN in eval mode on both sides)
    tr = Trainer(model, model, FinetuneConfig(device="cpu", augment=False))
    tr.student.eval()
    x = tr.prepare(images)
    assert float(tr.loss(x).detach()) < 1e-6 and set(tr.last_parts) == {"kd", "loss"}
    loss = tr.loss(x, labels)
    assert set(tr.last_parts) == {"kd", "ce", "loss"}
    assert float(loss.detach()) == pytest.approx(float(tr.last_parts["ce"]), abs=1e-5)
    # no teacher: CE only; no labels either: a clear error
    tr = Trainer(model, None, FinetuneConfig(device="cpu"))
    tr.loss(images, labels)
    assert set(tr.last_parts) == {"ce", "loss"}
    with pytest.raises(HalpError, match="no teacher and no labels"):
        tr.loss(images)

    # a tensor hook installed before the Trainer stays in effect; extra loss terms; callbacks
    student = OnnxModule(model)
    relu_out = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    gate = torch.ones(1, 8, 1, 1, requires_grad=True)
    student.set_tensor_hook(relu_out, lambda t: t * gate)
    tr = Trainer(student, model, FinetuneConfig(device="cpu", lr=0.01))
    assert tr.student is student
    tr.add_loss("gate_l1", lambda trainer, x, y, logits: gate.abs().sum(), weight=1e-3)
    seen = []
    tr.callbacks.append(lambda trainer, step: seen.append((step, trainer.lr, float(gate.grad.abs().sum()))))
    for _ in range(3):
        parts = tr.step(images, labels)
    assert [s for s, _, _ in seen] == [1, 2, 3] and all(g > 0 for _, _, g in seen)
    assert set(parts) == {"kd", "ce", "gate_l1", "loss"} and float(parts["gate_l1"]) == pytest.approx(8.0)
    with torch.no_grad():
        gate.zero_()
        out = tr.student(tr.prepare(images))
    assert float(out.std(0).max()) < 1e-6  # gated to zero: the output no longer depends on the input


def _run_steps(trainer, images, labels, steps, bs=8):
    for s in range(steps):
        i = (trainer.global_step * bs) % len(images)
        trainer.step(images[i:i + bs], labels[i:i + bs])


def test_checkpoint_resume_identical(tmp_path):
    model, teacher = tiny_model(seed=1), tiny_model(seed=2)
    images, labels = tiny_data(64)
    cfg = FinetuneConfig(device="cpu", lr=0.05, warmup_epochs=0.5, seed=3)
    kw = dict(steps_per_epoch=8)
    torch.manual_seed(0)
    straight = Trainer(model, teacher, cfg, **kw)
    _run_steps(straight, images, labels, 12)

    torch.manual_seed(0)
    first = Trainer(model, teacher, cfg, **kw)
    _run_steps(first, images, labels, 6)
    ckpt = tmp_path / "ck" / "state.pt"
    first.save_checkpoint(ckpt)
    assert ckpt.exists() and not list(ckpt.parent.glob("*.tmp"))
    second = Trainer.resume(ckpt, model, teacher)
    assert second.global_step == 6 and second.lr == pytest.approx(first.lr)
    _run_steps(second, images, labels, 6)
    a, b = straight.student.state_dict(), second.student.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # incl. BN running stats

    with pytest.raises(HalpError, match="different student"):
        Trainer.resume(ckpt, tiny_model(classes=5), teacher)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(HalpError, match="junk.pt: cannot read the checkpoint"):
        Trainer.resume(tmp_path / "junk.pt", model, teacher)


def test_finetune_resume_and_write_back(tmp_path):
    model, teacher = tiny_model(seed=1), tiny_model(seed=2)
    images, labels = tiny_data(96)
    cfg = FinetuneConfig(device="cpu", epochs=2, batch_size=16, lr=0.05, seed=1, holdout=0.25)
    full = finetune(model, teacher, (images, labels), cfg, progress=False)
    assert [h["epoch"] for h in full.history] == [1, 2] and full.steps == 2 * 4
    assert full.initial_eval_top1 is not None and full.history[-1]["eval_top1"] is not None
    assert full.samples == 8 * 16 and full.history[0]["throughput"] > 0

    ckpt = tmp_path / "run.pt"
    stop_at = 6  # in the middle of epoch 2

    def stop(trainer, step):
        if step == stop_at:
            trainer.request_stop()

    part = finetune(model, teacher, (images, labels), FinetuneConfig(**{**cfg.to_dict(), "checkpoint": str(ckpt)}),
                    progress=False, callback=stop)
    assert part.steps == stop_at and part.history[-1]["partial"]
    resumed = finetune(model, teacher, (images, labels),
                       FinetuneConfig(**{**cfg.to_dict(), "resume": str(ckpt)}), progress=False)
    assert resumed.steps == full.steps
    pa, pb = params_of(full.model), params_of(resumed.model)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)

    # write-back: same initializer names and order, changed values, valid, runs in onnxruntime
    tuned = full.model
    assert [t.name for t in tuned.graph.initializer] == [t.name for t in model.graph.initializer]
    assert any(not np.array_equal(v, params_of(model)[k]) for k, v in pa.items())
    onnx.checker.check_model(tuned, full_check=True)
    x = to_nchw(images[:8], cfg.mean, cfg.std)
    sess = ort.InferenceSession(tuned.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = OnnxModule(tuned).eval()(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(sess.run(None, {"input": x})[0], ref, atol=1e-4)


def test_finetune_errors():
    model = tiny_model()
    images, labels = tiny_data(16)
    with pytest.raises(HalpError, match="unlabeled and there is no teacher"):
        finetune(model, None, (images, None), FinetuneConfig(device="cpu"), progress=False)
    with pytest.raises(HalpError, match=r"takes 8x8 images .* has 10x10; pass --size 8x8"):
        finetune(model, model, (np.zeros((4, 10, 10, 3), np.uint8), None), FinetuneConfig(device="cpu"),
                 progress=False)
    with pytest.raises(HalpError, match="the loss is nan"):
        finetune(model, model, (images, labels), FinetuneConfig(device="cpu", lr=1e30, batch_size=4, log_every=1,
                                                                 warmup_epochs=0), progress=False)


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli(tmp_path, capsys):
    model, teacher = tmp_path / "s.onnx", tmp_path / "t.onnx"
    onnx.save(tiny_model(seed=1), model)
    onnx.save(tiny_model(seed=2), teacher)
    images, labels = tiny_data(64)
    np.savez(tmp_path / "lab.npz", images=images, labels=labels)
    np.savez(tmp_path / "unl.npz", images=images)
    out, report = tmp_path / "o" / "tuned.onnx", tmp_path / "r.json"
    out.parent.mkdir()  # an output's folder must exist (the CLI's output contract refuses a missing one)
    before = model.read_bytes()
    rc = cli_finetune.main(["finetune", str(model), "--data", str(tmp_path / "lab.npz"), "--epochs", "2",
                            "--batch-size", "16", "--lr", "0.05", "--device", "cpu", "--no-progress",
                            "--report", str(report), "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "(CE)" in text and "held-out top-1" in text and f"wrote {out}" in text
    assert model.read_bytes() == before
    onnx.checker.check_model(onnx.load(out), full_check=True)
    rep = json.loads(report.read_text())
    assert len(rep["details"]["history"]) == 2 and rep["details"]["labeled"]

    rc = cli_finetune.main([str(model), "--teacher", str(teacher), "--data", str(tmp_path / "unl.npz"),
                            "--max-steps", "2", "--batch-size", "16", "--device", "cpu", "--no-progress",
                            "--mean", "0.5", "--std", "0.25", "-o", str(out)])
    assert rc == 0 and "label-free KD" in capsys.readouterr().out

    # a class folder of 12x12 PNGs: resized to the model's fixed 8x8 input
    for i in range(12):
        write_png(tmp_path / "folder" / f"c{i % 3}" / f"{i}.png", hw=(12, 12), seed=i)
    rc = cli_finetune.main([str(model), "--data", str(tmp_path / "folder"), "--max-steps", "1", "--batch-size", "4",
                            "--device", "cpu", "--no-progress", "--holdout", "0", "-o", str(out)])
    assert rc == 0 and "(CE): 1 steps" in capsys.readouterr().out

    for argv, match in [
        ([str(model), "--data", str(tmp_path / "unl.npz")], "no labels and there is no --teacher"),
        ([str(model), "--data", str(tmp_path / "nope")], "nope: no such file or folder"),
        ([str(model), "--teacher", str(tmp_path / "t2.onnx"), "--data", str(tmp_path / "unl.npz")],
         "--teacher .*t2.onnx: no such file"),
        ([str(model), "--data", str(tmp_path / "lab.npz"), "--mean", "1,2"], "--mean 1.0,2.0: 2 values"),
        ([str(model), "--data", str(tmp_path / "lab.npz"), "--optimizer", "sgd", "--epochs", "-1"], "epochs -1"),
    ]:
        rc = cli_finetune.main(argv + ["--device", "cpu", "--no-progress", "-o", str(tmp_path / "x.onnx")])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("halp-onnx: error:") and len(err.strip().splitlines()) == 1, err
        assert __import__("re").search(match, err), err
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------------------------------------
# data parallel on CPU: torchrun, gloo, 2 ranks == 1 process with twice the batch

DDP_SCRIPT = """
import json, os, sys, numpy as np, torch, onnx
torch.set_num_threads(1)
from halp_onnx.torch.finetune import FinetuneConfig, finetune
tmp = sys.argv[1]
z = np.load(os.path.join(tmp, "data.npz"))
cfg = FinetuneConfig(device="cpu", epochs=2, batch_size=8, lr=0.05, augment=False, holdout=0.25,
                     checkpoint=os.path.join(tmp, "ddp.pt"))
res = finetune(onnx.load(os.path.join(tmp, "s.onnx")), onnx.load(os.path.join(tmp, "t.onnx")),
               (z["images"], z["labels"]), cfg, progress=False)
rank = int(os.environ["RANK"])
np.savez(os.path.join(tmp, f"rank{rank}.npz"), **{k.replace(":", "_"): onnx.numpy_helper.to_array(t)
         for k, t in ((t.name, t) for t in res.model.graph.initializer)})
with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:  # (stdout of the ranks interleaves)
    json.dump({"world": int(os.environ["WORLD_SIZE"]), "steps": res.steps, "samples": res.samples,
               "top1": [res.initial_eval_top1, res.eval_top1]}, f)
"""


def test_ddp_two_ranks_gloo(tmp_path):
    student, teacher = tiny_model(seed=1, bn=False), tiny_model(seed=2, bn=False)
    onnx.save(student, tmp_path / "s.onnx")
    onnx.save(teacher, tmp_path / "t.onnx")
    images, labels = tiny_data(64)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "ddp.py"), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s0, s1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert s0 == s1 and s0["world"] == 2 and s0["steps"] == 6 and s0["samples"] == 96  # eval all-reduced
    assert (tmp_path / "ddp.pt").exists() and not list(tmp_path.glob(".ddp.pt.*"))  # rank 0 writes, atomically
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert all(np.array_equal(r0[k], r1[k]) for k in r0.files)

    # one process, batch 16 = the union of the two ranks' batches of 8
    cfg = FinetuneConfig(device="cpu", epochs=2, batch_size=16, lr=0.05, augment=False, holdout=0.25)
    single = finetune(student, teacher, (images, labels), cfg, progress=False)
    assert s0["top1"] == pytest.approx([single.initial_eval_top1, single.eval_top1], abs=1 / 16 + 1e-9)
    ref = {k.replace(":", "_"): v for k, v in params_of(single.model).items()}
    init = {k.replace(":", "_"): v for k, v in params_of(student).items()}
    assert sorted(r0.files) == sorted(ref)
    for k in r0.files:
        assert np.allclose(r0[k], ref[k], rtol=1e-4, atol=1e-5), k
    assert any(not np.allclose(r0[k], init[k]) for k in r0.files)
    print(f"torchrun 2 ranks: {time.perf_counter() - t0:.1f}s")


# ------------------------------------------------------------------------------------------------
# real data: label-free KD repairs a pruned CIFAR ResNet-20


@pytest.mark.skipif(zoo.shared_dir() is None, reason="../shared (CIFAR-10 data and weights) is absent")
def test_kd_repairs_pruned_cifar_resnet20(tmp_path):
    from halp_onnx import api

    dense_path = zoo.export_cifar_resnet(20, tmp_path / "r20.onnx", npz=zoo.cifar_resnet_weights(20))
    pruned = api.prune(dense_path, 0.5, input_shapes={"input": (1, 3, 32, 32)}).model
    test_images, test_labels = zoo.load_cifar_jpeg("test")
    x_test, y_test = zoo.normalize_cifar(test_images[:1000]), test_labels[:1000]
    dense_top1 = zoo.top1_onnx(onnx.load(str(dense_path)), x_test, y_test)
    before = zoo.top1_onnx(pruned, x_test, y_test)

    train_images, _ = zoo.load_cifar_jpeg("train")
    pick = np.random.default_rng(0).permutation(len(train_images))[:2000]
    # BN is folded into the convolutions of this export, so plain SGD needs gradient clipping
    cfg = FinetuneConfig(device="cpu", epochs=1, batch_size=16, optimizer="sgd", lr=0.003, clip_grad_norm=5.0,
                         mean=zoo.CIFAR_MEAN, std=zoo.CIFAR_STD, seed=0)
    t0 = time.perf_counter()
    result = finetune(pruned, onnx.load(str(dense_path)), (train_images[pick], None), cfg, progress=False)
    seconds = time.perf_counter() - t0
    after = zoo.top1_onnx(result.model, x_test, y_test)
    h = result.history[-1]
    print(f"resnet20 pruned 0.5, label-free KD on 2,000 images (1 epoch, {result.steps} steps): top-1 on 1,000 "
          f"JPEG test images {before:.3f} -> {after:.3f} (dense {dense_top1:.3f}); KD loss {h['kd']:.2f}, "
          f"{h['throughput']:.0f} img/s, {seconds:.1f}s")
    assert "ce" not in h and result.samples == result.steps * 16
    assert after >= before + 0.05
    assert [t.name for t in result.model.graph.initializer] == [t.name for t in pruned.graph.initializer]
    onnx.checker.check_model(result.model, full_check=True)
