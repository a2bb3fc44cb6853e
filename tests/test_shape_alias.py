"""A memory-bound op at a shape the profile never measured (a pruned transformer's attention glue laid
out on another axis) is priced from the same op at another shape, by element count."""
from __future__ import annotations

import json

import pytest

from halp_onnx.api import inspect
from halp_onnx.errors import HalpError
from halp_onnx.examples import example
from halp_onnx.profiles import store
from halp_onnx.profiles.blocks import model_blocks
from halp_onnx.profiles.latency import latency_model, predict
from halp_onnx.profiles.shape_alias import memory_bound_alias
from halp_onnx.profiles.signature import BlockSignature
from halp_onnx.profiles.table import LatencyTable


def _sig(op="Elementwise", in_hw=(100,), batch=1, epilogue=("Transpose",), groups="depthwise"):
    return BlockSignature(op=op, kernel=(), stride=(), pads=(), dilation=(), groups=groups, in_hw=in_hw,
                          batch=batch, dtype="fp32", epilogue=epilogue)


def _table(c_max=8):
    return LatencyTable(c_in_max=c_max, c_out_max=c_max, vary_in=True, vary_out=True, diagonal=True, smooth=True,
                        points={"1,1": 0.01, f"{c_max},{c_max}": 0.08}, complete=True)


def test_the_alias_moves_as_many_elements_and_scales_past_the_tables_widths():
    tables = {_sig().key(): _table()}
    a = memory_bound_alias(tables, _sig(in_hw=(400,)), 2)  # 800 elements: 8 channels of 100
    assert (a.key, a.c_equiv, a.factor) == (_sig().key(), 8, pytest.approx(1.0))
    a = memory_bound_alias(tables, _sig(in_hw=(25,), batch=2), 64)  # 3,200 elements: past the table, x4
    assert (a.c_equiv, a.factor) == (8, pytest.approx(4.0))
    a = memory_bound_alias(tables, _sig(in_hw=(50,)), 6)  # 300 elements: 3 channels of 100
    assert (a.c_equiv, a.factor) == (3, pytest.approx(1.0))


def test_only_the_same_op_epilogue_and_grouping_is_kin_and_compute_ops_never_alias():
    tables = {_sig().key(): _table()}
    assert memory_bound_alias(tables, _sig(epilogue=("Split",)), 4) is None
    assert memory_bound_alias(tables, _sig(groups="dense"), 4) is None
    assert memory_bound_alias({_sig(op="MatMul", groups="dense").key(): _table()},
                              _sig(op="MatMul", groups="dense", in_hw=(50,)), 4) is None


def test_a_model_with_an_unmeasured_memory_bound_shape_is_priced_with_measuring_off(tmp_path, monkeypatch):
    monkeypatch.setenv("HALP_ONNX_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HALP_ONNX_TIMING_BUDGET_S", "0.003")
    monkeypatch.setattr(store, "SHIPPED_DIR", tmp_path / "no-shipped")
    loaded, an = inspect(example("resnet"))
    blocks = model_blocks(loaded, an)
    path = tmp_path / "p.json"
    run = latency_model(loaded, an, "ort-cpu", measure=True, profile_path=path)
    dense = predict(blocks, run.model).total_ms
    prof = json.loads(path.read_text())
    mem = sorted(b.signature.key() for b in blocks if b.signature.op == "Elementwise")
    assert mem, "the example has memory-bound blocks"
    moved = mem[0]
    sig = BlockSignature.from_key(moved)
    other = BlockSignature.from_dict({**sig.to_dict(), "in_hw": [2 * sig.in_hw[0], *sig.in_hw[1:]]}).key()
    for tables in [prof["tables"], *(c["tables"] for c in prof.get("contexts", {}).values())]:
        if moved in tables:  # the profile as if measured on a model where that op saw twice the elements
            tables[other] = tables.pop(moved)
    path.write_text(json.dumps(prof))
    run = latency_model(loaded, an, "ort-cpu", measure=False, profile_path=path)
    assert any("priced from the same op at another shape" in n for n in run.warnings)
    got = predict(blocks, run.model).total_ms
    assert 0.5 * dense < got < 1.5 * dense
    conv = next(k for k in prof["tables"] if k.startswith("Conv"))  # a compute op missing: still an error
    for tables in [prof["tables"], *(c["tables"] for c in prof.get("contexts", {}).values())]:
        tables.pop(conv, None)
    path.write_text(json.dumps(prof))
    with pytest.raises(HalpError, match="lacks 2 block signature"):
        latency_model(loaded, an, "ort-cpu", measure=False, profile_path=path)
