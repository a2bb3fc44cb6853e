"""The op table (halp_onnx.ops.table): its facets, its version ranges resolved through onnx.defs, and
its torch facet as the only registry of the torch bridge's lowerings (halp_onnx.torch.lower)."""
from __future__ import annotations

import importlib

import onnx
import pytest

from halp_onnx.ops.table import ENTRIES, Latency, OpEntry, entry_for, latency_role, rule_for, schema_version


def _ops_with_facet(pred) -> list[str]:
    seen: dict[str, None] = {}
    for e in ENTRIES:
        if pred(e):
            seen.setdefault(f"{e.domain}::{e.op_type}" if e.domain else e.op_type)
    return list(seen)


def test_facets_per_op():
    facets = {
        "channels": _ops_with_facet(lambda e: e.channels is not None),
        "rewrite": _ops_with_facet(lambda e: e.rewrite is not None),
        "torch": _ops_with_facet(lambda e: e.torch is not None),
    }
    for lat in Latency:
        facets[f"latency={lat.value}"] = _ops_with_facet(lambda e, lat=lat: e.latency is lat)
    for name, ops in facets.items():
        print(f"{name} ({len(ops)}): {' '.join(ops)}")

    # Conv has all four facets
    assert "Conv" in facets["channels"] and "Conv" in facets["rewrite"] and "Conv" in facets["torch"]
    assert latency_role("Conv") is Latency.ANCHOR
    # torch-only ops: a lowering but no channel rule (their channels are frozen)
    for op in ("Einsum", "TopK", "Range", "Constant", "ConstantOfShape", "GatherElements", "GatherND",
               "ScatterND", "ScatterElements", "Trilu", "BitwiseAnd", "BitwiseOr"):
        assert op in facets["torch"] and op not in facets["channels"], op
        assert rule_for(onnx.helper.make_node(op, [], []), 17) is None
        assert latency_role(op) is Latency.MEMORY
    # channel rules without a torch lowering
    for op in ("LRN", "Hardmax", "IsInf", "MaxRoiPool"):
        assert op in facets["channels"] and op not in facets["torch"], op
    assert {"Reshape", "Slice", "Pad", "Split", "Gather", "Expand", "Resize"} <= set(facets["rewrite"])
    assert facets["latency=anchor"] == ["Conv", "ConvTranspose", "Gemm", "MatMul"]
    assert {"Reshape", "Squeeze", "Unsqueeze", "Shape", "Identity"} <= set(facets["latency=free"])
    assert "com.microsoft::Gelu" in facets["torch"] and "com.microsoft::Gelu" not in facets["channels"]


def test_no_overlapping_ranges():
    by_op: dict[tuple[str, str], list[OpEntry]] = {}
    for e in ENTRIES:
        by_op.setdefault((e.domain, e.op_type), []).append(e)
    for key, entries in by_op.items():
        entries.sort(key=lambda e: e.since)
        for a, b in zip(entries, entries[1:]):
            assert a.until is not None and a.until < b.since, f"{a.key} overlaps {b.key}"
        for e in entries:
            assert e.until is None or e.until >= e.since, e.key


def test_split_entries_copy_the_other_facets():
    for op in ("Clip", "Reshape", "Slice", "Squeeze", "Unsqueeze", "Pad", "Resize", "Softmax", "ReduceMean",
               "ReduceSum"):
        entries = [e for e in ENTRIES if e.op_type == op and not e.domain]
        assert len(entries) == 2, op
        a, b = entries
        assert (a.channels, a.rewrite, a.latency) == (b.channels, b.rewrite, b.latency), op
        assert a.torch != b.torch, op


