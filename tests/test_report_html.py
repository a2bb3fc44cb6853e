"""The HTML report: self-contained, every section, user text escaped, a monotone trade-off curve."""
from __future__ import annotations

import html
import re
import sys

import pytest

import halp_onnx
from halp_onnx.cli import main
from halp_onnx.examples import example
from halp_onnx.ops.table import ANCHOR_OPS
from halp_onnx.report_html import command_line, html_report

HOSTILE = "<script>alert('x')</script>\"&<img src=//evil.example/x.png>"
SECTIONS = ("summary", "warnings", "tradeoff", "cumulative", "layers", "profile", "reproduce", "command", "groups")


@pytest.fixture(scope="module")
def hostile_result():
    """A compile of the example whose first pruned conv carries a hostile name."""
    model = example("resnet")
    conv = [n for n in model.graph.node if n.op_type == "Conv"][1]
    conv.name = HOSTILE
    return halp_onnx.compile(model, "trt-v100", 0.9, measure=False)


def test_every_section_and_every_anchor_layer(hostile_result):
    r = hostile_result
    page = html_report(r, argv=["halp-onnx", "compile", "m.onnx", "--latency", "0.9"])
    for section in SECTIONS:
        assert f"id='{section}'" in page, section
    anchors = [b for b in r.blocks if b["op"] in ANCHOR_OPS]
    assert anchors and page.count("<tr class='") >= len(anchors)
    for b in anchors:
        node = b["node"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert node.replace('"', "&quot;").replace("'", "&#x27;") in page
    assert "<svg" in page and "<polyline" in page  # the charts are inline SVG
    assert f"budget {r.budget_ms:.4g} ms" in page  # the budget line on the cumulative chart
    for w in r.warnings:
        assert w.split("(")[0].strip().replace("&", "&amp;").replace("'", "&#x27;")[:40] in page
    assert "halp-onnx compile m.onnx --latency 0.9" in page
    for name in ("halp-onnx", "onnx", "onnxruntime", "numpy", "python"):
        assert f"<td>{name}</td>" in page
    assert "estimated" in page  # trt-v100 here: analytic provenance


def test_hostile_node_name_is_escaped(hostile_result):
    page = html_report(hostile_result, argv=["halp-onnx", HOSTILE, "--html", "a\x1bb\nc.html"])
    assert HOSTILE not in page and "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&quot;&amp;&lt;img" in page
    assert "\x1b" not in page and "a\\x1bb\\nc.html" in page  # control characters escaped, one line


def test_self_contained_no_external_url(hostile_result):
    page = html_report(hostile_result)
    assert html.escape(HOSTILE, quote=True) in page
    clean = page.replace(html.escape(HOSTILE, quote=True), "")  # the hostile name: escaped text, not markup
    assert not re.search(r"(https?:|ftp:)?//[a-z0-9]", clean, re.I)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "<img" not in page
    assert not re.search(r"\b(src|href)\s*=", clean, re.I)


def test_tradeoff_curve_is_monotone(hostile_result):
    r = hostile_result
    pts = r.tradeoff
    assert pts is not None and len(pts) >= 15
    budgets = [p["budget_ms"] for p in pts]
    assert budgets == sorted(budgets)
    assert budgets[0] == pytest.approx(r.min_predicted_ms) and budgets[-1] == pytest.approx(r.dense_predicted_ms)
    values = [p["importance"] for p in pts]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:])), values
    assert all(p["predicted_ms"] <= p["budget_ms"] * (1 + 1e-6) for p in pts)
    assert pts[-1]["importance_share"] == pytest.approx(1.0)  # dense keeps everything
    assert sum(p["requested"] for p in pts) == 1  # the run's own budget is one of the points
    assert r.to_dict()["tradeoff"] == list(pts)


def test_html_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    src, out, page = tmp_path / "ex.onnx", tmp_path / "out.onnx", tmp_path / "r.html"
    assert main(["example", "resnet", "--out", str(src)]) == 0
    assert main(["compile", str(src), "--target", "trt-v100", "--latency", "0.9", "--no-measure", "--quiet",
                 "--html", str(page), "-o", str(out)]) == 0
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "id='tradeoff'" in text and out.exists()


def test_command_line_sanitised():
    line = command_line(["/usr/local/bin/halp-onnx", "compile", "my model.onnx", "--x", "a\nb\u202e"])
    assert line == "halp-onnx compile 'my model.onnx' --x 'a\\nb\\u202e'"
    assert command_line(["/x/halp_onnx/__main__.py", "inspect"]) == "halp-onnx inspect"
