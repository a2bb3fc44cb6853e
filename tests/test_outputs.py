"""The output contract (halp_onnx.cli_io.OutputPlan): exit 0 with every output complete, or exit 2 with
one line and nothing written; temporary files never outlive a run; devices and streams never replaced.

Tests run as root, so an unwritable folder is simulated (os.access patched, a file where the folder
should be), and a full disk by a write that raises ENOSPC."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from halp_onnx import cli_io
from halp_onnx.cli import main
from halp_onnx.cli_io import TMP_RE
from halp_onnx.errors import HalpError
from halp_onnx.profiles import store


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("HALP_ONNX_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HALP_ONNX_TIMING_BUDGET_S", "0.01")


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    assert main(["example", "resnet", "-o", str(path)]) == 0
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temps(*folders: Path) -> list[Path]:
    return [p for f in folders for p in f.iterdir() if TMP_RE.match(p.name)]


def prune(model: Path, out: Path, *extra: str) -> int:
    return main(["prune", str(model), "--ratio", "0.3", "-o", str(out), *extra])


def compile_(model: Path, out: Path, *extra: str) -> int:
    return main(["compile", str(model), "--target", "trt-v100", "--latency", "0.95", "--no-measure", "--quiet",
                 "-o", str(out), *extra])


def refused(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("halp-onnx: error:"), err
    for w in words:
        assert w in lines[0], (w, err)
    return lines[0]


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------------------------------- up front
def test_report_or_html_equal_to_out_is_refused(model, tmp_path, capsys):
    before = listing(tmp_path)
    out = tmp_path / "p.onnx"
    assert prune(model, out, "--report", str(out)) == 2
    refused(capsys, "--report", str(out), "the same file as -o")
    assert compile_(model, out, "--html", str(out)) == 2
    refused(capsys, "--html", "the same file as -o")
    assert compile_(model, out, "--report", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.json")) == 2
    refused(capsys, "--html", "the same file as --report")
    assert listing(tmp_path) == before


def test_same_file_through_a_symlink_a_hard_link_or_the_external_data_name(model, tmp_path, capsys):
    out = tmp_path / "p.onnx"
    out.write_bytes(b"old")
    (tmp_path / "link.json").symlink_to(out)
    os.link(out, tmp_path / "hard.json")
    for report in ("link.json", "hard.json", "p.onnx.data"):
        assert prune(model, out, "--report", str(tmp_path / report)) == 2
        refused(capsys, "--report", "the same file as -o")
    assert out.read_bytes() == b"old" and not temps(tmp_path)


def test_output_equal_to_the_input_or_its_external_data(tmp_path, capsys):
    from halp_onnx.examples import cifar_resnet

    src = tmp_path / "ext.onnx"
    onnx.save_model(cifar_resnet(), str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    before = digest(tmp_path / "weights.bin")
    assert prune(src, src) == 2
    refused(capsys, "-o", "the output path is the input model")
    assert prune(src, tmp_path / "p.onnx", "--report", str(tmp_path / "weights.bin")) == 2
    refused(capsys, "--report", "the input model (its external-data file)")
    assert digest(tmp_path / "weights.bin") == before and not (tmp_path / "p.onnx").exists()


@pytest.mark.parametrize("case", ["missing folder", "folder is a file", "directory", "fifo", "unwritable"])
def test_bad_output_paths(model, tmp_path, capsys, monkeypatch, case):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    path, words = {
        "missing folder": (tmp_path / "nope" / "r.json", ["does not exist"]),
        "folder is a file": (tmp_path / "afile" / "r.json", ["afile is a file, not a folder"]),
        "directory": (tmp_path / "adir", ["is a directory"]),
        "fifo": (tmp_path / "fifo", ["not a regular file", "use '-'"]),
        "unwritable": (tmp_path / "ro" / "r.json", ["is not writable"]),
    }[case]
    if case == "unwritable":
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path / "ro" else real(p, mode))
    before = listing(tmp_path)
    assert prune(model, tmp_path / "p.onnx", "--report", str(path)) == 2
    refused(capsys, "--report", *words)
    assert listing(tmp_path) == before and stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


def test_dev_stdout_and_dev_null_are_never_replaced(model, tmp_path, capsys):
    # tests run as root, where an os.replace onto /dev/stdout or /dev/null would succeed
    link = os.readlink("/dev/stdout")
    null = os.stat("/dev/null")
    for path in ("/dev/stdout", "/dev/null", "/proc/self/fd/1"):
        assert prune(model, tmp_path / "p.onnx", "--report", path) == 2
        refused(capsys, f"--report {path}", "use '-'")
    assert prune(model, Path("/dev/null")) == 2
    refused(capsys, "-o /dev/null")
    assert os.path.islink("/dev/stdout") and os.readlink("/dev/stdout") == link
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null").st_rdev == null.st_rdev
    assert not (tmp_path / "p.onnx").exists()


def test_dash_writes_the_report_to_stdout(model, tmp_path, capsys):
    out = tmp_path / "p.onnx"
    assert prune(model, out, "--report", "-") == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert rep["outputs"] == {"model": str(out), "report": "-"} and "verified" in cap.err
    assert prune(model, out, "--report", "-", "--json") == 0  # one report, not two
    assert json.loads(capsys.readouterr().out)["command"] == "prune"
    assert compile_(model, out, "--json", "--html", "-") == 2
    refused(capsys, "--html -", "stdout already carries --json")
    assert prune(model, Path("-")) == 2
    refused(capsys, "-o -", "cannot go to stdout")


def test_optional_dependency_checked_before_any_work(model, tmp_path, capsys, monkeypatch):
    from halp_onnx.pipeline import runner

    # --html draws inline SVG and needs no optional dependency now; OutputPlan.require still refuses
    # before any work, shown here with a module that is not installed
    add = cli_io.OutputPlan.add

    def add_and_require(self, option, path, role, **kw):
        add(self, option, path, role, **kw)
        if option == "--html":
            self.require(option, path, "halp_onnx_no_such_module", "pip install it")

    monkeypatch.setattr(cli_io.OutputPlan, "add", add_and_require)
    monkeypatch.setattr(runner.Pipeline, "run", lambda *a, **k: pytest.fail("the pipeline ran"))
    before = listing(tmp_path)
    assert compile_(model, tmp_path / "p.onnx", "--report", str(tmp_path / "r.json"),
                    "--html", str(tmp_path / "r.html")) == 2
    refused(capsys, "--html", "needs halp_onnx_no_such_module")
    assert listing(tmp_path) == before


# ---------------------------------------------------------------------------------------- while writing
def test_failing_report_or_html_leaves_no_model(model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "p.onnx"
    out.write_bytes(b"old model")

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli_io, "_write_text", full)
    assert prune(model, out, "--report", str(tmp_path / "r.json")) == 2
    refused(capsys, "--report", "r.json", "No space left on device")
    assert out.read_bytes() == b"old model" and not (tmp_path / "r.json").exists() and not temps(tmp_path)
    monkeypatch.undo()
    from halp_onnx import report_html

    def broken(result):
        raise HalpError("the plot failed", stage="report")

    monkeypatch.setattr(report_html, "html_report", broken)
    assert compile_(model, out, "--report", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")) == 2
    refused(capsys, "the plot failed")
    assert out.read_bytes() == b"old model" and not (tmp_path / "r.json").exists() and not temps(tmp_path)


def test_enospc_writing_the_model(model, tmp_path, capsys, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx, "save_model", full)
    assert prune(model, tmp_path / "p.onnx", "--report", str(tmp_path / "r.json")) == 2
    refused(capsys, "-o", "No space left on device")
    assert not (tmp_path / "p.onnx").exists() and not (tmp_path / "r.json").exists() and not temps(tmp_path)


def test_commit_order_and_rollback(model, tmp_path, capsys, monkeypatch):
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    order: list[str] = []
    real = os.replace

    def spy(src, dst):
        order.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert prune(model, out, "--report", str(rep)) == 0
    assert order == ["r.json", "p.onnx"]  # the model last
    old_model, old_report = out.read_bytes(), rep.read_bytes()

    def model_fails(src, dst):
        if Path(dst) == out and TMP_RE.match(Path(src).name) and "p.onnx.halp-tmp" in str(src):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", model_fails)
    assert prune(model, out, "--report", str(rep), "--seed", "3", "--criterion", "random") == 2
    refused(capsys, "-o", "Input/output error", "nothing written")
    assert out.read_bytes() == old_model and rep.read_bytes() == old_report and not temps(tmp_path)
    out.unlink()
    rep.unlink()
    assert prune(model, out, "--report", str(rep)) == 2  # new files: the report is removed again
    capsys.readouterr()
    assert not out.exists() and not rep.exists() and not temps(tmp_path)


def test_stale_temp_files_of_a_killed_run_are_removed(model, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".p.onnx.halp-tmp-{dead.pid}-deadbeef"
    stale.write_bytes(b"half a model")
    alive = tmp_path / f".q.onnx.halp-tmp-{os.getppid()}-0123abcd"  # a live process's: kept
    alive.write_bytes(b"in use")
    assert prune(model, tmp_path / "p.onnx") == 0
    assert not stale.exists() and alive.exists()
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    stale = profiles / f".ort-cpu.json.halp-tmp-{dead.pid}-00ff00ff"
    stale.write_text("{")
    assert main(["latency", str(model), "--target", "trt-v100", "--no-measure", "--quiet"]) == 0
    assert not stale.exists()


def test_interrupt_or_sigterm_mid_run_leaves_nothing(model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "p.onnx"
    before = listing(tmp_path)
    old_handler = signal.getsignal(signal.SIGTERM)

    def interrupt(self, report):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_io.OutputPlan, "stage_report", interrupt)
    assert prune(model, out, "--report", str(tmp_path / "r.json")) == 130
    assert "interrupted" in capsys.readouterr().err
    assert listing(tmp_path) == before

    def terminate(self, report):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli_io.OutputPlan, "stage_report", terminate)
    with pytest.raises(SystemExit) as exc:
        prune(model, out, "--report", str(tmp_path / "r.json"))
    assert exc.value.code == 143 and "terminated" in capsys.readouterr().err
    assert listing(tmp_path) == before and signal.getsignal(signal.SIGTERM) is old_handler


# ---------------------------------------------------------------------------------------- profile store
@pytest.mark.parametrize("case", ["file", "under a file", "unwritable"])
def test_profile_folder_refused_before_measuring(model, tmp_path, capsys, monkeypatch, case):
    from halp_onnx.profiles import latency

    monkeypatch.setattr(latency, "latency_model", lambda *a, **k: pytest.fail("measured"))
    (tmp_path / "afile").write_text("x")
    folder = {"file": tmp_path / "afile", "under a file": tmp_path / "afile" / "p",
              "unwritable": tmp_path / "ro"}[case]
    if case == "unwritable":
        folder.mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == folder else real(p, mode))
    monkeypatch.setenv("HALP_ONNX_PROFILE_DIR", str(folder))
    for argv in (["profile", str(model)], ["latency", str(model)],
                 ["compile", str(model), "--latency", "0.9", "-o", str(tmp_path / "p.onnx")]):
        assert main(argv) == 2
        refused(capsys, "profile folder", str(folder), "not writable" if case == "unwritable" else "not a folder")
    assert main(["latency", str(model), "--profile", str(tmp_path / "afile" / "x.json")]) == 2
    refused(capsys, "--profile", "afile is a file, not a folder")
    assert not (tmp_path / "p.onnx").exists()


def test_profile_store_write_failures_are_one_line(tmp_path, monkeypatch):
    prof = store.Profile("x", "ort-cpu", "fp32", 1, 1, False, {"cpu": "A"})
    (tmp_path / "afile").write_text("x")
    with pytest.raises(HalpError, match="profile folder .*afile.* is a file, not a folder"):
        store.write_profile(prof, tmp_path / "afile" / "x.json")
    with pytest.raises(HalpError, match="profile folder .*afile.* is a file, not a folder"):
        with store.lock(tmp_path / "afile" / "sub" / "x.json"):
            pass
    def full(obj, fh, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.json, "dump", full)
    with pytest.raises(HalpError, match=r"profile folder .*: cannot write x.json \(No space left on device\)"):
        store.write_profile(prof, tmp_path / "x.json")
    assert listing(tmp_path) == {"afile"}


def test_every_writer_uses_the_temp_pattern(tmp_path, monkeypatch):
    from halp_onnx.examples import example
    from halp_onnx.passes.rewrite import save_model

    seen: list[str] = []
    real = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    save_model(example("resnet"), tmp_path / "a.onnx")
    store.write_profile(store.Profile("x", "ort-cpu", "fp32", 1, 1, False, {}), tmp_path / "x.json")
    assert len(seen) == 2 and all(TMP_RE.match(n) for n in seen), seen
    assert TMP_RE.match(cli_io.temp_path(tmp_path / "r.json").name)
    assert listing(tmp_path) == {"a.onnx", "x.json"}


def test_external_data_output_is_staged_and_committed_before_the_model(tmp_path, monkeypatch):
    from halp_onnx.examples import cifar_resnet
    from halp_onnx.passes import load as load_pass, rewrite as rewrite_pass, verify as verify_pass

    for module in (load_pass, rewrite_pass, verify_pass):
        monkeypatch.setattr(module, "PROTOBUF_LIMIT", 1000)
    src = tmp_path / "big.onnx"
    onnx.save_model(cifar_resnet(), str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data", size_threshold=0)
    order: list[str] = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (order.append(Path(d).name), real(s, d))[1])
    out = tmp_path / "o" / "p.onnx"
    out.parent.mkdir()
    assert prune(src, out, "--report", str(tmp_path / "o" / "r.json")) == 0
    assert order == ["r.json", "p.onnx.data", "p.onnx"] and not temps(out.parent)
    rep = json.loads((tmp_path / "o" / "r.json").read_text())
    assert rep["outputs"]["model_data"] == str(out) + ".data"
    onnx.checker.check_model(str(out), full_check=True)


# ---------------------------------------------------------------------------------------- the small things
def test_version_help_epilogs_progress_lines_and_one_line_warnings(model, tmp_path, capsys):
    import halp_onnx

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"halp-onnx {halp_onnx.__version__}"
    for command in ("example", "inspect", "prune", "compile", "finetune", "profile", "latency", "targets"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:\n  halp-onnx" in text or "examples:\n  torchrun" in text, command
    out = tmp_path / "p.onnx"
    assert main(["compile", str(model), "--target", "trt-v100", "--latency", "0.95", "-o", str(out), "--json"]) == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    lines = cap.err.splitlines()
    assert any(line.startswith("[compile] latency-model ") and line.endswith("s") for line in lines), cap.err
    warned = [line for line in lines if line.startswith("halp-onnx: warning:")]
    assert warned and any("analytic estimates" in w for w in rep["warnings"])
    assert all(w in " ".join(warned) for w in rep["warnings"])
    assert compile_(model, out, "--json") == 0  # --quiet: no stage lines, no warnings on stderr
    cap = capsys.readouterr()
    assert "[compile]" not in cap.err and "warning" not in cap.err and json.loads(cap.out)["warnings"]