def test_entry_for_resolves_through_onnx_defs():
    # Clip: min/max attributes up to schema 6, inputs from schema 11
    assert schema_version("", "Clip", 9) == 6 and schema_version("", "Clip", 13) == 13
    clip9, clip13 = entry_for("", "Clip", 9), entry_for("", "Clip", 13)
    assert clip9 is not None and clip13 is not None and clip9 is not clip13
    assert (clip9.torch, clip13.torch) == ("elementwise:Clip@1", "elementwise:Clip@11")
    assert entry_for("", "Clip", 11) is clip13 and entry_for("", "Clip", 10) is clip9
    # Reshape: shape attribute at schema 1, input from schema 5 (opset 4 -> schema 1, 14 -> 14)
    r4, r14 = entry_for("", "Reshape", 4), entry_for("", "Reshape", 14)
    assert r4 is not None and r14 is not None and r4 is not r14
    assert (r4.torch, r14.torch) == ("shape:Reshape@1", "shape:Reshape@5")
    # ReduceSum moves axes to an input at 13, the other reductions at 18
    assert entry_for("", "ReduceSum", 13).torch == "reduce:ReduceSum@13"
    assert entry_for("", "ReduceMean", 17).torch == "reduce:ReduceMean@1"
    assert entry_for("", "ReduceMean", 18).torch == "reduce:ReduceMean@18"
    # ai.onnx is the default domain; None is the newest entry; unknown ops have none
    assert entry_for("ai.onnx", "Reshape", 14) is r14 and entry_for("", "Reshape", None) is r14
    assert entry_for("", "NoSuchOp", 17) is None
    assert entry_for("com.microsoft", "Gelu", 1).torch == "elementwise:Gelu@ms"


# ---------------------------------------------------------------------------------------- torch facet
def _families():
    pytest.importorskip("torch")
    from halp_onnx.torch.lower import FAMILIES

    return {f: importlib.import_module(f"halp_onnx.torch.lower.{f}") for f in FAMILIES}


def test_every_torch_reference_resolves():
    mods = _families()
    for e in ENTRIES:
        if e.torch is None:
            continue
        family, _, key = e.torch.partition(":")
        assert family in mods, e.key
        assert callable(mods[family].LOWERINGS.get(key)), f"{e.key}: {e.torch} is not in {family}.LOWERINGS"


def test_no_orphan_lowering():
    mods = _families()
    refs: dict[str, list[str]] = {}
    for e in ENTRIES:
        if e.torch is not None:
            refs.setdefault(e.torch, []).append(e.key)
    for family, mod in mods.items():
        for key in mod.LOWERINGS:
            ref = f"{family}:{key}"
            assert len(refs.get(ref, [])) == 1, f"{ref} is referenced by {refs.get(ref, [])}"
    n = sum(len(m.LOWERINGS) for m in mods.values())
    print(f"{n} lowerings in {len(mods)} families, {sum(len(v) for v in refs.values())} table entries with torch")
    assert n == len(refs)


def test_lowering_for_follows_the_table_with_leniency():
    pytest.importorskip("torch")
    from halp_onnx.torch.lower import lowering_for, resolve, supported_ops

    assert lowering_for("", "Clip", 9) is resolve("elementwise:Clip@1")
    assert lowering_for("", "Clip", 13) is resolve("elementwise:Clip@11")
    assert lowering_for("", "Reshape", 4) is resolve("shape:Reshape@1")
    assert lowering_for("ai.onnx", "Reshape", 14) is resolve("shape:Reshape@5")
    assert lowering_for("", "Softmax", 12) is resolve("norm:Softmax@1")
    assert lowering_for("", "Softmax", None) is resolve("norm:Softmax@13")
    assert lowering_for("com.microsoft", "Gelu", 1) is resolve("elementwise:Gelu@ms")
    # an opset below every entry gets the oldest lowering, leniently (TopK's lowering is from 10 on)
    assert entry_for("", "TopK", 9) is None
    assert lowering_for("", "TopK", 9) is resolve("reduce:TopK")
    # ops without a torch facet, unknown ops and domains
    assert lowering_for("", "LRN", 13) is None
    assert lowering_for("", "NoSuchOp", 13) is None
    assert lowering_for("com.example", "Relu", 1) is None
    ops = supported_ops()
    assert ("", "Conv") in ops and ("", "Einsum") in ops and ("com.microsoft", "Gelu") in ops
    assert ("", "LRN") not in ops and ops == sorted(set(ops))
