"""The pure logic of tools/bench_peer.py: the latency-matching bisection and the acceptance verdict.

Needs neither torch-pruning nor ../shared (the tool imports those lazily)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("numpy")

_TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_peer.py"


@pytest.fixture(scope="module")
def peer():
    if not _TOOL.exists():
        pytest.skip("tools/bench_peer.py is absent")
    spec = importlib.util.spec_from_file_location("bench_peer", _TOOL)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except ImportError as exc:  # pragma: no cover - a missing optional import
        pytest.skip(f"cannot import tools/bench_peer.py: {exc}")
    return mod


def _linear(calls):
    def measure(r):  # latency falls linearly from 1.0 (dense) to 0.4 at ratio 1
        calls.append(r)
        return 1.0 - 0.6 * r
    return measure


def test_match_finds_smallest_passing_ratio(peer):
    calls: list[float] = []
    res = peer.match_ratio(_linear(calls), 0.7, tol=0.0, steps=12, resolution=0.001)
    assert res["reached"]
    # exact answer: 1 - 0.6 r = 0.7 -> r = 0.5; bisection from (0, 0.9]
    assert 0.5 <= res["ratio"] <= 0.502
    assert res["measured"] <= 0.7
    assert calls[:3] == pytest.approx([0.3, 0.45, 0.6])  # the grid upwards, up to the first fast enough
    assert len(calls) <= 3 + 12


def test_match_tolerance_allows_slightly_slower(peer):
    res = peer.match_ratio(_linear([]), 0.7, tol=0.02, steps=12, resolution=0.001)
    # limit 0.714 -> r >= 0.4767
    assert 0.476 <= res["ratio"] <= 0.48
    assert res["limit"] == pytest.approx(0.714)


def test_match_cannot_reach_reports_fastest(peer):
    res = peer.match_ratio(lambda r: 1.1 - 0.05 * r, 0.5)
    assert not res["reached"]
    assert res["ratio"] == pytest.approx(0.9)
    assert res["measured"] == pytest.approx(1.1 - 0.045)


def test_match_reuses_known_points(peer):
    known: dict[float, float] = {}
    first: list[float] = []
    peer.match_ratio(_linear(first), 0.5, known=known, steps=5)
    second: list[float] = []
    res = peer.match_ratio(_linear(second), 0.7, known=known, steps=5)
    assert res["reached"]
    assert not set(second) & set(first)  # nothing measured twice
    assert all(r in known for r in first + second)
    assert len(second) <= 5


def test_match_non_monotone_curve(peer):
    def measure(r):  # fast enough between 0.55 and 0.8, slow again above (layers left unpruned)
        return 1.0 - 0.6 * r if r <= 0.8 else 0.97
    res = peer.match_ratio(measure, 0.67, tol=0.0, steps=10, resolution=0.001)
    assert res["reached"] and 0.55 <= res["ratio"] <= 0.552
    res = peer.match_ratio(measure, 0.4)
    assert not res["reached"] and res["ratio"] == pytest.approx(0.75)  # the fastest point seen


def test_match_treats_invalid_models_as_too_slow(peer):
    def measure(r):  # above 0.8 no valid model
        return float("inf") if r > 0.8 else 1.0 - 0.6 * r
    res = peer.match_ratio(measure, 0.7, tol=0.0, steps=10, resolution=0.001)
    assert not res["reached"] or res["measured"] <= 0.7
    res = peer.match_ratio(measure, 0.3)
    assert not res["reached"]


def _row(tool, t, exact, jpeg, reached=True):
    r = {"tool": tool, "target": t, "ft": {"exact": exact, "jpeg": jpeg, "rc": 0}}
    if tool == "torch-pruning":
        r["match"] = {"reached": reached, "limit": t}
        if not reached:
            del r["ft"]
    return r


def _rows(peer, t, tp_scores, halp=(85.0, 78.0)):
    rows = {f"halp-{t}": _row("halp-onnx", t, *halp)}
    for s, score in zip(peer.settings(), tp_scores):
        name = f"{peer.setting_name(*s)}-{t}"
        rows[name] = _row("torch-pruning", t, *score) if score else _row("torch-pruning", t, 0, 0, reached=False)
    return rows


def test_acceptance_ahead_and_margin(peer):
    n = len(peer.settings())
    assert n == 8
    scores = [(80.0, 70.0)] * (n - 2) + [(84.0, 77.5), None]
    acc = peer.acceptance(_rows(peer, 0.5, scores), targets=(0.5,))["0.5"]
    assert acc["ahead"] is True
    assert acc["margin"] == {"exact": 1.0, "jpeg": 0.5}
    assert len(acc["cannot_reach"]) == 1
    assert not acc["behind"] and not acc["missing"]


def test_acceptance_behind_on_one_set_is_no(peer):
    scores = [(80.0, 70.0)] * 7 + [(84.0, 78.5)]  # ahead on exact, behind on JPEG
    acc = peer.acceptance(_rows(peer, 0.7, scores), targets=(0.7,))["0.7"]
    assert acc["ahead"] is False
    assert acc["behind"] == [f"{peer.setting_name(*peer.settings()[-1])}-0.7"]
    assert acc["margin"]["jpeg"] == pytest.approx(-0.5)


def test_acceptance_missing_rows_is_not_measured(peer):
    rows = _rows(peer, 0.5, [(80.0, 70.0)] * 8)
    rows.pop(next(k for k in rows if k.startswith("tp-")))
    acc = peer.acceptance(rows, targets=(0.5,))["0.5"]
    assert acc["ahead"] is None and len(acc["missing"]) == 1
    rows = _rows(peer, 0.5, [(80.0, 70.0)] * 8)
    del rows["halp-0.5"]["ft"]
    assert peer.acceptance(rows, targets=(0.5,))["0.5"]["ahead"] is None


def test_row_order_runs_05_before_07(peer):
    names = peer.row_names()
    assert names[0] == "dense"
    assert len(names) == 1 + 2 * (1 + 8)
    last_05 = max(i for i, n in enumerate(names) if n.endswith("-0.5"))
    first_07 = min(i for i, n in enumerate(names) if n.endswith("-0.7"))
    assert last_05 < first_07
    assert len(set(names)) == len(names)


def test_acceptance_unreached_rows_fine_tuned_for_information(peer):
    rows = _rows(peer, 0.5, [(80.0, 70.0)] * 7 + [None])
    name = f"{peer.setting_name(*peer.settings()[-1])}-0.5"
    rows[name]["ft"] = {"exact": 86.0, "jpeg": 77.0, "rc": 0}  # better on exact, at a slower point
    acc = peer.acceptance(rows, targets=(0.5,))["0.5"]
    assert acc["ahead"] is True  # cannot reach: behind halp-onnx by definition
    assert acc["cannot_reach"] == [name]
    assert acc["unreached_behind"] == [name] and acc["unreached_margin"] == pytest.approx(-1.0)
