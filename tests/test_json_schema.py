"""One JSON report (halp-onnx/report/v1) for every command: each command's output validated against
``halp_onnx.report_schema.DESCRIPTION`` by a small validator written here (no new dependency), and
docs/report-schema.md generated from the description."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from halp_onnx import __version__, report_schema
from halp_onnx.builder import GraphBuilder
from halp_onnx.cli import main
from halp_onnx.report_schema import DESCRIPTION, DETAILS, SCHEMA_ID

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- a validator
def check(value: Any, schema: dict, where: str = "$") -> list[str]:
    """The subset of JSON Schema the description uses: type, const, enum, required, properties,
    additionalProperties (false or a schema), items."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        ok = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
              "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "null": lambda v: v is None,
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if not any(ok[k](value) for k in kinds):
            return [f"{where}: {type(value).__name__} is not {kinds}"]
    errs = []
    if "const" in schema and value != schema["const"]:
        errs.append(f"{where}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errs += [f"{where}.{k}: missing" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errs += check(v, props[k], f"{where}.{k}")
            elif extra is False:
                errs.append(f"{where}.{k}: unexpected")
            elif isinstance(extra, dict):
                errs += check(v, extra, f"{where}.{k}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            errs += check(v, schema["items"], f"{where}[{i}]")
    return errs


def valid(report: dict, command: str, model: Path | None = None) -> dict:
    errs = check(report, DESCRIPTION) + check(report.get("details"), DETAILS[command], "$.details")
    assert not errs, errs
    assert report_schema.validate(report) == []  # the package's own validator agrees
    assert report["schema"] == SCHEMA_ID and report["command"] == command and report["version"] == __version__
    assert list(report) == list(DESCRIPTION["properties"])  # every key, always, in one order
    if model is not None:
        assert report["input"]["path"] == str(model)
        assert report["input"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert "total" in report["seconds"]
    return report


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("HALP_ONNX_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HALP_ONNX_TIMING_BUDGET_S", "0.01")


def tiny(batch: Any = 1) -> onnx.ModelProto:
    b = GraphBuilder("tiny", 0)
    x = b.input("input", [batch, 3, 8, 8])
    y = b.op("Relu", [b.bn(b.conv(x, 3, 8, bias=False), 8)])
    y = b.op("Relu", [b.conv(y, 8, 8)])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    b.nodes.append(onnx.helper.make_node("Gemm", [y, b.weight((4, 8)), b.const(np.zeros(4, np.float32))],
                                         ["logits"], name="head", transB=1))
    b.output("logits")
    return b.model()


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    assert main(["example", "resnet", "-o", str(path)]) == 0
    return path


def stdout_json(capsys) -> dict:
    cap = capsys.readouterr()
    return json.loads(cap.out)


# ---------------------------------------------------------------------------------------- every command
def test_example_inspect_targets(model, tmp_path, capsys):
    capsys.readouterr()
    assert main(["example", "mobilenet", "-o", str(tmp_path / "mb.onnx"), "--json"]) == 0
    rep = valid(stdout_json(capsys), "example")
    assert rep["outputs"] == {"model": str(tmp_path / "mb.onnx")} and rep["input"] is None
    assert main(["inspect", str(model), "--json"]) == 0
    rep = valid(stdout_json(capsys), "inspect", model)
    assert len(rep["groups"]) == 5 and sum(g["prunable"] for g in rep["groups"]) == 4
    assert all(g["kept"] is None for g in rep["groups"]) and rep["params"]["after"] is None
    assert main(["targets", "--json"]) == 0
    rep = valid(stdout_json(capsys), "targets")
    assert {r["target"] for r in rep["details"]["targets"]} >= {"ort-cpu", "trt-v100"}


def test_prune_report_file_and_json_are_the_same_report(model, tmp_path, capsys):
    out, rep_path = tmp_path / "p.onnx", tmp_path / "r.json"
    assert main(["prune", str(model), "--ratio", "0.3", "-o", str(out), "--report", str(rep_path), "--json"]) == 0
    printed = valid(stdout_json(capsys), "prune", model)
    written = valid(json.loads(rep_path.read_text()), "prune", model)
    assert printed == written
    assert written["outputs"] == {"model": str(out), "report": str(rep_path)}
    assert written["params"]["after"] < written["params"]["before"] and written["verification"]["passed"]
    assert all(g["kept"] <= g["size"] for g in written["groups"]) and written["details"]["ratio"] == 0.3


def test_compile_one_shot_analytic(model, tmp_path, capsys):
    out = tmp_path / "p.onnx"
    assert main(["compile", str(model), "--target", "trt-v100", "--latency", "0.95", "-o", str(out), "--json",
                 "--quiet"]) == 0
    rep = valid(stdout_json(capsys), "compile", model)
    assert rep["target"] == "trt-v100" and rep["latency"]["label"] == "estimated"
    assert rep["latency"]["predicted_ms"] <= rep["budget"]["budget_ms"] * (1 + 1e-9)
    assert rep["latency"]["measured_ms"] is None and rep["details"]["mode"] == "one-shot"
    assert any("analytic" in w for w in rep["warnings"]) and rep["outputs"] == {"model": str(out)}


def test_latency_profile_and_compile_measured_on_a_tiny_model(tmp_path, capsys):
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny(), str(src))
    assert main(["profile", str(src), "--json", "--quiet"]) == 0
    rep = valid(stdout_json(capsys), "profile", src)
    assert rep["details"]["new_points"] > 0 and rep["outputs"]["profile"].startswith(str(tmp_path / "profiles"))
    assert main(["latency", str(src), "--json", "--quiet"]) == 0
    rep = valid(stdout_json(capsys), "latency", src)
    assert rep["latency"]["label"] == "measured" and rep["latency"]["measured_ms"] > 0
    assert rep["latency"]["profile"].startswith(str(tmp_path / "profiles")) and rep["outputs"] == {}
    assert main(["latency", str(src), "--target", "trt-v100", "--json"]) == 0
    rep = valid(stdout_json(capsys), "latency", src)
    assert rep["latency"]["measured_ms"] is None and "TensorRT" in rep["latency"]["measured_status"]
    out, rep_path = tmp_path / "p.onnx", tmp_path / "r.json"
    assert main(["compile", str(src), "--latency", "1.0", "-o", str(out), "--report", str(rep_path), "--quiet"]) == 0
    rep = valid(json.loads(rep_path.read_text()), "compile", src)
    assert rep["latency"]["label"] == "measured" and rep["budget"]["request"] == "1.0"


def test_finetune_and_iterative_compile(tmp_path, capsys):
    pytest.importorskip("torch")
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny("N"), str(src))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (32, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=rng.integers(0, 4, 32))
    out = tmp_path / "t.onnx"
    assert main(["finetune", str(src), "--data", str(tmp_path / "d.npz"), "--max-steps", "2", "--batch-size", "8",
                 "--device", "cpu", "--quiet", "-o", str(out), "--json"]) == 0
    rep = valid(stdout_json(capsys), "finetune", src)
    assert rep["details"]["steps"] == 2 and rep["details"]["labeled"] and rep["outputs"] == {"model": str(out)}
    assert rep["params"]["after"] == rep["params"]["before"]
    from halp_onnx.examples import cifar_resnet

    big = tmp_path / "resnet.onnx"
    onnx.save(cifar_resnet(1, batch="N"), str(big))
    np.savez(tmp_path / "c.npz", images=rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 32))
    assert main(["compile", str(big), "--target", "trt-t4", "--latency", "0.9", "--iterative", "--data",
                 str(tmp_path / "c.npz"), "--epochs", "1", "--batch-size", "8", "--steps", "2", "--interval", "1",
                 "--holdout", "0", "--device", "cpu", "--lr", "0.001", "-o", str(tmp_path / "i.onnx"), "--json",
                 "--quiet"]) == 0
    rep = valid(stdout_json(capsys), "compile", big)
    assert rep["details"]["mode"] == "iterative" and len(rep["details"]["history"]) == 2
    assert rep["latency"]["predicted_ms"] <= rep["budget"]["budget_ms"] * 1.0001


