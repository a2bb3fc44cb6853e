"""The pipeline runner: one order, declared inputs and outputs, runs up to a stage, errors name the stage."""
from __future__ import annotations

import json

import numpy as np
import pytest

from halp_onnx import HalpError, compile, prune
from halp_onnx.budget import LatencyBudget
from halp_onnx.examples import example
from halp_onnx.pipeline import PIPELINE, Pipeline, PipelineConfig, Stage, StageFailure


def _cfg(**kw):
    base = dict(source=example("resnet"), target="trt-v100", latency=LatencyBudget.parse("0.95"),
                measure_result=False)
    base.update(kw)
    return PipelineConfig(**base)


def test_the_order_is_written_once():
    names = [st.name for st in PIPELINE]
    assert names == ["load", "channel-groups", "latency-model", "budget", "importance", "select", "rewrite",
                     "measure", "verify", "repair", "guard"]
    for st in PIPELINE:  # every declared need is made by an earlier stage
        earlier = {o.makes for o in PIPELINE.stages[: PIPELINE.stages.index(st)]}
        assert set(st.needs) <= earlier, st.name


def test_configurations_pick_their_stages():
    ratio = PipelineConfig(example("resnet"), mode="ratio", ratio=0.3)
    assert [s.name for s in PIPELINE.plan(ratio)] == ["load", "channel-groups", "importance", "select", "rewrite",
                                                      "verify", "guard"]
    assert [s.name for s in PIPELINE.plan(_cfg())] == ["load", "channel-groups", "latency-model", "budget",
                                                       "importance", "select", "rewrite", "verify", "guard"]
    assert "measure" in [s.name for s in PIPELINE.plan(_cfg(measure_result=True))]
    # up to a stage: only what it needs
    assert [s.name for s in PIPELINE.plan(_cfg(), until="budget")] == ["load", "channel-groups", "latency-model",
                                                                       "budget"]


def test_run_until_a_stage_and_inspect_frozen_serialisable_results():
    run = PIPELINE.run(_cfg(), until="budget")
    assert run.stages == ("load", "channel-groups", "latency-model", "budget")
    assert set(run.seconds) == set(run.stages)
    plan = run["plan"]
    assert plan.budget.ms == pytest.approx(0.95 * plan.dense_ms)
    assert plan.min_ms <= plan.budget.ms <= plan.dense_ms
    json.dumps(run.to_dict())  # every result serialises
    with pytest.raises(Exception):  # frozen
        plan.min_ms = 0.0  # type: ignore[misc]
    assert "selection" not in run


def test_given_results_stand_in_for_stages():
    first = PIPELINE.run(_cfg(), until="select")
    again = PIPELINE.run(_cfg(), given={k: first[k] for k in ("loaded", "analysis", "selection")})
    assert again.stages == ("rewrite", "verify", "guard")
    assert again["verification"].passed


def _bare(model) -> bytes:
    """The written model without what prune/compile add to the rewrite: the block ends in its metadata."""
    from halp_onnx.passes.descent import annotate, block_ends_of

    assert block_ends_of(model) is not None
    return annotate(model, {}, "", 0).SerializeToString()  # no points: the entry is dropped


def test_compile_and_prune_are_configurations_of_the_runner():
    res = compile(example("resnet"), "trt-v100", "0.95", measure_result=False)
    run = PIPELINE.run(_cfg())
    assert _bare(res.model) == run["rewritten"].model.SerializeToString()
    assert res.budget is not None and res.budget.ms == pytest.approx(res.budget_ms)
    assert res.to_dict()["budget"]["request"] == "0.95"
    pr = prune(example("resnet"), 0.3)
    run = PIPELINE.run(PipelineConfig(example("resnet"), mode="ratio", ratio=0.3))
    assert _bare(pr.model) == run["rewritten"].model.SerializeToString()
    assert set(pr.seconds or {}) == set(run.stages)


def test_errors_name_the_stage():
    with pytest.raises(HalpError) as err:  # infeasible budget: the budget stage's figure, in ms and share
        PIPELINE.run(_cfg(latency=LatencyBudget.parse("0.01")))
    assert "below the smallest achievable" in str(err.value)
    with pytest.raises(HalpError, match="^load: "):
        PIPELINE.run(PipelineConfig("/nonexistent/model.onnx", mode="ratio", ratio=0.3))

    def boom(cfg, r):
        raise KeyError("oops")

    def plain(cfg, r):
        raise HalpError("no stage given")

    p = Pipeline((Stage("first", "a", lambda c, r: 1), Stage("second", "b", boom, ("a",))))
    with pytest.raises(StageFailure, match="stage second: KeyError") as failure:
        p.run(None)
    assert failure.value.stage == "second" and isinstance(failure.value.error, KeyError)
    with pytest.raises(HalpError, match="^third: no stage given"):
        Pipeline((Stage("third", "c", plain),)).run(None)


