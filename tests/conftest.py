"""Shared test settings: the block-wise descent of the repair (passes.descent) runs 30 steps instead of
its 2,000 wherever a test repairs a model without asking for it (tests/test_descent.py sets its own)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _short_descent(monkeypatch):
    from halp_onnx.passes import descent

    monkeypatch.setattr(descent, "STEPS", 30)
