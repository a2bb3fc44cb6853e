"""What halp-onnx knows about ONNX ops: the op table (:mod:`halp_onnx.ops.table`) and the channel rules
it points to (``elementwise``, ``linear``, ``normalization``, ``layout``)."""
from __future__ import annotations

from .table import (ANCHOR_OPS, ENTRIES, FUSABLE_ACTIVATIONS, MATRIX_ANCHOR_OPS, SPATIAL_ANCHOR_OPS, Latency, OpEntry, entry_for,
                    latency_role, ops_with, rule_for, schema_version)

__all__ = ["ANCHOR_OPS", "ENTRIES", "FUSABLE_ACTIVATIONS", "MATRIX_ANCHOR_OPS", "SPATIAL_ANCHOR_OPS", "Latency", "OpEntry", "entry_for",
           "latency_role", "ops_with", "rule_for", "schema_version"]