def test_a_stage_needing_what_no_earlier_stage_makes_is_refused():
    with pytest.raises(ValueError, match="needs"):
        Pipeline((Stage("a", "x", lambda c, r: 1, ("y",)),))
    with pytest.raises(ValueError, match="twice"):
        Pipeline((Stage("a", "x", lambda c, r: 1), Stage("a", "y", lambda c, r: 1)))


def test_iterative_mode_needs_the_bridge_settings():
    cfg = _cfg(mode="iterative")
    with pytest.raises(HalpError, match="IterativeSettings"):
        PIPELINE.run(cfg)


def test_config_checks_its_options():
    with pytest.raises(HalpError, match="--solver"):
        _cfg(solver="greedy")
    with pytest.raises(HalpError, match="--min-keep"):
        _cfg(min_keep=1.5)
    with pytest.raises(HalpError, match="target and a latency"):
        PipelineConfig(example("resnet"), mode="budget")
    assert np.isfinite(LatencyBudget.parse("3ms").resolve(6.0).share)


def test_exclude_round_to_and_guards():
    from halp_onnx.pipeline.stages import excluded_groups

    run = PIPELINE.run(PipelineConfig(example("resnet"), mode="ratio", ratio=0.5), until="channel-groups")
    an = run["analysis"]
    target = an.prunable[-1]
    held = excluded_groups(an, (target.producers[0],))
    assert target.id in held and "--exclude" in held[target.id]
    with pytest.raises(HalpError, match="--exclude 'nope\\*'"):
        excluded_groups(an, ("nope*",))
    cut = PIPELINE.run(PipelineConfig(example("resnet"), mode="ratio", ratio=0.5, round_to=8,
                                      exclude=(target.producers[0],)))
    widths = cut["rewritten"].widths
    assert widths[target.id][0] == widths[target.id][1]  # excluded: dense
    for g in an.prunable:
        before, after = widths[g.id]
        assert after == before or after % 8 == 0, (g.id, before, after)
    assert cut["guards"].params_kept < 1
    # a result that removes a branch is reported
    from halp_onnx.pipeline import Selection

    g = next(g for g in an.prunable if g.removable)
    given = {"loaded": run["loaded"], "analysis": an, "selection": Selection({g.id: np.zeros(0, np.int64)}, "ratio")}
    gone = PIPELINE.run(PipelineConfig(example("resnet"), mode="ratio"), given=given)
    assert gone["guards"].removed_groups == (g.id,)
    assert any("removed entirely" in w for w in gone["guards"].warnings)
    with pytest.raises(HalpError, match="refused"):
        PIPELINE.run(PipelineConfig(example("resnet"), mode="ratio", strict=True), given=given)
    with pytest.raises(HalpError, match="refused \\(--strict\\)"):
        PIPELINE.run(PipelineConfig(example("resnet"), mode="ratio", ratio=0.9, strict=True, min_params=0.5))


def test_a_result_cut_off_from_its_inputs_is_refused():
    """The verifier compares with the masked original, which a dead result matches; the guard does not."""
    from dataclasses import replace

    from halp_onnx.pipeline import Selection

    import onnx
    from onnx import helper, numpy_helper

    first = PIPELINE.run(PipelineConfig(example("resnet"), mode="ratio", ratio=0.3), until="verify")
    given = {k: first[k] for k in ("loaded", "analysis", "selection", "rewritten")}
    # the same result with its output cut off from the input (multiplied by zero): the guard runs the
    # model itself, per output, whatever the verifier's flag says
    cut = onnx.ModelProto()
    cut.CopyFrom(first["rewritten"].model)
    out = cut.graph.output[0].name
    for n in cut.graph.node:
        n.output[:] = [o + "_live" if o == out else o for o in n.output]
    cut.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "zero"))
    cut.graph.node.append(helper.make_node("Mul", [out + "_live", "zero"], [out], name="cut"))
    dead = replace(first["rewritten"], model=cut)
    with pytest.raises(HalpError, match="no longer depends on its inputs"):
        PIPELINE.run(first.config, given={**given, "rewritten": dead,
                                          "verification": replace(first["verification"],
                                                                  candidate_input_sensitive=False)})
    assert isinstance(given["selection"], Selection)
    ok = PIPELINE.run(first.config, given={**given, "verification": first["verification"]})
    assert ok.stages == ("guard",)


def test_random_inputs_give_valid_varied_token_ids():
    """Integer inputs that index an embedding table get random valid rows, so a BERT-style check is not
    input-insensitive (zeros everywhere)."""
    from onnx import TensorProto, helper, numpy_helper

    from halp_onnx.passes.verify import random_inputs

    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32), "emb")
    g = helper.make_graph([helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
                           helper.make_node("Gather", ["emb", "ids64"], ["y"])], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT32, [2, 50])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table])
    feeds = random_inputs(helper.make_model(g), np.random.default_rng(1))
    ids = feeds["ids"]
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 7 and len(np.unique(ids)) > 1