# ---------------------------------------------------------------------------------------- the schema itself
def test_validator_catches_what_breaks_the_schema():
    good = report_schema.report("prune", input=None, params=(10, 5), details={"ratio": 0.5, "criterion": "l2",
                                                                              "seed": 0})
    assert check(good, DESCRIPTION) == [] and report_schema.validate(good) == []
    for broken in ({**good, "extra": 1}, {k: v for k, v in good.items() if k != "latency"},
                   {**good, "params": {"before": "10", "after": 5}}, {**good, "schema": "halp-onnx/report/v0"},
                   {**good, "latency": {"predicted_ms": 1.0}}, {**good, "details": {"ratio": 0.5}},
                   {**good, "seconds": {"total": "fast"}}, {**good, "command": "frobnicate"}):
        assert report_schema.validate(broken), broken
    assert report_schema.report("latency", latency={"predicted_ms": float("nan"), "measured_ms": None,
                                                    "label": "measured"})["latency"]["predicted_ms"] is None


def test_every_command_has_details_and_the_document_is_generated():
    assert set(DETAILS) == set(report_schema.COMMANDS) == set(DESCRIPTION["properties"]["command"]["enum"])
    doc = (ROOT / "docs" / "report-schema.md").read_text()
    assert doc == report_schema.markdown() + "\n", \
        "docs/report-schema.md is stale: python -m halp_onnx.report_schema --markdown > docs/report-schema.md"
    for key in DESCRIPTION["properties"]:
        assert f"| `{key}` |" in doc
